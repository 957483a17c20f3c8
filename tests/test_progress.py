"""Progress bars: off under --quiet and TQDM_DISABLE, whole lines (not redraws) when stderr is not a terminal."""

from __future__ import annotations

import io
import logging

import pytest

from atlas import progress


@pytest.fixture
def log_stderr(monkeypatch):
    stream = io.StringIO()  # not a terminal
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    yield stream
    progress.set_quiet(False)


def test_a_bar_in_a_log_writes_a_line_per_quarter_not_a_redraw_per_update(log_stderr):
    bar = progress.bar(total=1000, desc="sae mid/1.0/cond", unit="tok", file=log_stderr)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    lines = log_stderr.getvalue().splitlines()
    assert "\r" not in log_stderr.getvalue()
    assert [line.split(":")[1].split("%")[0].strip() for line in lines] == ["0", "25", "50", "75", "100"]
    assert all(line.startswith("sae mid/1.0/cond: ") for line in lines)


def test_a_bar_over_a_list_shows_its_length_in_a_log(log_stderr):
    for _ in progress.bar(list(range(8)), desc="link", unit="sae", file=log_stderr):
        pass
    assert log_stderr.getvalue().splitlines()[-1].startswith("link: 100% 8/8 sae")


def test_quiet_and_tqdm_disable_turn_every_bar_off(log_stderr, monkeypatch):
    progress.set_quiet(True)
    bar = progress.bar(total=10, desc="encode", file=log_stderr)
    bar.update(10)
    bar.close()
    progress.set_quiet(False)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    for item in progress.bar(range(10), desc="link", file=log_stderr):
        assert item >= 0
    assert log_stderr.getvalue() == ""


def test_the_cli_quiet_flag_silences_bars_and_info_messages(log_stderr):
    from click.testing import CliRunner

    from atlas.cli.main import main

    result = CliRunner().invoke(main, ["--quiet", "sql", "--help"])
    assert result.exit_code == 0 and progress.bars_off()
    assert progress.logger.getEffectiveLevel() == logging.WARNING
