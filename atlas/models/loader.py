"""Load a text-to-image model by name (`shapes`, `sd14`, `sd3-medium`, `flux-dev`, `flux-schnell`), local
directory, or Hugging Face cache id.

Nothing is ever downloaded: named models and hub ids are looked up in their environment variable's directory or
the local Hugging Face cache only, and a missing checkpoint raises `ModelNotFoundError` with a one-line fix.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, replace
from pathlib import Path

from atlas.errors import UnavailableError
from atlas.models.base import TextToImageModel, native_resolution
from atlas.models.device import pick_device, pick_dtype
from atlas.models.loading import LOADING
from atlas.models.mmdit import COMPONENTS, TOKENIZERS, joint_spec, listed, pipeline_backbone
from atlas.models.spec import DENOISERS, SD14_SPEC, SPEC_FILE, ModelSpec

SD14_REPO = "CompVis/stable-diffusion-v1-4"


@dataclass(frozen=True)
class NamedModel:
    """A released model known by name: its Hugging Face repo and the variable that points at a local copy."""

    repo: str
    env: str
    spec: ModelSpec | None = None
    """Its atlas spec, or None to read it from the directory (SD3 and FLUX: from their configs)."""
    gated: bool = False
    """Hugging Face serves it only after its licence is accepted on the repo's page, to a logged-in user."""


NAMED_MODELS = {
    "sd14": NamedModel(SD14_REPO, "ATLAS_SD14_PATH", SD14_SPEC),
    "sd3-medium": NamedModel("stabilityai/stable-diffusion-3-medium-diffusers", "ATLAS_SD3_MEDIUM_PATH", gated=True),
    "flux-dev": NamedModel("black-forest-labs/FLUX.1-dev", "ATLAS_FLUX_DEV_PATH", gated=True),
    "flux-schnell": NamedModel("black-forest-labs/FLUX.1-schnell", "ATLAS_FLUX_SCHNELL_PATH"),
}
"""`--model` names of released models: read from their variable's directory, else the local Hugging Face cache."""


class ModelNotFoundError(UnavailableError):
    """A checkpoint that is not on this machine; the message says how to get it. A 503 on the web atlas: the
    edit asked for is fine, this server lacks the weights of the atlas's model."""


SHIPPED_MODELS = {"shapes": "ATLAS_SHAPES_MODEL", "shapes-dit": "ATLAS_SHAPES_DIT_MODEL"}
"""Models shipped in data/ (the U-Net and the DiT of the shapes world), each with the variable that moves it."""


def shapes_model_dir(name: str = "shapes") -> Path:
    """Where a shipped shapes model is: data/<name>, or the directory its environment variable names."""
    import atlas.data  # the repository's data/ folder, installed as package data (atlas.data)

    return Path(os.environ.get(SHIPPED_MODELS[name], Path(atlas.data.__file__).parent / name))


def resolve_model_dir(name_or_path: str) -> tuple[Path, ModelSpec | None]:
    """Find a model's directory: returns (directory, built-in spec or None to read it from the directory)."""
    if name_or_path in SHIPPED_MODELS:
        path = shapes_model_dir(name_or_path)
        if not _has_denoiser(path):
            train = ("`atlas shapes train --backbone dit`" if name_or_path == "shapes-dit" else
                     "`atlas shapes train`")
            raise ModelNotFoundError(f"{name_or_path} model not found in {path}: run {train} then `atlas shapes "
                                     f"export`, or set {SHIPPED_MODELS[name_or_path]} to its directory")
        return path, None
    if name_or_path in NAMED_MODELS:
        named = NAMED_MODELS[name_or_path]
        local = os.environ.get(named.env)
        if local:
            return _checked_dir(Path(local), f"{name_or_path} ({named.env})"), named.spec
        return _from_hf_cache(named.repo, name_or_path), named.spec
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _checked_dir(path, name_or_path), None
    if "/" in name_or_path and not path.exists() and name_or_path.count("/") == 1:
        return _from_hf_cache(name_or_path), None
    raise ModelNotFoundError(f"no model {name_or_path!r}: use `shapes`, `shapes-dit`, "
                             f"{', '.join(f'`{name}`' for name in NAMED_MODELS)}, a diffusers model directory or a "
                             "Hugging Face id that is in the local cache")


