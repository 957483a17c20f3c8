"""`atlas export`: an atlas's SAEs and concepts in the formats other SAE tools read.

    OUT/saelens/<block>/t<t>/<branch>/   cfg.json + sae_weights.safetensors (+ sparsity.safetensors): SAELens'
                                         `SAE.load_from_disk` layout of a TopK SAE (W_enc is d_in x d_sae there)
    OUT/neuronpedia/features.jsonl       one line per concept that fired: Neuronpedia-style feature records
                                         (modelId, layer, index, explanations, frac_nonzero, maxActApprox) with
                                         its top images as `activations`, each the concept's values over the
                                         block's grid (row-major, `grid` = [rows, cols]) and the image's path

The atlas's own TopK SAE directories need no export for sparsify: `SparseCoder.load_from_disk` reads them as they
are (sparsify has no BatchTopK / JumpReLU / Matryoshka inference rule).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from atlas.errors import NotFoundError
from atlas.pipeline.export_config import ExportConfig
from atlas.sae import Sae
from atlas.store import Atlas
from atlas.store.views import SaeInfo


def export_atlas(atlas: Atlas, out: str | Path, config: ExportConfig | None = None) -> dict[str, int]:
    """Write every SAE of `atlas` in SAELens' layout and its concepts as Neuronpedia-style JSONL under `out`;
    returns counts {"saes": ..., "features": ...}."""
    config = config or ExportConfig()
    out = Path(out)
    saes = [sae for sae in atlas.saes() if sae.path]
    if not saes:
        raise NotFoundError(f"{atlas.root} has no SAEs to export: run `atlas encode` (or `atlas build`) first")
    model = atlas.model().get("name", "")
    features = out / "neuronpedia" / "features.jsonl"
    features.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with features.open("w") as lines:
        for info in saes:
            sae = Sae.from_pretrained(atlas.file_path(info.path))
            write_saelens(sae, info, model, out / "saelens" / info.block / f"t{info.t}" / _branch_part(info),
                          _frequencies(atlas, info))
            for record in neuronpedia_records(atlas, info, model, config.top_images):
                lines.write(json.dumps(record) + "\n")
                written += 1
    return {"saes": len(saes), "features": written}


def _branch_part(info: SaeInfo) -> str:
    return info.branch + (f"@{info.variant}" if info.variant else "")


def _frequencies(atlas: Atlas, info: SaeInfo) -> np.ndarray:
    rows = atlas.query("SELECT latent, frequency FROM concepts WHERE sae_id = ?", [info.id])
    freq = np.zeros(info.n_latents, dtype=np.float32)
    freq[rows["latent"].to_numpy()] = np.nan_to_num(rows["frequency"].to_numpy(zero_copy_only=False))
    return freq


def write_saelens(sae: Sae, info: SaeInfo, model: str, directory: Path, frequency: np.ndarray) -> Path:
    """cfg.json, sae_weights.safetensors and sparsity.safetensors (log10 firing frequency, SAELens' convention).
    A TopK SAE is SAELens' "topk"; the types that fire above a threshold (batchtopk, jumprelu, matryoshka) are its
    "jumprelu" with their inference thresholds per latent (without the atlas's cap of active latents)."""
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    theta = sae.thresholds()
    cfg = {"architecture": "topk" if theta is None else "jumprelu", "d_in": sae.d_in, "d_sae": sae.n_latents,
           "k": sae.cfg.k, "dtype": str(sae.dtype).removeprefix("torch."), "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
           "rescale_acts_by_decoder_norm": False,
           "metadata": {"model_name": model, "hook_name": info.block, "t": info.t, "branch": info.branch,
                        "variant": info.variant, "grid": [info.grid_h, info.grid_w],
                        "exported_by": "concept-atlas (atlas export)"}}
    (directory / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
    weights = {"W_enc": sae.W_enc.detach().T, "b_enc": sae.b_enc.detach(), "W_dec": sae.W_dec.detach(),
               "b_dec": sae.b_dec.detach()}
    if theta is not None:
        weights["threshold"] = theta.detach().clamp_min(0).expand(sae.n_latents)
    save_file({name: t.contiguous().cpu() for name, t in weights.items()}, str(directory / "sae_weights.safetensors"))
    sparsity = torch.from_numpy(np.log10(np.maximum(frequency, 1e-10)).astype(np.float32))
    save_file({"sparsity": sparsity}, str(directory / "sparsity.safetensors"))
    return directory


def neuronpedia_records(atlas: Atlas, info: SaeInfo, model: str, top: int) -> list[dict]:
    """One record per concept of `info` with codes: its label as the explanation and its top images' grids."""
    hits = atlas.query(
        "WITH best AS (SELECT latent, image_id, max(value) AS peak, count(*) AS cells FROM codes WHERE sae_id = ? "
        "GROUP BY latent, image_id "
        "QUALIFY row_number() OVER (PARTITION BY latent ORDER BY peak DESC, cells DESC, image_id) <= ?) "
        "SELECT b.latent, b.image_id, b.peak, i.path, i.prompt, list(c.row * ? + c.col) AS cells, "
        "list(c.value) AS vals FROM best b JOIN codes c ON c.sae_id = ? AND c.latent = b.latent "
        "AND c.image_id = b.image_id JOIN images i ON i.id = b.image_id GROUP BY ALL "
        "ORDER BY b.latent, b.peak DESC, b.image_id", [info.id, top, info.grid_w or 1, info.id]).to_pylist()
    concepts = {row["latent"]: row for row in atlas.query(
        "SELECT latent, concept_id, frequency, best_label, name FROM concepts WHERE sae_id = ?", [info.id]).to_pylist()}
    size = (info.grid_h or 1) * (info.grid_w or 1)
    records: dict[int, dict] = {}
    for hit in hits:
        latent = hit["latent"]
        if latent not in records:
            concept = concepts.get(latent, {})
            label = concept.get("name") or concept.get("best_label")
            records[latent] = {"modelId": model, "layer": info.prefix, "index": int(latent),
                               "concept_id": concept.get("concept_id"),
                               "explanations": [{"description": label}] if label else [],
                               "frac_nonzero": concept.get("frequency"), "maxActApprox": float(hit["peak"]),
                               "activations": []}
        values = np.zeros(size, dtype=np.float32)
        values[hit["cells"]] = hit["vals"]
        records[latent]["activations"].append({
            "image_id": hit["image_id"], "image": hit["path"], "prompt": hit["prompt"], "grid": [info.grid_h,
                                                                                              info.grid_w],
            "values": [round(float(v), 6) for v in values], "maxValue": float(hit["peak"]),
            "maxValueTokenIndex": int(values.argmax())})
    return list(records.values())
