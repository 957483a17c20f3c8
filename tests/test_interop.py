"""Other tools read what Concept Atlas writes: diffusers loads the shapes model as a pipeline directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from atlas.models import generate, load_model
from atlas.models.loader import shapes_model_dir
from atlas.store.ids import concept_id


def _diffusers_pipeline(path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(path), trust_remote_code=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_an_exported_pixel_model_is_a_diffusers_pipeline_giving_atlas_images(tiny_shapes_dir):
    """`save_pretrained` (what `atlas shapes export` calls) writes model_index.json and the pipeline's code: diffusers
    loads the directory and, seed for seed, draws the images `atlas generate` draws."""
    index = json.loads((tiny_shapes_dir / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_shapes", "ShapesPipeline"]
    pipe = _diffusers_pipeline(tiny_shapes_dir)
    prompts, seeds = ["a red circle", "a blue square on the left"], [3, 4]
    ours = pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in seeds], num_inference_steps=3,
                guidance_scale=2.0, output_type="np").images
    theirs = generate(load_model(str(tiny_shapes_dir), device="cpu"), prompts, seeds, steps=3, guidance=2.0)
    assert ours.shape == theirs.shape == (2, 32, 32, 3)
    assert np.abs((ours * 255).round().astype(int) - theirs.astype(int)).max() <= 1


@pytest.mark.slow
def test_the_shipped_shapes_model_loads_in_diffusers_and_draws_an_image():
    """The README's line, on data/shapes as shipped (its own steps and guidance)."""
    image = _diffusers_pipeline(shapes_model_dir())("a red circle",
                                                    generator=torch.Generator().manual_seed(0)).images[0]
    pixels = np.asarray(image)
    assert image.size == (32, 32) and pixels.std() > 10  # an image with content, not a flat or black square


def _atlas_sae(atlas, block="mid", t=1.0):
    [sae] = [s for s in atlas.saes() if (s.block, s.t, s.branch, s.variant) == (block, t, "cond", "")]
    return sae


def _stored_codes(atlas, acts, sae):
    """The atlas's codes of one SAE as {(capture image id, row, col): {latent: value}}, values > 0 only."""
    ids = {(r.prompt, r.seed): r.image_id for r in acts.prompts}
    images = {row["id"]: ids[(row["prompt"], row["seed"])]
              for row in atlas.query("SELECT id, prompt, seed FROM images").to_pylist()}
    table = atlas.query("SELECT image_id, row, col, latent, value FROM codes WHERE sae_id = ?", [sae.id]).to_pylist()
    stored = {}
    for row in table:
        stored.setdefault((images[row["image_id"]], row["row"], row["col"]), {})[row["latent"]] = row["value"]
    return stored


def _positions(shard, top_indices, top_acts):
    for i in range(len(shard["x"])):
        key = (int(shard["image_id"][i]), int(shard["row"][i]), int(shard["col"][i]))
        yield key, {int(j): float(v) for j, v in zip(top_indices[i], top_acts[i]) if v > 0}


def test_sparsify_loads_an_atlas_sae_as_it_is_and_gives_the_atlas_codes(shapes_atlas):
    """sparsify's own loader reads the SAE directory `atlas build` wrote (cfg.json, encoder.weight/bias, W_dec,
    b_dec), and its top-k on the captured activations is what `atlas encode` stored, at every position."""
    sparsify = pytest.importorskip("sparsify")
    from atlas.capture import ActivationSet
    from atlas.store import open_atlas

    acts = ActivationSet(shapes_atlas / "activations")
    with open_atlas(shapes_atlas) as atlas:
        sae = _atlas_sae(atlas)
        coder = sparsify.SparseCoder.load_from_disk(atlas.file_path(sae.path), device="cpu")
        stored = _stored_codes(atlas, acts, sae)
    assert (coder.cfg.k, coder.num_latents, coder.d_in) == (sae.k, sae.n_latents, sae.d_in)
    checked = 0
    for batch in acts.done:
        shard = acts.shard("mid", 1.0, "cond", batch)
        with torch.no_grad():
            out = coder.encode(shard["x"].float())
        for key, theirs in _positions(shard, out.top_indices, out.top_acts):
            ours = stored.get(key, {})
            assert set(ours) == set(theirs), key
            assert all(abs(ours[j] / theirs[j] - 1) < 0.025 for j in ours)  # stored values: 1/16-octave steps
            checked += 1
    assert checked == len(stored) > 0