def _has_denoiser(path: Path) -> bool:
    return any((path / part).is_dir() for part in DENOISERS.values())


def _checked_dir(path: Path, name: str) -> Path:
    missing = [] if _has_denoiser(path) else ["unet"]
    missing += [p for p in ("text_encoder", "tokenizer", "scheduler") if not (path / p).is_dir()]
    if missing:
        raise ModelNotFoundError(f"{path} is not a diffusers model directory for {name} (missing "
                                 f"{', '.join(missing)}/); it needs unet/ (or a DiT's transformer/), text_encoder/, "
                                 "tokenizer/, scheduler/")
    return path


def cached_snapshot(repo_id: str, cache_dir: str | None = None) -> Path | None:
    """The local Hugging Face cache's snapshot directory of `repo_id`, or None when it is not there (never fetches)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def _from_hf_cache(repo_id: str, name: str | None = None) -> Path:
    """`repo_id`'s snapshot in the local Hugging Face cache; `name` is the model name it was asked for by, whose
    variable the error offers as the other way."""
    from huggingface_hub import constants

    path = cached_snapshot(repo_id)
    if path is None:
        named = NAMED_MODELS.get(name or "")
        gated = (f" (a gated repo: accept its licence on https://huggingface.co/{repo_id} and log in with "
                 "`huggingface-cli login` first)" if named and named.gated else "")
        other = (f"set {named.env} to a diffusers directory of it" if named else
                 "pass --model PATH to a diffusers directory")
        raise ModelNotFoundError(
            f"{repo_id} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}): on a machine with network "
            f"run `huggingface-cli download {repo_id}`{gated} and copy the cache here, or {other}")
    return _checked_dir(path, repo_id)


def _spec_for(path: Path, builtin: ModelSpec | None) -> ModelSpec:
    if builtin is not None:
        return builtin
    if (path / SPEC_FILE).exists():
        return ModelSpec.load(path)
    backbone = pipeline_backbone(path)
    if backbone is not None:  # SD3 or FLUX: everything the atlas needs is in its configs
        return joint_spec(path, backbone)
    if (path / "vae").is_dir():  # an SD-v1-like latent model: same hook points, our defaults
        return replace(SD14_SPEC, name=path.name)
    raise ModelNotFoundError(f"{path} has no vae/ and no {SPEC_FILE}; write a {SPEC_FILE} naming its hook points")


def check_model(name_or_path: str) -> tuple[Path, ModelSpec]:
    """Find a model and check, from its files alone (nothing is loaded), that everything `load_model` reads is on
    this machine: configs and weights of the denoiser, text encoder and (latent models) VAE, the tokenizer's and the
    scheduler's configs. Returns (directory, spec); raises ModelNotFoundError saying what to download where."""
    path, builtin = resolve_model_dir(name_or_path)
    spec = _spec_for(path, builtin)
    weighted = [DENOISERS[spec.backbone], "text_encoder"]
    tokenizers = ["tokenizer"]
    if spec.backbone in COMPONENTS:  # SD3 / FLUX: every encoder its model_index.json lists
        weighted = listed(path, list(COMPONENTS[spec.backbone]))
        tokenizers = listed(path, list(TOKENIZERS[spec.backbone]))
    elif builtin is not None or (path / "vae").is_dir():  # a built-in spec is a latent model: no VAE, no images
        weighted.append("vae")
    what = COMPONENTS.get(spec.backbone, {})
    missing = [f"{part}/config.json" for part in weighted if not (path / part / "config.json").is_file()]
    missing += [f"{part}/ weights (.safetensors or .bin)" for part in weighted
                if not any((path / part).glob("*.safetensors")) and not any((path / part).glob("*.bin"))]
    missing = [f"{item} ({what[item.split('/')[0]]})" if item.split("/")[0] in what else item for item in missing]
    missing += [name for name in [f"{t}/tokenizer_config.json" for t in tokenizers] +
                ["scheduler/scheduler_config.json"] if not (path / name).is_file()]
    if missing:
        repo = _hub_repo(name_or_path)
        fix = (f"download it again with `huggingface-cli download {repo}` on a machine with network and copy "
               "~/.cache/huggingface here" if repo else
               "copy the complete diffusers model there (every component with its config and weights)")
        raise ModelNotFoundError(f"{name_or_path} at {path} lacks {', '.join(missing)}: {fix}")
    return path, spec


