"""What every view shares: one `Atlas` reader for all threads, the write switch, label embeddings.

Reads go through a single reader (the store locks what threads share). A write opens a writer on it
only for its duration, so a running build is never blocked for longer than one write; the reader sees
the change at its next query because every write publishes a new snapshot.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
from fastapi import Depends, Request

from atlas.errors import NotFoundError
from atlas.server.errors import ReadOnlyServerError
from atlas.store import Atlas, SaeInfo, Writer, open_atlas
from atlas.store.ids import DEFAULT_BRANCH, DEFAULT_VARIANT

if TYPE_CHECKING:
    from atlas.models import TextToImageModel


class ServerState:
    def __init__(self, root: str | Path, read_only: bool = False, threads: int | None = None) -> None:
        self.root = Path(root).resolve()
        self.read_only = read_only
        self.threads = threads
        self.atlas: Atlas = open_atlas(self.root, threads=threads)
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

    def keep_picture(self, name: str, data: bytes, keep: int = 96) -> None:
        self.pictures[name] = data
        while len(self.pictures) > keep:
            self.pictures.popitem(last=False)

    def close(self) -> None:
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
