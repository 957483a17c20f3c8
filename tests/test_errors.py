"""One error type: every expected failure is an AtlasError with an HTTP status; anything else is a bug.

The CLI prints an AtlasError as one line (`Error: ...`, exit code 1) and lets any other exception show its
traceback; the web atlas answers an AtlasError with its own status and the one line, anything else with a
500 and the traceback in its log. Each class's status is pinned here, and every `atlas <command>` a message
or help text names is checked against the real commands.
"""

from __future__ import annotations

import ast
import http.client
import importlib
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from test_bad_input import serving

from atlas.cli.main import main
from atlas.errors import AtlasError

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("atlas.errors", "atlas.store.errors", "atlas.server.errors", "atlas.models.loader", "atlas.annotate.base",
           "atlas.edit.judge")
"""Every module that defines an AtlasError class."""
STATUS = {
    "AtlasError": 400, "BadInputError": 400, "ReadOnlyError": 403, "NotFoundError": 404, "ConflictError": 409,
    "UnavailableError": 503,
    # the store's
    "AtlasNotFoundError": 404, "SchemaTooNewError": 409, "SchemaTooOldError": 409,
    "UnknownLabelError": 404, "NoLabelsError": 404, "UnknownSaeError": 404, "BadConceptIdError": 400,
    "SqlError": 400, "ReadOnlySqlError": 400, "QueryTimeoutError": 400, "CorruptFileError": 503,
    "AtlasInUseError": 409, "CatalogBusyError": 503, "NoIndexError": 404, "InvalidInputError": 400,
    # the server's, the models', the annotators' and the edit judges'
    "QueryMemoryError": 400, "ResultTooLargeError": 400,
    "ReadOnlyServerError": 403, "CrossSiteError": 403, "WrongHostError": 421, "WorkerDied": 503,
    "ModelNotFoundError": 503, "AnnotatorNotAvailable": 503, "JudgeUnavailable": 503,
}


def error_classes() -> dict[str, type[AtlasError]]:
    """AtlasError and every subclass of it, by name."""
    for module in MODULES:
        importlib.import_module(module)
    found, todo = {}, [AtlasError]
    while todo:
        cls = todo.pop()
        assert cls.__name__ not in found, f"two error classes are called {cls.__name__}"
        found[cls.__name__] = cls
        todo += cls.__subclasses__()
    return found


def defined_error_names() -> set[str]:
    """Names of the classes of atlas/ and cli/ that derive from AtlasError, read from the source (so a class in a
    module MODULES misses is found too)."""
    bases: dict[str, set[str]] = {}
    for folder in ("atlas", "cli"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef):
                    bases[node.name] = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
    names = {"AtlasError"}
    while more := {name for name, of in bases.items() if of & names} - names:
        names |= more
    return names


def example(cls: type[AtlasError]) -> AtlasError:
    """An instance with a plain message, whatever the class's own constructor takes."""
    error = cls.__new__(cls)
    Exception.__init__(error, f"a {cls.__name__}: do this instead\nsecond line")
    return error


def test_each_error_class_has_its_status() -> None:
    classes = error_classes()
    assert set(classes) == defined_error_names()
    assert {name: cls.status for name, cls in classes.items()} == STATUS
    assert all(issubclass(cls, AtlasError) and not issubclass(cls, (ValueError, OSError, KeyError, RuntimeError))
               for cls in classes.values())


def test_the_message_is_the_first_line() -> None:
    assert example(AtlasError).message == "a AtlasError: do this instead"
    assert AtlasError("").message == "AtlasError"


