"""The README runs as written: every shell and Python block, in order, in a fresh directory laid out like a source
checkout (its default atlas is demo/atlas), so the README cannot drift from the commands.

Only sizes change: SANDBOX appends options to some commands (click keeps an option's last value), so that the
whole README runs in minutes on a small atlas, and so that `atlas shapes export` writes beside the test rather
than over the shipped weights. The top block (`make demo`, `make test`) is the only one not run: it would run
this suite inside itself.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
ATLAS = Path(sys.executable).with_name("atlas")
N_IMAGES = "64"
SANDBOX = {  # command (its first words) -> options appended
    ("atlas", "generate"): ["--steps", "4"],
    ("atlas", "shapes", "eval"): ["--n", "4", "--steps", "4"],
    ("atlas", "shapes", "train"): ["--max-steps", "2", "--threads", "1"],
    ("atlas", "shapes", "export"): ["--no-eval", "--out", "exported"],
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
    return [str(ATLAS), *argv[1:], *extra] if argv[0] == "atlas" else argv


def test_blocks_parse_into_commands():
    """The parser the README test relies on: continuation lines, multi-line quotes and comments."""
    body = 'atlas sql "SELECT 1\n           FROM x"   # note\natlas a \\\n    --b 2\n# only a comment\n'
    assert commands(body) == [["atlas", "sql", "SELECT 1\n           FROM x"], ["atlas", "a", "--b", "2"]]
    assert [lang for lang, _ in blocks(README.read_text())].count("python") >= 2


@pytest.mark.slow
@pytest.mark.integration
def test_every_readme_block_runs_in_order(tmp_path):
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "data", clone / "data")  # what a fresh clone holds besides the package
    # one torch thread per command: a thread per core runs many times slower on a shared CPU (bench/RESULTS.md)
    env = {**os.environ, "ATLAS_DIR": "demo/atlas", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    ran = []
    for lang, body in blocks(README.read_text()):
        if lang == "python":
            steps = [[sys.executable, "-c", body]]
        else:
            steps = [sandboxed(argv) for argv in commands(body)
                     if not any(" ".join(argv).startswith(skip) for skip in NOT_RUN)]
        for argv in steps:
            result = subprocess.run(argv, cwd=clone, env=env, capture_output=True, text=True, timeout=900)
            shown = " ".join(argv[1:]) if lang == "bash" else body
            output = result.stdout[-2000:] + result.stderr[-3000:]
            assert result.returncode == 0, f"README line failed: {shown}\n{output}"
            ran.append(shown)
    assert any(line.startswith("build") for line in ran) and len(ran) > 20
