"""`atlas generate`: images for prompts, one PNG each, a JSONL index and a labelled grid."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from atlas.errors import BadInputError
from atlas.files import atomic_write
from atlas.models.base import TextToImageModel
from atlas.models.sampler import generate
from atlas.pipeline.config import GenerateConfig
from atlas.viz import image_grid


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise BadInputError(f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at {err.start}): "
                            "save the prompts as UTF-8") from None
    except OSError as err:
        raise BadInputError(f"cannot read {path}: {err.strerror or err}; give a readable prompts file") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise BadInputError(f"{path} holds no prompts (one per line expected)")
    return prompts


def generate_to_dir(model: TextToImageModel, prompts: list[str], out_dir: str | Path,
                    config: GenerateConfig | None = None, progress: bool = False) -> list[dict]:
    """Write DIR/0000.png ... in prompt order, DIR/images.jsonl and DIR/grid.png; returns the records."""
    config = config or GenerateConfig()
    if not prompts:
        raise BadInputError("no prompts given: pass PROMPT arguments or --prompts FILE")
    if config.n_per_prompt < 1:
        raise BadInputError("--n-per-prompt must be at least 1")
    steps, guidance = model.spec.steps(config.steps), model.spec.guidance(config.guidance)
    all_prompts = [p for p in prompts for _ in range(config.n_per_prompt)]
    seeds = [config.seed + j for _ in prompts for j in range(config.n_per_prompt)]
    images = generate(model, all_prompts, seeds, steps, guidance, batch_size=config.batch_size, progress=progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (img, prompt, seed) in enumerate(zip(images, all_prompts, seeds)):
        name = f"{i:04d}.png"
        Image.fromarray(img).save(out / name)
        records.append({"file": name, "prompt": prompt, "seed": seed, "steps": steps, "guidance": guidance,
                        "model": model.spec.name})
    lines = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(out / "images.jsonl", lambda tmp: tmp.write_text(lines))
    image_grid(images, all_prompts, cols=max(config.n_per_prompt, min(8, len(images)))).save(out / "grid.png")
    return records
