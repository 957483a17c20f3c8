"""What every view shares: one `Atlas` reader for all threads, the write switch, label embeddings.

Reads go through a single reader (the store locks what threads share). A write opens a writer on it
only for its duration, so a running build is never blocked for longer than one write; the reader sees
the change at its next query because every write publishes a new snapshot.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import numpy as np
from fastapi import Depends, Request

from atlas.errors import NotFoundError, UnavailableError
from atlas.server.errors import ReadOnlyServerError
from atlas.server.guard import Guard
from atlas.server.sql_worker import SqlWorkers
from atlas.store import Atlas, SaeInfo, Writer, open_atlas
from atlas.store.ids import DEFAULT_BRANCH, DEFAULT_VARIANT
from atlas.store.limits import SQL_MEMORY_LIMIT

if TYPE_CHECKING:
    from atlas.models import TextToImageModel

T = TypeVar("T")


REQUEST_SECONDS = 30.0
"""Wall-clock limit of a read: past it the client gets a 503 (the SQL of the request is stopped by its own
limit, which is at most this)."""
EDIT_SECONDS = 300.0
"""Wall-clock limit of a write (an edit, waiting in the queue included)."""
QUEUED_EDITS = 4
"""Edits that may wait for the edit worker; one more is refused (503) instead of piling up."""
MAX_EDIT_CONCEPTS = 16
"""Concepts one web edit may set (a label resolves to at most EditConfig.max_concepts; SQL may return more)."""


class StreamBroken(Exception):  # noqa: N818 - a signal to the app's middleware, not an error of the atlas
    """A streamed response stopped after it started (a limit hit mid-export): the connection is cut so the client
    sees an incomplete answer."""


class EditQueue:
    """One worker thread runs the edits, one at a time, and at most QUEUED_EDITS wait: an edit never takes a
    thread that serves reads, and a burst of edits is refused instead of queued without end."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atlas-edit", initializer=_leave_a_core)
        self._slots = threading.BoundedSemaphore(QUEUED_EDITS + 1)

    def run(self, work: Callable[[], T], seconds: float = EDIT_SECONDS) -> T:
        if not self._slots.acquire(blocking=False):
            raise UnavailableError(f"{QUEUED_EDITS} edits are already waiting: try again in a minute")
        future = self._pool.submit(work)
        future.add_done_callback(lambda _: self._slots.release())
        try:
            return future.result(timeout=seconds)
        except FutureTimeout:
            future.cancel()
            raise UnavailableError(f"the edit did not finish within the server's {seconds:g} s limit (edits wait "
                                   "for the ones before them): try again when the server is less busy") from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _leave_a_core() -> None:
    """Edits compute with all cores but one, so the reads served meanwhile keep one."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))


class ServerState:
    def __init__(self, root: str | Path, read_only: bool = False, threads: int | None = None) -> None:
        self.root = Path(root).resolve()
        self.read_only = read_only
        self.threads = threads
        self.atlas: Atlas = open_atlas(self.root, threads=threads, memory_limit=SQL_MEMORY_LIMIT)
        self.sql = SqlWorkers(self.root, threads)
        """Where user SQL runs: worker processes (atlas.server.sql_worker)."""
        self.edits = EditQueue()
        self.guard = Guard()
        """The sessions' CSRF tokens (atlas.server.guard)."""
        self._write_lock = threading.Lock()
        self._embed_lock = threading.Lock()
        self._embedder = None
        self._vectors: dict[tuple[str, ...], np.ndarray] = {}
        self._model = None
        self.pictures: OrderedDict[str, bytes] = OrderedDict()
        """PNGs made by recent edits, by name; the oldest are dropped (see keep_picture)."""

    @contextmanager
    def write_turn(self, what: str) -> Iterator[None]:
        """This server's turn to write (one write at a time); refused when it serves read-only."""
        if self.read_only:
            raise ReadOnlyServerError(what)
        with self._write_lock:
            yield

    @contextmanager
    def writer(self, what: str) -> Iterator[Writer]:
        """A writer on the served atlas for one write, in this server's turn."""
        with self.write_turn(what), self.atlas.writer() as writer:
            yield writer

    def model(self, name: str) -> TextToImageModel:
        """The atlas's text-to-image model, loaded on the first edit and kept (call in `write_turn`)."""
        if self._model is None or self._model[0] != name:
            from atlas.models import load_model

            self._model = (name, load_model(name))
        return self._model[1]

    @contextmanager
    def model_turn(self) -> Iterator[Callable[[str], TextToImageModel]]:
        """The model loader for one computation that writes nothing (word attribution): one at a time, sharing the
        edits' loaded model, allowed also when serving read-only."""
        with self._write_lock:
            yield self.model

    def keep_picture(self, name: str, data: bytes, keep: int = 96) -> None:
        self.pictures[name] = data
        while len(self.pictures) > keep:
            self.pictures.popitem(last=False)

    def close(self) -> None:
        self.edits.close()
        self.sql.close()
        self.atlas.close()

    # -- lookups the views share --------------------------------------------------------------------------------

    def check(self, block: str | None = None, t: float | None = None, branch: str | None = None,
              variant: str | None = None) -> list[SaeInfo]:
        """The SAEs matching the filters given; an unknown block, branch, variant or t lists the valid ones (404)."""
        return self.atlas.select_saes(block, t, branch, variant)

    def sae(self, block: str, t: float, branch: str = DEFAULT_BRANCH, variant: str = DEFAULT_VARIANT) -> SaeInfo:
        """The SAE of (block, t, branch, variant)."""
        return self.check(block, t, branch, variant)[0]

    def image(self, image_id: int) -> dict:
        """One image's row of the `images` view (id, path, prompt, split, seed, ...); 404 when unknown."""
        rows = self.atlas.query("SELECT * FROM images WHERE id = ?", [image_id]).to_pylist()
        if not rows:
            raise NotFoundError(f"unknown image {image_id}: browse the images at /images")
        return rows[0]

    def image_file(self, relative: str | None, what: str) -> Path:
        """An atlas file named by the catalog, refused when it is missing or outside the atlas directory."""
        path = (self.root / str(relative or "")).resolve()
        if not relative or not path.is_relative_to(self.root) or not path.is_file():
            raise NotFoundError(f"the file of {what} is missing from the atlas ({relative})")
        return path

    # -- search by meaning --------------------------------------------------------------------------------------

    def embed(self, texts: list[str], keep: bool = False) -> np.ndarray:
        """Unit-norm MiniLM embeddings (the model loads on first use); `keep` caches a list that comes back
        on every search (the labels, the concept names)."""
        key = tuple(texts)
        with self._embed_lock:
            if key in self._vectors:
                return self._vectors[key]
            if self._embedder is None:
                from atlas.models.text import TextEmbedder

                self._embedder = TextEmbedder()
            vectors = self._embedder.embed(list(texts)) if texts else np.zeros((0, 384), np.float32)
            if keep:
                if len(self._vectors) >= 8:
                    self._vectors.pop(next(iter(self._vectors)))
                self._vectors[key] = vectors
            return vectors


def get_state(request: Request) -> ServerState:
    return request.app.state.atlas


State = Annotated[ServerState, Depends(get_state)]
"""The parameter type of every view: FastAPI passes the app's ServerState."""
