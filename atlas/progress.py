"""Progress bars and library messages, one policy for every stage.

`bar(...)` is tqdm with three rules on top: no bar at all when the caller passes `disable=True`, when the CLI ran
with `--quiet` (`set_quiet`) or when TQDM_DISABLE is set to a true value; a redrawn bar on a terminal; and when
stderr is not a terminal (a log file, CI), plain lines: one per `LOG_STEP` percent done (or per `LOG_SECONDS` when
the total is unknown, or when that long passed since the last line) and one at the end, instead of hundreds of
redraws. Library messages go through `logger` (the `atlas` logger of the `logging` module); the CLI prints them.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

LOG_STEP = 25
"""Percent of a bar's total between two lines in a log (a stage's bars then write about five lines each)."""
LOG_SECONDS = 60.0
"""A line at least this often in a log while a bar moves (and the period of bars without a total)."""

logger = logging.getLogger("atlas")
_state = {"quiet": False}


def set_quiet(quiet: bool = True) -> None:
    """Turn every bar off (`atlas --quiet`); library messages below WARNING are left to the logging setup."""
    _state["quiet"] = quiet


def show_messages(quiet: bool = False) -> None:
    """What the CLI does at startup: bars off under `quiet`, and the `atlas` logger's messages (INFO and up; WARNING
    and up when quiet) printed to stderr as plain lines."""
    set_quiet(quiet)
    if not logger.handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a message comes (a test runner swaps it per command)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def bars_off() -> bool:
    """True under --quiet or TQDM_DISABLE=1 (tqdm's own switch, honoured even where a caller asks for a bar)."""
    return _state["quiet"] or os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")


def bar(iterable: Iterable | None = None, total: float | None = None, desc: str = "", unit: str = "it",
        initial: float = 0, disable: bool = False, **options: Any) -> Any:
    """A tqdm bar under the rules above; use it as tqdm (update, set_postfix, close, context manager)."""
    from tqdm.auto import tqdm

    disable = disable or bars_off()
    cls = tqdm if disable or _is_terminal() else _log_bar_class()
    return cls(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, **options)


def _is_terminal() -> bool:
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def _log_bar_class() -> type:
    from tqdm.std import tqdm as std_tqdm

    class LogBar(std_tqdm):
        """tqdm writing whole lines at LOG_STEP percent marks, every LOG_SECONDS, and at the end."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._mark: tuple[int, float, float] | None = None  # (percent mark, time, n) of the last line
            kwargs.setdefault("mininterval", 0)
            sized = kwargs.get("total") or (args and args[0] is not None and hasattr(args[0], "__len__"))
            kwargs.setdefault("bar_format", "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} "
                                            "[{elapsed}<{remaining}, {rate_fmt}{postfix}]"
                              if sized else "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]")
            super().__init__(*args, **kwargs)

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            if msg == "":  # tqdm clearing its line: nothing to clear in a log
                return False
            now = time.monotonic()
            mark = int(100 * self.n / self.total // LOG_STEP) if self.total else 0
            if self._mark is not None and (mark, self.n) == (self._mark[0], self._mark[2]):
                return True
            if self._mark is None or mark != self._mark[0] or now - self._mark[1] >= LOG_SECONDS:
                self._line(now, mark)
            return True

        def _line(self, now: float, mark: int) -> None:
            self._mark = (mark, now, self.n)
            self.fp.write(str(self) + "\n")
            self.fp.flush()

        def close(self) -> None:
            if not self.disable and (self._mark is None or self._mark[2] != self.n):
                self._line(time.monotonic(), -1)
            self.leave = False
            super().close()

    return LogBar
