"""FAISS neighbours of decoder directions equal a brute-force cosine ranking."""

from __future__ import annotations

import numpy as np
import pytest

from atlas.store import Atlas, CorruptFileError, NoIndexError, open_atlas, open_writer, synthetic
from atlas.store import index as faiss_index


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("index") / "atlas"
    atlas, truth = synthetic.build(root, n_images=4, blocks=("mid", "up"), times=(1.0, 0.5, 0.0), n_latents=40,
                                   d=12, threads=1)
    atlas.close()
    return root, truth


def brute_force(vector, candidates, k):
    """candidates: list of (concept_id, decoder row); the k best by cosine, best first."""
    unit = vector / np.linalg.norm(vector)
    scored = [(float(row @ unit / np.linalg.norm(row)), cid) for cid, row in candidates]
    scored.sort(key=lambda s: -s[0])
    return scored[:k]


def rows_of(atlas, truth, block, t=None):
    out = []
    for sae in atlas.saes():
        if sae.block == block and (t is None or sae.t == t):
            out += [(f"{block}/{sae.t!r}/{i}", row) for i, row in enumerate(truth.decoders[sae.id])]
    return out


def test_nearest_across_timesteps_is_the_cosine_ranking(built):
    root, truth = built
    with open_atlas(root, threads=1) as atlas:
        for concept in ("mid/1.0/0", "mid/0.5/17", "up/0.0/39"):
            block, t, latent = concept.split("/")
            sae = next(s for s in atlas.saes() if s.block == block and s.t == float(t))
            vector = truth.decoders[sae.id][int(latent)]
            expected = [s for s in brute_force(vector, rows_of(atlas, truth, block), 11) if s[1] != concept][:10]
            found = atlas.nearest(concept, k=10)
            assert [n.concept_id for n in found] == [cid for _, cid in expected]
            np.testing.assert_allclose([n.score for n in found], [s for s, _ in expected], atol=1e-5)
            assert {n.t for n in found} - {float(t)}, "neighbours come from other timesteps too"


def test_nearest_within_one_sae_or_one_other_t(built):
    root, truth = built
    with open_atlas(root, threads=1) as atlas:
        sae = next(s for s in atlas.saes() if s.block == "mid" and s.t == 1.0)
        vector = truth.decoders[sae.id][5]
        at_zero = atlas.nearest("mid/1.0/5", k=4, t=0.0)
        assert [n.concept_id for n in at_zero] == [c for _, c in brute_force(vector, rows_of(atlas, truth, "mid", 0.0),
                                                                           4)]
        own = atlas.nearest("mid/1.0/5", k=4, across_t=False)
        expected = [c for _, c in brute_force(vector, rows_of(atlas, truth, "mid", 1.0), 5) if c != "mid/1.0/5"]
        assert [n.concept_id for n in own] == expected[:4]


def test_search_vector_matches_brute_force(built):
    root, truth = built
    query = np.random.default_rng(3).standard_normal(12)
    with open_atlas(root, threads=1) as atlas:
        found = atlas.search_vector(query, "up", k=5)
        assert [n.concept_id for n in found] == [c for _, c in brute_force(query, rows_of(atlas, truth, "up"), 5)]
        found = atlas.search_vector(query, "up", t=0.5, k=3)
        assert [n.concept_id for n in found] == [c for _, c in brute_force(query, rows_of(atlas, truth, "up", 0.5),
                                                                           3)]


def test_reindexing_replaces_vectors(built, tmp_path):
    import shutil

    root, truth = built
    copy = tmp_path / "atlas"
    shutil.copytree(root, copy)
    with open_writer(copy, threads=1) as writer:
        atlas = writer.atlas
        sae = next(s for s in atlas.saes() if s.block == "mid" and s.t == 0.0)
        decoder = truth.decoders[sae.id].copy()
        decoder[7] = truth.decoders[next(s.id for s in atlas.saes() if s.block == "mid" and s.t == 1.0)][2] * 3
        writer.index.add(sae.id, decoder)
        assert atlas.nearest("mid/1.0/2", k=1)[0].concept_id == "mid/0.0/7"
        assert atlas.nearest("mid/1.0/2", k=1)[0].score == pytest.approx(1.0, abs=1e-5)
        block_rows = atlas.sql("SELECT rows FROM files WHERE kind = 'faiss_block' AND key = 'mid/cond'").rows
        assert block_rows == [(3 * 40,)]
        assert atlas.sql("SELECT count(*) FROM files WHERE kind = 'faiss_sae'").rows == [(6,)]


def test_missing_and_corrupt_indexes(built, tmp_path):
    with Atlas.create(tmp_path / "empty", threads=1) as atlas, atlas.writer() as writer:
        writer.catalog.add_sae("mid", 1.0, "cond", 2, 8, 4)
        with pytest.raises(NoIndexError, match="`atlas encode` indexes"):
            atlas.nearest("mid/1.0/1")
        writer.index.add(0, np.eye(8, 4))
        path = atlas.root / atlas.sql("SELECT path FROM files WHERE kind = 'faiss_block'").rows[0][0]
        path.write_bytes(b"garbage")
    with open_atlas(tmp_path / "empty", threads=1) as atlas, pytest.raises(CorruptFileError, match=path.name):
        atlas.nearest("mid/1.0/1")


def test_unit_rows_and_ids():
    rows = faiss_index.unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, 0.0]])
    sae, latent = faiss_index.unpack_id(faiss_index.pack_id(7, np.array([0, 5119])))
    assert sae.tolist() == [7, 7] and latent.tolist() == [0, 5119]