def test_export_writes_saelens_sae_files_and_neuronpedia_records(shapes_atlas, tmp_path):
    """`atlas export`: SAELens' layout (W_enc d_in x d_sae; its TopK encode gives the atlas's codes) and one JSONL
    record per concept whose top image is the one the atlas ranks first."""
    from click.testing import CliRunner
    from safetensors.torch import load_file

    from atlas.capture import ActivationSet
    from atlas.cli.main import main
    from atlas.store import open_atlas

    out = tmp_path / "export"
    result = CliRunner().invoke(main, ["export", "--atlas", str(shapes_atlas), "--out", str(out), "--top-images", "3"])
    assert result.exit_code == 0, result.output
    acts = ActivationSet(shapes_atlas / "activations")
    with open_atlas(shapes_atlas) as atlas:
        sae = _atlas_sae(atlas)
        assert len(list((out / "saelens").glob("*/*/*/cfg.json"))) == len(atlas.saes()) == 9
        directory = out / "saelens" / "mid" / "t1.0" / "cond"
        cfg = json.loads((directory / "cfg.json").read_text())
        weights = load_file(str(directory / "sae_weights.safetensors"))
        assert (cfg["architecture"], cfg["d_in"], cfg["d_sae"], cfg["k"]) == ("topk", sae.d_in, sae.n_latents, sae.k)
        assert weights["W_enc"].shape == (sae.d_in, sae.n_latents) and weights["W_dec"].shape == (sae.n_latents,
                                                                                                    sae.d_in)
        stored = _stored_codes(atlas, acts, sae)
        shard = acts.shard("mid", 1.0, "cond", acts.done[0])
        pre = (shard["x"].float() - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]  # SAELens' TopK encode
        top = pre.topk(cfg["k"], dim=-1)
        for key, theirs in _positions(shard, top.indices, top.values.relu()):
            assert set(stored.get(key, {})) == set(theirs), key
        records = [json.loads(line) for line in (out / "neuronpedia" / "features.jsonl").read_text().splitlines()]
        mine = [r for r in records if r["layer"] == sae.prefix]
        [fired] = atlas.query("SELECT count(DISTINCT latent) AS n FROM codes WHERE sae_id = ?", [sae.id]).to_pylist()
        assert len(mine) == fired["n"]
        record = max(mine, key=lambda r: r["maxActApprox"])
        [hit] = atlas.top_images(record["concept_id"], n=1)
        first = record["activations"][0]
        assert len(record["activations"]) <= 3 and first["image_id"] == hit.image_id
        assert first["maxValue"] == pytest.approx(hit.activation)
        assert max(first["values"]) == pytest.approx(hit.activation, rel=1e-5)
        assert len(first["values"]) == sae.grid_h * sae.grid_w


README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_blocks(language):
    section = README.read_text().split("## Reading an atlas without this package\n")[1].split("\n## ")[0]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def _busiest_concept(atlas):
    sae = _atlas_sae(atlas)
    [row] = atlas.query("SELECT latent FROM codes WHERE sae_id = ? GROUP BY latent "
                        "ORDER BY count(DISTINCT image_id) DESC, latent LIMIT 1", [sae.id]).to_pylist()
    latent = row["latent"]
    hits = atlas.top_images(concept_id(sae.block, sae.t, sae.branch, latent, sae.variant), n=10)
    return latent, [h.image_id for h in hits], [h.activation for h in hits]


def test_the_readmes_duckdb_query_reads_an_atlas_without_this_package(shapes_atlas, monkeypatch):
    """The README's SQL, in plain DuckDB on catalog.duckdb opened read-only from the atlas directory, gives the
    atlas's own top images of a concept with their decoded values; with ATLAS_DUCKDB_PYTHON naming another
    interpreter (e.g. a venv with duckdb 1.5) it runs there too."""
    import duckdb

    from atlas.store import open_atlas

    with open_atlas(shapes_atlas) as atlas:
        latent, ids, values = _busiest_concept(atlas)
    [sql] = _readme_blocks("sql")
    sql = sql.replace("SET VARIABLE latent = 7;", f"SET VARIABLE latent = {latent};")
    monkeypatch.chdir(shapes_atlas)
    con = duckdb.connect("catalog.duckdb", read_only=True)
    statements = [s for s in (re.sub(r"--[^\n]*", "", part).strip() for part in sql.split(";")) if s]
    for statement in statements[:-1]:
        con.execute(statement)
    rows = con.execute(statements[-1]).fetchall()
    con.close()
    assert [r[0] for r in rows] == ids and [r[3] for r in rows] == pytest.approx(values, rel=1e-6)
    other = os.environ.get("ATLAS_DUCKDB_PYTHON")
    if other:
        script = ("import duckdb, json, sys\ncon = duckdb.connect('catalog.duckdb', read_only=True)\n"
                  "parts = json.loads(sys.stdin.read())\nfor s in parts[:-1]: con.execute(s)\n"
                  "print(json.dumps([duckdb.__version__, [r[0] for r in con.execute(parts[-1]).fetchall()]]))")
        done = subprocess.run([other, "-c", script], input=json.dumps(statements), capture_output=True, text=True,
                              check=True)
        version, theirs = json.loads(done.stdout)
        assert theirs == ids, version


@pytest.mark.parametrize("library", ["pandas", "polars"])
def test_the_readmes_dataframe_examples_give_the_atlas_top_images(shapes_atlas, library):
    pytest.importorskip(library)
    from atlas.store import open_atlas

    with open_atlas(shapes_atlas) as atlas:
        latent, ids, values = _busiest_concept(atlas)
    [code] = [block for block in _readme_blocks("python") if f"import {library}" in block]
    scope = {}
    code = code.replace("latent = 7\n", f"latent = {latent}\n")
    exec(code.replace('Path("demo/atlas")', f"Path({str(shapes_atlas)!r})"), scope)
    top = scope["top"]
    columns = top.to_dict("list") if library == "pandas" else top.to_dict(as_series=False)
    assert columns["image_id"] == ids and columns["value"] == pytest.approx(values, rel=1e-6)
