"""Presets: what each kind of atlas brings to the stages, by name. The one place that knows the shapes world.

    shapes  the embedded model, its captions (with their splits), its classical annotator
    sd14    Stable Diffusion v1.4 with the paper's recipe, prompts from a file, Grounded-SAM

No preset sets sampler steps or guidance: they are the model's own (`ModelSpec.default_steps` and
`default_guidance`, the defaults of each model's published pipeline), so `--preset sd14 --model PATH` samples an
SD3 or FLUX directory as its own pipeline does. A preset's uncond branch is dropped, with a note, on a model without
classifier-free guidance (FLUX: its uncond pass steers no image); asking for uncond there (--branches, --keys) is a
one-line error.

Kept free of heavy imports (the CLI reads the names at startup); each backend loads when asked for.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from atlas.errors import BadInputError
from atlas.pipeline.config import BuildConfig

if TYPE_CHECKING:
    from atlas.annotate.base import Annotator
    from atlas.annotate.config import AnnotateConfig


@dataclass(frozen=True)
class Preset:
    """What one kind of atlas brings to a build."""

    values: BuildConfig
    """What the build's unset (None) options become; an option None here too is left to its stage's default."""
    prompts_needed: bool = False
    """Prompts must come from a file (--prompts): the shapes world's captions fit only the shapes model."""


PRESETS = {
    "shapes": Preset(BuildConfig(model="shapes", n_images=640, annotator="shapes", branches=["cond"], threads=1)),
    # The paper's recipe (docs/PAPER.md): k = 10 (each key's primary SAE) and k = 20 (its variant "k20").
    "sd14": Preset(BuildConfig(model="sd14", n_images=1000, annotator="grounded-sam", blocks=["down", "mid", "up"],
                               t=[1.0, 0.5, 0.0], branches=["cond", "uncond"], k=[10, 20],
                               latents="4x", lr=1e-4, sae_batch_size=4096, epochs=1.0, sae_tokens=0),
                   prompts_needed=True),
}
SHAPES_MODELS = ("shapes", "shapes-dit")
"""Spec names of the models trained on the shapes world (atlas.shapes.model): the ones its captions and its
annotator fit."""
ANNOTATOR_NAMES = ("shapes", "grounded-sam")


def _shapes_annotator(**options: object) -> Annotator:
    from atlas.shapes.backend import ShapesAnnotator

    return ShapesAnnotator(**options)


def _grounded_sam(**options: object) -> Annotator:
    from atlas.annotate.grounded_sam import GroundedSamAnnotator

    return GroundedSamAnnotator(**options)


_ANNOTATORS: dict[str, Callable[..., Annotator]] = {"shapes": _shapes_annotator, "grounded-sam": _grounded_sam}


def _annotator_factory(name: str) -> Callable[..., Annotator]:
    if name not in _ANNOTATORS:
        raise BadInputError(f"unknown annotator {name!r}; expected one of {', '.join(ANNOTATOR_NAMES)}")
    return _ANNOTATORS[name]


def get_annotator(name: str, **options: object) -> Annotator:
    """The annotator backend called `name`, built with `options` (its constructor's keyword arguments)."""
    return _annotator_factory(name)(**options)


def annotator_options(name: str, config: AnnotateConfig) -> dict[str, object]:
    """The constructor options of annotator `name` from the annotate stage's config (shapes takes none)."""
    if name != "grounded-sam":
        return {}
    return {"grounding_dino": config.grounding_dino, "sam": config.sam, "tagger": config.tagger,
            "tagger_options": {"weights": config.tagger_weights} if config.tagger_weights else {},
            "box_threshold": config.box_threshold, "text_threshold": config.text_threshold}


ANNOTATOR_FILE = "annotator.json"
"""Inside `annotations/<annotator>/` of an atlas: the annotate stage's options, so that later commands (the edit
judge) rebuild the annotator that found the atlas's objects."""


def annotator_for_atlas(name: str, config: AnnotateConfig, atlas_dir: str | Path) -> Annotator:
    """The annotator `name` with `config` for annotating the atlas at `atlas_dir`, its options recorded there
    (checkpoint directories made absolute, so the record holds from any working directory)."""
    from atlas.annotate.run import CELLS_DIR

    backend = get_annotator(name, **annotator_options(name, config))
    local = {f.name: str(Path(v).resolve()) for f in fields(config) if isinstance(v := getattr(config, f.name), str)
             and f.name in ("grounding_dino", "sam", "tagger_weights") and Path(v).exists()}
    where = Path(atlas_dir) / CELLS_DIR / name
    where.mkdir(parents=True, exist_ok=True)
    (where / ANNOTATOR_FILE).write_text(json.dumps(asdict(config) | local, indent=2))
    return backend


def recorded_annotator(name: str, atlas_dir: str | Path) -> Annotator:
    """The annotator `name` with the options the atlas recorded when it was annotated (its defaults if none)."""
    from atlas.annotate.config import AnnotateConfig
    from atlas.annotate.run import CELLS_DIR

    record = Path(atlas_dir) / CELLS_DIR / name / ANNOTATOR_FILE
    try:
        known = {f.name for f in fields(AnnotateConfig)}
        config = AnnotateConfig(**{k: v for k, v in json.loads(record.read_text()).items() if k in known})
    except FileNotFoundError:
        config = AnnotateConfig()
    except (ValueError, TypeError) as err:
        raise BadInputError(f"{record} is not a readable annotator record ({err}); re-run `atlas annotate`") from None
    return get_annotator(name, **annotator_options(name, config))


def check_annotator(name: str, config: AnnotateConfig) -> None:
    """Raise the one-line error a missing checkpoint or package of annotator `name` would raise when built, from
    files alone (no weights load): Grounding DINO, SAM and the tagger's for grounded-sam."""
    _annotator_factory(name)
    if name == "grounded-sam":
        from atlas.annotate.grounded_sam import check_checkpoints
        from atlas.annotate.taggers import check_tagger

        check_checkpoints(config.grounding_dino, config.sam)
        check_tagger(config.tagger, config.tagger_weights)


def shapes_captions(n: int, split: str | None = None, seed: int = 0) -> list[str]:
    """Captions of the shapes world (a build's prompts when no prompt file is given)."""
    from atlas.shapes.world import captions

    return captions(n, split=split, seed=seed)
