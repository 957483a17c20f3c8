# Concept Atlas: `make demo` builds and queries the default atlas, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo serve test test-fast test-floor lint clean

install: $(STAMP)

# Exact versions come from constraints.txt (torch/torchvision: the releases on this machine's local disk; any
# other version would download gigabytes); pyproject.toml holds only floors.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch torchvision
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: install
	$(BIN)/atlas demo

# Serve the demo atlas in a browser (builds it first when missing); prints the URL to open.
ATLAS ?= demo/atlas
PORT ?= 8000
serve: install
	@test -d $(ATLAS)/tables || $(BIN)/atlas demo --atlas $(ATLAS)
	$(BIN)/atlas serve --atlas $(ATLAS) --port $(PORT)

# The whole suite (what CI runs), in TEST_WORKERS pytest-xdist processes of one thread each: much of the suite
# waits on subprocesses, servers and a browser, so two workers keep both cores busy. Each test file runs in one
# worker (--dist loadfile: its module fixtures are built once), the session atlases are built once under a lock
# (tests/conftest.py), and the Ray files never run at the same time. test-fast is the unit tier for the
# edit-test loop (about a minute): it leaves out tests marked slow and those that build or serve a real atlas
# (marked integration in tests/conftest.py).
TEST_WORKERS ?= 2
test: install
	$(BIN)/ruff check atlas cli tests bench
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: install
	$(BIN)/ruff check atlas cli tests bench
	$(BIN)/python -m pytest -q -m "not slow and not integration"

# The fast tier in a separate venv with every dependency at its pyproject.toml floor (constraints-floor.txt):
# checks that the floors are true. Builds .venv-floor the first time (several GB: torch at our pin).
test-floor:
	PYTHON=$(PYTHON) .ci/floor

lint: install
	$(BIN)/ruff check atlas cli tests bench

clean:
	rm -rf $(VENV) .venv-floor .pytest_cache