def _hub_repo(name_or_path: str) -> str | None:
    """The Hugging Face id a model name is read from the local cache under, or None for a directory."""
    if name_or_path in NAMED_MODELS:
        named = NAMED_MODELS[name_or_path]
        return None if os.environ.get(named.env) else named.repo
    return None if Path(name_or_path).expanduser().is_dir() or name_or_path in SHIPPED_MODELS else name_or_path


def denoiser_class(backbone: str) -> type:
    """The diffusers class of a backbone's denoiser: UNet2DConditionModel or (dit) PixArtTransformer2DModel."""
    from diffusers import PixArtTransformer2DModel, UNet2DConditionModel

    return PixArtTransformer2DModel if backbone == "dit" else UNet2DConditionModel


def load_model(name_or_path: str = "shapes", device: str | None = None, dtype: str | None = None) -> TextToImageModel:
    """Load tokenizer, text encoder, denoiser (the UNet or the DiT its spec names), DDIM scheduler and (if present)
    VAE, ready for sampling; SD3 and FLUX directories with their text encoders and flow-matching scheduler. Loads in
    one process run one at a time (`atlas.models.loading`)."""
    with LOADING:
        return _load_model(name_or_path, device, dtype)


def _load_model(name_or_path: str, device: str | None, dtype: str | None) -> TextToImageModel:
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import AutoTokenizer, CLIPTextModel
    from transformers.utils import logging

    logging.disable_progress_bar()  # loading a local model takes a second; its bar would clutter every command

    path, spec = check_model(name_or_path)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype, spec.backbone)
    if spec.backbone in COMPONENTS:
        return _load_joint(path, spec, dev, dt, name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", torch_dtype=dt)
    # diffusers' low-memory loading needs `accelerate`; without it, ask for the plain path instead of a warning
    lean = importlib.util.find_spec("accelerate") is not None
    part = DENOISERS[spec.backbone]
    denoiser = denoiser_class(spec.backbone).from_pretrained(path / part, torch_dtype=dt, low_cpu_mem_usage=lean)
    scheduler = DDIMScheduler.from_pretrained(path / "scheduler")
    vae = (AutoencoderKL.from_pretrained(path / "vae", torch_dtype=dt, low_cpu_mem_usage=lean)
           if (path / "vae").is_dir() else None)
    if vae is not None:
        spec = replace(spec, resolution=native_resolution(denoiser.config, vae.config))
        vae.to(dev).eval()
        vae.requires_grad_(False)
    for module in (text_encoder, denoiser):
        module.to(dev).eval()
        module.requires_grad_(False)
    return TextToImageModel(spec=spec, tokenizer=tokenizer, text_encoder=text_encoder, scheduler=scheduler, vae=vae,
                            device=dev, dtype=dt, path=path, source=name_or_path, **{"unet": None, part: denoiser})


def _load_joint(path: Path, spec: ModelSpec, dev: object, dt: object, source: str) -> TextToImageModel:
    """An SD3 or FLUX directory: its transformer, VAE, text encoders, tokenizers and flow-matching scheduler."""
    from diffusers import AutoencoderKL

    from atlas.models.flow import FlowMatchScheduler
    from atlas.models.mmdit import joint_model, load_parts

    lean = importlib.util.find_spec("accelerate") is not None
    vae = AutoencoderKL.from_pretrained(path / "vae", torch_dtype=dt, low_cpu_mem_usage=lean)
    return joint_model(load_parts(path, spec.backbone, dt, lean), vae,
                       FlowMatchScheduler.from_pretrained(path / "scheduler"), spec, dev, dt, path, source)
