"""FAISS indexes over SAE decoder directions: per SAE, and across the SAEs of a block (all t).

Exact search (`IndexFlatIP`) on unit-norm decoder rows, so the score is the cosine similarity:
measured on this machine, 15k x 1280 answers one query in a few ms, and approximate indexes would
first have to prove their recall on decoder directions. The block index stores the vectors of every
SAE of one (block, branch, variant) under ids `sae_id << 20 | latent`, so a concept at t = 1.0 finds its
nearest concepts at t = 0.5 and 0.0 in one search. Files are written to a temporary name and
renamed; the atlas records them in its `files` table only afterwards.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from atlas.files import atomic_write
from atlas.store.errors import CorruptFileError, InvalidInputError

LATENT_BITS = 20


def pack_id(sae_id: int, latent: int | np.ndarray) -> np.ndarray:
    return (np.int64(sae_id) << LATENT_BITS) | np.asarray(latent, np.int64)


def unpack_id(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(ids, np.int64)
    return ids >> LATENT_BITS, ids & ((1 << LATENT_BITS) - 1)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32 and contiguous as FAISS wants them."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or not np.all(np.isfinite(vectors)):
        raise InvalidInputError(f"decoder vectors must be a finite 2-d array (n_latents, d), got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.where(norms > 0, norms, 1), dtype=np.float32)


def sae_index(decoder: np.ndarray) -> faiss.IndexFlatIP:
    """An exact inner-product index over one SAE's unit-norm decoder rows (ids = latent)."""
    vectors = unit_rows(decoder)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def block_index(members: list[tuple[int, faiss.Index]]) -> faiss.IndexIDMap2:
    """One index over the SAE indexes of a block; ids pack (sae_id, latent)."""
    d = members[0][1].d
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    for sae_id, member in members:
        if member.d != d:
            raise InvalidInputError(f"SAE {sae_id} has decoder width {member.d}, others in its block {d}")
        index.add_with_ids(member.reconstruct_n(0, member.ntotal), pack_id(sae_id, np.arange(member.ntotal)))
    return index


def write(index: faiss.Index, path: Path) -> int:
    """Atomic write; returns the file size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: faiss.write_index(index, str(tmp)))
    return path.stat().st_size


def read(path: Path, name: str) -> faiss.Index:
    try:
        return faiss.read_index(str(path))
    except RuntimeError as err:
        raise CorruptFileError(name, str(err).strip().splitlines()[-1][:120]) from None


def search(index: faiss.Index, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores and ids of the k nearest rows to one vector (normalised here)."""
    query = unit_rows(np.asarray(vector, np.float32).reshape(1, -1))
    if query.shape[1] != index.d:
        raise InvalidInputError(f"vector has width {query.shape[1]}, the index {index.d}")
    # One query is one pass over the vectors; OpenMP threads only add start-up and spinning
    # (measured on 15k x 1280 with both cores busy: 64 ms with 2 threads, 15 ms with 1).
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        scores, ids = index.search(query, min(k, index.ntotal))
    finally:
        faiss.omp_set_num_threads(threads)
    keep = ids[0] >= 0
    return scores[0][keep], ids[0][keep]
