"""Atomic writes: concurrent writers of one file and a failing writer leave one whole file and no temporaries."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from atlas.files import atomic_write


def test_writers_of_one_file_at_once_leave_one_whole_file(tmp_path):
    target = tmp_path / "curves.json"
    contents = [str(i) * 10_000 for i in range(8)]
    start = threading.Barrier(len(contents))

    def slow_write(text):
        def write(tmp):
            with open(tmp, "w") as handle:  # in two halves, so that writers sharing a temporary would interleave
                handle.write(text[:5_000])
                time.sleep(0.01)
                handle.write(text[5_000:])
        start.wait()
        for _ in range(5):
            atomic_write(target, write)

    with ThreadPoolExecutor(len(contents)) as pool:
        for done in [pool.submit(slow_write, text) for text in contents]:
            done.result()  # a writer whose temporary another renamed away raises here
    assert target.read_text() in contents
    assert [p.name for p in tmp_path.iterdir()] == ["curves.json"]


def test_a_failing_writer_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
