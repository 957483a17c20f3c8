"""The README runs as written: every shell and Python block, in order, in a fresh directory laid out like a source
checkout (its default atlas is demo/atlas), so the README cannot drift from the commands. Each `atlas` line runs
through the same click entry point as the console script, in this process (a process per line spent most of the
test importing torch again: the entry point as a process is run by tests/test_cli.py and test_faults.py); each
Python block is executed in a fresh namespace.

Only sizes change: SANDBOX appends options to some commands (click keeps an option's last value), so that the
whole README runs in minutes on a small atlas, and so that `atlas shapes export` writes beside the test rather
than over the shipped weights. The top block (`make demo`, `make test`) is the only one not run: it would run
this suite inside itself.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
N_IMAGES = "64"
SANDBOX = {  # command (its first words) -> options appended; the first match counts
    ("atlas", "generate"): ["--steps", "4"],
    ("atlas", "shapes", "eval"): ["--n", "4", "--steps", "4"],
    ("atlas", "shapes", "train"): ["--max-steps", "2", "--threads", "1"],
    ("atlas", "shapes", "export"): ["--no-eval", "--out", "exported"],
    ("atlas", "capture", "--model"): ["--n-prompts", "16"],  # a capture of its own, not the atlas's
    ("atlas", "capture"): ["--n-prompts", N_IMAGES],
    ("atlas", "build"): ["--n-images", N_IMAGES],
    ("atlas", "eval-edits"): ["--n", "2", "--strengths", "1024"],
}
NOT_RUN = ("make ",)


def blocks(text: str) -> list[tuple[str, str]]:
    """The README's fenced blocks of bash and python, in order: (language, body)."""
    return re.findall(r"^```(bash|python)\n(.*?)^```", text, flags=re.M | re.S)


def commands(body: str) -> list[list[str]]:
    """The commands of a bash block: lines joined across a trailing backslash or an open quote, comments dropped."""
    found, pending = [], ""
    for line in body.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        try:
            argv = shlex.split(pending, comments=True)
        except ValueError:  # a quote still open: the command goes on
            continue
        if argv:
            found.append(argv)
        pending = ""
    assert not pending, f"unterminated command in the README: {pending}"
    return found


def sandboxed(argv: list[str]) -> list[str]:
    extra = next((options for head, options in SANDBOX.items() if tuple(argv[: len(head)]) == head), [])
    return [*argv, *extra]


def test_blocks_parse_into_commands():
    """The parser the README test relies on: continuation lines, multi-line quotes and comments."""
    body = 'atlas sql "SELECT 1\n           FROM x"   # note\natlas a \\\n    --b 2\n# only a comment\n'
    assert commands(body) == [["atlas", "sql", "SELECT 1\n           FROM x"], ["atlas", "a", "--b", "2"]]
    assert [lang for lang, _ in blocks(README.read_text())].count("python") >= 2


def run_line(argv: list[str]) -> tuple[bool, str]:
    """Run one README line in the current directory: (succeeded, the end of its output)."""
    if argv[0] != "atlas":
        result = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        return result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    from atlas.cli.main import main

    result = CliRunner().invoke(main, argv[1:])
    error = "" if result.exception is None or result.exit_code == 0 else repr(result.exception)
    return result.exit_code == 0, result.output[-3000:] + error


@pytest.mark.slow
@pytest.mark.integration
def test_every_readme_block_runs_in_order(tmp_path, monkeypatch):
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "data", clone / "data")  # what a fresh clone holds besides the package
    monkeypatch.chdir(clone)
    monkeypatch.setenv("ATLAS_DIR", "demo/atlas")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread per command: a thread per core runs many times slower on a shared CPU
    ran = []
    try:
        for lang, body in blocks(README.read_text()):
            if lang == "python":
                exec(compile(body, "README.md", "exec"), {"__name__": "__main__"})
                ran.append(body)
                continue
            for argv in commands(body):
                if any(" ".join(argv).startswith(skip) for skip in NOT_RUN):
                    continue
                ok, output = run_line(sandboxed(argv))
                assert ok, f"README line failed: {' '.join(argv)}\n{output}"
                ran.append(" ".join(argv[1:]))
    finally:
        torch.set_num_threads(threads)
    assert any(line.startswith("build") for line in ran) and len(ran) > 20