# -- the CLI ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(STATUS))
def test_cli_prints_an_atlas_error_as_one_line(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(atlas_dir: str | None) -> None:
        raise example(error_classes()[name])

    monkeypatch.setattr("atlas.cli.store._open", fail)
    result = CliRunner().invoke(main, ["sql", "SELECT 1"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr == f"Error: a {name}: do this instead\n"


def test_cli_shows_the_traceback_of_a_bug_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(atlas_dir: str | None) -> None:
        raise KeyError("red circle")

    monkeypatch.setattr("atlas.cli.store._open", fail)
    result = CliRunner().invoke(main, ["sql", "SELECT 1"])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)
    assert "Error:" not in result.output


@pytest.mark.parametrize("bug", ["KeyError('red circle')", "ValueError('bad')", "FileNotFoundError('x.png')",
                                 "RuntimeError('boom')"])
def test_cli_shows_the_traceback_of_a_bug(bug: str) -> None:
    """The script as a user runs it: a bug inside a command is a traceback and a non-zero exit, not `Error: ...`."""
    code = ("import atlas.cli.store as store\n"
            "def fail(atlas_dir):\n"
            f"    raise {bug}\n"
            "store._open = fail\n"
            "from atlas.cli.main import main\n"
            "main(['sql', 'SELECT 1'], prog_name='atlas')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode != 0
    assert "Traceback (most recent call last)" in done.stderr and f"{bug.split('(')[0]}: " in done.stderr
    assert not any(line.startswith("Error:") for line in done.stderr.splitlines()), done.stderr


# -- the server ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[logging.LogRecord]]]:
    """The web atlas over an empty atlas, with routes that raise each AtlasError class and a bug."""
    from atlas.server import create_app
    from atlas.store import Atlas

    root = tmp_path_factory.mktemp("errors") / "atlas"
    Atlas.create(root).close()
    records: list[logging.LogRecord] = []
    app = create_app(root, threads=1)
    add_failing_routes(app)
    with serving(app, records) as url:
        yield url, records


def add_failing_routes(app: FastAPI) -> None:
    classes = error_classes()

    def expected(name: str) -> None:
        raise example(classes[name])

    def bug() -> None:
        raise KeyError("red circle")

    for suffix in (".json", ""):
        app.add_api_route("/fail/{name}" + suffix, expected)
        app.add_api_route("/bug" + suffix, bug)


def fetch(url: str, path: str) -> tuple[int, str, str]:
    host, port = url.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("GET", path)
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    return response.status, response.getheader("content-type", ""), text


@pytest.mark.parametrize("name", sorted(STATUS))
def test_server_answers_an_atlas_error_with_its_status(name: str, server: tuple[str, list]) -> None:
    url, records = server
    status, kind, text = fetch(url, f"/fail/{name}.json")
    assert status == STATUS[name] and kind.startswith("application/json")
    assert json.loads(text) == {"ok": False, "error": f"a {name}: do this instead", "status": status}
    status, kind, text = fetch(url, f"/fail/{name}")
    assert status == STATUS[name] and kind.startswith("text/html")
    assert f"<h1>Error {status}</h1>" in text and f"a {name}: do this instead" in text
    assert not records, [r.getMessage() for r in records]


def test_server_answers_a_bug_with_a_500_and_logs_it(server: tuple[str, list]) -> None:
    url, records = server
    status, _, text = fetch(url, "/bug.json")
    assert status == 500
    assert json.loads(text) == {"ok": False, "status": 500, "error": "internal error (KeyError: 'red circle'); "
                                "the server's log has the traceback"}
    status, kind, text = fetch(url, "/bug")
    assert status == 500 and kind.startswith("text/html") and "<h1>Error 500</h1>" in text
    assert "Traceback" not in text
    deadline = time.monotonic() + 30  # uvicorn logs the traceback after the answer is sent
    while len(records) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(records) == 2 and all(r.exc_info and r.exc_info[0] is KeyError for r in records), \
        [r.getMessage() for r in records]
    records.clear()


def test_the_server_frameworks_own_errors_stay_as_they_were(server: tuple[str, list]) -> None:
    url, records = server
    status, _, text = fetch(url, "/nowhere.json")
    assert status == 404 and "no page at /nowhere.json" in json.loads(text)["error"]
    host, port = url.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("DELETE", "/sql.json")
    response = connection.getresponse()
    assert response.status == 405 and json.loads(response.read())["status"] == 405
    status, _, text = fetch(url, "/sql.json?max_rows=many")
    assert status == 400 and json.loads(text)["error"].startswith("bad max_rows")
    assert not records, [r.getMessage() for r in records]


# -- `atlas <command>` in messages -----------------------------------------------------------------------------

def texts(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every string of a module with its line; an f-string with `{}` for each value it formats."""
    inside = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            yield node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in inside:
            yield node.lineno, node.value


def command_problem(words: list[str]) -> str | None:
    """Why `atlas WORDS` is not a command line of this CLI (an unknown command or option), or None."""
    command: click.Command = main
    for i, word in enumerate(words):
        if isinstance(command, click.Group) and not word.startswith("-"):
            if word not in command.commands:
                return f"no command {' '.join(['atlas', *words[:i + 1]])!r}"
            command = command.commands[word]
        elif word.startswith("--"):
            options = {name for param in command.get_params(click.Context(command))
                       for name in (*param.opts, *param.secondary_opts)}
            if word.split("=")[0] not in options:
                return f"`atlas {' '.join(words[:i])}` has no option {word}"
    return None


def command_lines() -> Iterator[tuple[str, str]]:
    """(where, `atlas ...` text) of every backquoted command line in the strings of atlas/ and cli/."""
    for folder in ("atlas", "cli"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, text in texts(ast.parse(path.read_text(), str(path))):
                for found in re.findall(r"`atlas( [^`]*)?`", text):
                    yield f"{path.relative_to(ROOT)}:{line}", found.strip()


def test_every_command_a_message_names_exists() -> None:
    lines = list(command_lines())
    assert len(lines) > 50  # the scan finds the messages
    placeholder = re.compile(r"\{.*|[\"'].*|\.\.\.")  # a formatted value, a quoted argument, `atlas shapes ...`
    problems = [f"{where}: {problem}" for where, found in lines
                if (problem := command_problem([w for w in found.split() if not placeholder.fullmatch(w)]))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("words, problem", [
    (["index"], "no command 'atlas index'"),
    (["shapes", "draw"], "no command 'atlas shapes draw'"),
    (["train", "--everything"], "`atlas train` has no option --everything"),
])
def test_the_scan_finds_a_command_that_does_not_exist(words: list[str], problem: str) -> None:
    assert command_problem(words) == problem
    assert command_problem(["shapes", "export", "--run-dir", "{}"]) is None
