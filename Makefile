# Concept Atlas: `make demo` builds and queries the default atlas, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo serve test lint clean

install: $(STAMP)

# torch/torchvision are installed first and pinned: pip takes these exact releases from local disk
# (see shared ENVIRONMENT.md); any other version would download gigabytes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: install
	$(BIN)/atlas demo

# Serve the demo atlas in a browser (builds it first when missing); prints the URL to open.
ATLAS ?= demo/atlas
PORT ?= 8000
serve: install
	@test -d $(ATLAS)/tables || $(BIN)/atlas demo --atlas $(ATLAS)
	$(BIN)/atlas serve --atlas $(ATLAS) --port $(PORT)

test: install
	$(BIN)/ruff check atlas cli tests bench
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check atlas cli tests bench

clean:
	rm -rf $(VENV) .pytest_cache
