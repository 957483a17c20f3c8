"""Stream one (block, t, branch) of an activation directory to SAE training through a bounded shuffle buffer.

Pass p reads the done batches' shards in an order seeded by (seed, p), groups consecutive ones into windows
of at most `buffer_tokens` positions, loads one window at a time into the buffer (in the stored dtype) and hands
its rows over in an order seeded by (seed, p, window). Memory holds one buffer whatever the number of
positions, and the sequence depends on the seed alone: `chunks(start)` resumes it at any token, reading only
the shards of the window that holds it. This is the `atlas.sae.TokenStream` that `atlas train` trains on.

    stream = ShardStream(ActivationSet("acts"), "mid", 1.0, "cond", split="train", seed=0)
    train_sae(stream, SaeConfig(d_in=stream.d_in), SaeTrainConfig(epochs=2))
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from atlas.capture.config import StreamConfig
from atlas.capture.record import ActivationSet, keep_images
from atlas.errors import BadInputError, NotFoundError
from atlas.sae.train import CHUNK_TOKENS, permutation, shuffled_chunks


class ShardStream:
    """The positions of one (block, t, branch), optionally of one split's images, pass after pass."""

    def __init__(self, acts: ActivationSet, block: str, t: float, branch: str, split: str | None = None,
                 seed: int = 0, buffer_tokens: int = StreamConfig.buffer_tokens,
                 chunk_tokens: int = CHUNK_TOKENS) -> None:
        acts.check_key(block, t, branch)
        self.acts, self.key, self.split, self.seed = acts, (block, float(t), branch), split, seed
        self.buffer_tokens, self.chunk_tokens = buffer_tokens, chunk_tokens
        self.keep = acts.image_ids(split)
        self.sizes: dict[int, int] = {}
        """Positions each done batch holds (of the split), from the done markers; empty batches are left out."""
        self.d_in = 0
        for batch in acts.done:
            marker = acts.marker(batch)
            height, width, self.d_in = marker["grids"][block]
            images = [i for i in marker["image_ids"] if self.keep is None or i in self.keep]
            if images:
                self.sizes[batch] = len(images) * height * width
        if not self.sizes:
            where = f"of the {split} split " if split else ""
            raise NotFoundError(f"no finished batches {where}in {acts.path}; run `atlas capture` first")
        largest = max(self.sizes.values())
        if largest > buffer_tokens:
            raise BadInputError(f"a shard holds {largest} positions, more than the buffer's {buffer_tokens}: "
                                f"give --buffer-tokens {largest} or more")
        self.n_tokens = sum(self.sizes.values())
        self.buffered = 0
        """Positions in the buffer now."""
        self.peak_buffered = 0
        """The most positions the buffer ever held (never more than `buffer_tokens`)."""
        self._buffer: Tensor | None = None

    def windows(self, pass_index: int) -> list[list[int]]:
        """The batches of each window of pass `pass_index`, in reading order."""
        batches = list(self.sizes)
        windows: list[list[int]] = [[]]
        filled = 0
        for i in permutation(len(batches), self.seed, pass_index).tolist():
            size = self.sizes[batches[i]]
            if filled + size > self.buffer_tokens:
                windows.append([])
                filled = 0
            windows[-1].append(batches[i])
            filled += size
        return windows

    def chunks(self, start: int = 0) -> Iterator[Tensor]:
        """(n, d_in) chunks in the stored dtype from token `start` of the endless sequence (pass after pass)."""
        pass_index, offset = divmod(start, self.n_tokens)
        while True:
            for w, window in enumerate(self.windows(pass_index)):
                size = sum(self.sizes[b] for b in window)
                if offset >= size:
                    offset -= size
                    continue
                yield from shuffled_chunks(self._fill(window), offset, self.chunk_tokens, self.seed, pass_index, w)
                offset = 0
            pass_index += 1

    def _fill(self, window: list[int]) -> Tensor:
        """Load the window's shards into the buffer (allocated once, at most `buffer_tokens` rows)."""
        if self._buffer is None:
            self._buffer = torch.empty(min(self.buffer_tokens, self.n_tokens), self.d_in, dtype=self.acts.dtype)
        self.buffered = 0
        for batch in window:
            shard = self.acts.shard(*self.key, batch)
            x = (shard if self.keep is None else keep_images(shard, self.keep))["x"]
            if tuple(x.shape) != (self.sizes[batch], self.d_in):
                raise self.acts.damaged(*self.key, batch)
            self._buffer[self.buffered:self.buffered + x.shape[0]] = x
            self.buffered += x.shape[0]
            self.peak_buffered = max(self.peak_buffered, self.buffered)
        return self._buffer[:self.buffered]

    def describe(self) -> dict[str, Any]:
        batches = hashlib.sha1(json.dumps(sorted(self.sizes.items())).encode()).hexdigest()
        return {"key": list(self.key), "split": self.split, "seed": self.seed, "buffer_tokens": self.buffer_tokens,
                "n_tokens": self.n_tokens, "batches": batches}
