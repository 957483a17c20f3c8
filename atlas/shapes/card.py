"""The model card shipped next to the shapes model's weights: how they were made and how good they are."""

from __future__ import annotations

import json
from pathlib import Path

from atlas.shapes.evaluate import EvalResult


def plot_loss(csv_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [line.split(",") for line in csv_path.read_text().splitlines()[1:] if line]
    steps, losses = [int(r[0]) for r in rows], [float(r[1]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses)
    ax.set_xlabel("step")
    ax.set_ylabel("v-prediction MSE (running mean)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.set_title("shapes model training loss")
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)


def _schedule_line(model_dir: Path) -> str:
    config = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    if config.get("rescale_betas_zero_snr"):
        return "cosine schedule rescaled to zero terminal SNR, DDIM with trailing timesteps"
    return (f"SD v1.4's {config['beta_schedule']} betas ({config['beta_start']}-{config['beta_end']}), DDIM with "
            f"{config['timestep_spacing']} timesteps (the first step still sees some of the image)")


def _attention_line(model_dir: Path, spec: dict) -> str:
    config = json.loads((model_dir / "unet" / "config.json").read_text())
    side = spec["resolution"] // spec["pixel_unshuffle"]
    grids = [f"{side >> i}x{side >> i}" for i, kind in enumerate(config["down_block_types"]) if "CrossAttn" in kind]
    mid = side >> (len(config["down_block_types"]) - 1)
    depth = config.get("transformer_layers_per_block", 1)
    layers = f", {depth} transformer layers per attention block" if depth != 1 else ""
    return f"cross-attention to the text at {', '.join(grids)} and {mid}x{mid} (mid block){layers}"


def _dit_line(model_dir: Path, spec: dict) -> tuple[str, str]:
    """What the DiT is made of, and the grid its hook points see."""
    config = json.loads((model_dir / "transformer" / "config.json").read_text())
    grid = spec["resolution"] // spec["pixel_unshuffle"] // config["patch_size"]
    heads = config["num_attention_heads"]
    return (f"{config['num_layers']} transformer blocks of width {heads * config['attention_head_dim']} ({heads} "
            f"heads) on the {grid}x{grid} grid of image tokens (patch {config['patch_size']}), each with "
            "cross-attention to the text through PixArt's caption projection",
            f"every block on the {grid}x{grid} token grid")


FRONT_MATTER = ["---", "license: other", "library_name: diffusers", "pipeline_tag: text-to-image",
                "tags: [diffusers, text-to-image, pixel-space, concept-atlas, sparse-autoencoders]", "---", ""]
USAGE = [
    "## Use",
    "",
    "With diffusers alone (the pipeline's code is `pipeline_shapes.py` in this directory, hence `trust_remote_code`):",
    "",
    "```python",
    "import torch",
    "from diffusers import DiffusionPipeline",
    "",
    'pipe = DiffusionPipeline.from_pretrained("data/shapes", trust_remote_code=True, dtype=torch.float32)',
    'image = pipe("a red circle", generator=torch.Generator().manual_seed(0)).images[0]',
    "```",
    "",
    "A seed gives the same image as `atlas generate --model data/shapes` (noise drawn per image on the CPU).",
    "",
]


def write_model_card(model_dir: str | Path, facts: dict, train_config: dict, command: str,
                     result: EvalResult | None = None, eval_command: str = "") -> Path:
    """README.md (the Hugging Face Hub's model card: YAML front matter, then Markdown) + loss.png in `model_dir`."""
    model_dir = Path(model_dir)
    plot_loss(model_dir / "loss.csv", model_dir / "loss.png")
    spec = json.loads((model_dir / "atlas_model.json").read_text())
    size_mb = sum(p.stat().st_size for p in model_dir.rglob("*.safetensors")) / 1e6
    if spec.get("backbone") == "dit":
        denoiser, (blocks, grids) = "DiT", _dit_line(model_dir, spec)
        made_of = ("(PixArtTransformer2DModel, a PixArt-style diffusion transformer, in place of its UNet,\n"
                   "and a CLIP text transformer)")
    else:
        denoiser, blocks, grids = "UNet", _attention_line(model_dir, spec), "grids 8x8, 4x4, 8x8"
        made_of = ("(UNet2DConditionModel with CrossAttnDownBlock2D / UNetMidBlock2DCrossAttn / CrossAttnUpBlock2D,\n"
                   "a CLIP text transformer)")
    lines = [
        *FRONT_MATTER,
        "# The shapes model" + (" (DiT)" if denoiser == "DiT" else ""),
        "",
        "A tiny text-to-image diffusion model of the shapes world (coloured circles, squares and triangles",
        "on a plain or striped background), built from the same diffusers parts as Stable Diffusion v1.4",
        f"{made_of} and trained from scratch on CPU by `atlas shapes train`.",
        "",
        "## Architecture",
        f"- pixel space {spec['resolution']}x{spec['resolution']}, folded {spec['pixel_unshuffle']}x"
        f"{spec['pixel_unshuffle']} into channels, x/y coordinate planes appended to the {denoiser} input",
        f"- v-prediction, {_schedule_line(model_dir)}",
        f"- {blocks}",
        "- text encoder: " + ("kept at its seeded random initialisation (frozen, as SD keeps CLIP frozen)"
                              if train_config.get("text_encoder") == "frozen" else f"trained with the {denoiser}"),
        f"- hook points: {', '.join(f'`{k}` = `{v}`' for k, v in spec['hook_points'].items())}",
        f"  ({grids})",
        f"- defaults: {spec['default_steps']} DDIM steps, guidance {spec['default_guidance']}",
        f"- weights: {size_mb:.1f} MB (fp16 safetensors)",
        "",
        "## Training",
        f"- command: `{command}` (resumed across sessions from the same run directory)",
        f"- steps: {facts['steps']}, wall time: {facts['hours']:.2f} h on 2 CPU cores, "
        f"final loss (running mean): {facts['final_loss']:.4f}",
        f"- settings: {json.dumps({k: v for k, v in train_config.items() if k != 'run_dir'})}",
        "- data: scenes drawn on the fly from the shapes world, captions of the `train` split only",
        "- loss curve: `loss.csv`, `loss.png`",
        "",
        *USAGE,
    ]
    if result is not None:
        lines += ["## Quality on held-out captions", "", f"Command: `{eval_command}`", "", "```", result.table(), "```",
                  ""]
    path = model_dir / "README.md"
    path.write_text("\n".join(lines))
    return path
