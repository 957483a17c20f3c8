"""`atlas build`: every stage from prompts to a queryable atlas, resumable stage by stage.

    capture   generate images, record delta at the hooked blocks and timesteps   <atlas>/activations/
    train     TopK SAEs per (block, t, branch), one per k                          <atlas>/saes/
    encode    sparse codes, SAEs, concept statistics, FAISS                        codes/, index/
    annotate  objects and their grid masks                                         masks/, annotations/
    link      the concept dictionary (concept_labels, best labels)                 catalog
    evolve    concept trajectories over t and lineage across t                     catalog
    report    the paper's tables and plots                                         report/

Each stage skips the work it finds done, so re-running the same command after an interruption
continues where it stopped and a finished atlas is not rebuilt. Capture and encode run their batches,
and train its SAEs, on the given executor (atlas.pipeline.executor: this process, or Ray actors); the
other stages run here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from copy import copy
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from atlas.annotate.run import annotate_atlas
from atlas.capture import ActivationSet, prepare_capture
from atlas.capture.config import CaptureConfig, cond_only
from atlas.dictionary.config import LinkConfig
from atlas.dictionary.run import DICTIONARY_SPLITS, link_atlas
from atlas.errors import BadInputError, UnavailableError
from atlas.evolution.config import EvolveConfig
from atlas.models import check_model
from atlas.models.spec import ModelSpec
from atlas.pipeline.config import BuildConfig, SaeJobConfig
from atlas.pipeline.encode import encode_atlas
from atlas.pipeline.evolution import STAGE as EVOLVE_STAGE
from atlas.pipeline.evolution import evolve_atlas
from atlas.pipeline.executor import Executor
from atlas.pipeline.generate import read_prompts
from atlas.pipeline.presets import (
    PRESETS,
    SHAPES_MODELS,
    Preset,
    annotator_for_atlas,
    check_annotator,
    shapes_captions,
)
from atlas.pipeline.train import SaeReport, ev_table, train_all
from atlas.progress import logger
from atlas.store import Atlas, default_path
from atlas.store.atlas import refuse_foreign
from atlas.store.check import check_atlas
from atlas.store.ids import branch_part

STAGES = ("capture", "train", "encode", "annotate", "link", "evolve", "report")


@dataclass
class BuildResult:
    path: Path
    seconds: dict[str, float]
    sae_reports: list[SaeReport]


def resolve(config: BuildConfig) -> tuple[BuildConfig, Preset]:
    """`config` with every unset (None) option that its preset sets taken from the preset: a user's value wins."""
    if config.preset not in PRESETS:
        raise BadInputError(f"unknown preset {config.preset!r}; use one of {', '.join(PRESETS)}")
    preset = PRESETS[config.preset]
    taken = {f.name: copy(getattr(preset.values, f.name)) for f in fields(BuildConfig)
             if getattr(config, f.name) is None and getattr(preset.values, f.name) is not None}
    return replace(config, **taken), preset


def check_build(config: BuildConfig, say: Callable[[str], None] = logger.info) -> BuildConfig:
    """Resolve `config` (against its preset, then its model: `for_model`) and check, in seconds and without loading
    any weights, what the stages will need: the prompts, the model's files, the annotator's checkpoints. Raises the
    one-line error of the first gap."""
    given = config
    config, preset = resolve(config)
    if preset.prompts_needed and not config.prompts:
        raise BadInputError(f"--preset {config.preset} needs --prompts FILE (one prompt per line)")
    if config.prompts:
        read_prompts(config.prompts)
    _, spec = check_model(config.model)
    config = for_model(config, given, spec, say)
    if spec.name not in SHAPES_MODELS:
        if not config.prompts:
            raise BadInputError(f"--model {config.model} is not a shapes model, so the shapes world's captions do "
                                "not fit it: give --prompts FILE (one prompt per line)")
        if config.annotator == "shapes":
            raise BadInputError(f"the shapes annotator reads only shapes-world images, not those of --model "
                                f"{config.model}: pass --annotator grounded-sam (or --preset sd14)")
    check_annotator(config.annotator, config.annotate)
    capture_config(config).selected_keys()
    size_notes(config)
    if not config.any_directory:
        refuse_foreign(Path(config.atlas) if config.atlas else default_path())
    return config


def for_model(config: BuildConfig, given: BuildConfig, spec: ModelSpec,
              say: Callable[[str], None] = logger.info) -> BuildConfig:
    """`config` (resolved against its preset) with what its model decides: on a model without classifier-free
    guidance (FLUX), cond alone when the user named no branch (a note to `say` tells why); an uncond branch the user
    asked for there is a one-line error. Steps and guidance stay unset unless given (no preset sets them): capture
    takes the model's own, as a capture run on its own does, so the two resume each other."""
    if spec.cfg:
        return config
    if given.branches is None and given.keys is None:
        config = replace(config, branches=cond_only(config.branches or CaptureConfig().branches, config.model, say))
    if any(branch == "uncond" for _, _, branch in capture_config(config).selected_keys()):
        raise BadInputError(f"--model {config.model} ({spec.backbone}) samples without classifier-free guidance, so "
                            "it has no uncond branch: capture cond alone (drop uncond from --branches and --keys)")
    return config


def size_notes(config: BuildConfig) -> list[str]:
    """What a build of `config`'s prompts is too small for, said before any stage runs: an error when no image can
    name a concept (link needs train or dictionary images), else one line per stage that will be skipped."""
    from atlas.capture.splits import split_of

    prompts = build_prompts(config)
    splits = [split_of(p) for p in prompts]
    size = f"--n-images {len(prompts)}" if not config.prompts else f"{len(prompts)} prompts of {config.prompts}"
    if not any(s in DICTIONARY_SPLITS for s in splits):
        raise BadInputError(f"{size} holds no image of the train or dictionary split, so no concept could be linked "
                            f"to a label: give more prompts")
    if "test" in splits:
        return []
    more = _first_test_prompt(config)
    return [f"note: {size} holds no image of the test split, so the report will not score layout prediction"
            + (f" (--n-images {more} would)" if more else "")]


def _first_test_prompt(config: BuildConfig) -> int | None:
    """The smallest --n-images whose prompts hold a test-split image (None when none of the first 1,000 does)."""
    from atlas.capture.splits import split_of

    prompts = read_prompts(config.prompts) if config.prompts else shapes_captions(1_000, split=None,
                                                                                  seed=config.seed)
    return next((i + 1 for i, p in enumerate(prompts) if split_of(p) == "test"), None)


def capture_config(config: BuildConfig) -> CaptureConfig:
    """The capture stage's options: the build's where set, else capture's own defaults."""
    return CaptureConfig(**_set(blocks=config.blocks, t=config.t, branches=config.branches, keys=config.keys,
                                dtype=config.dtype, steps=config.steps, guidance=config.guidance), seed=config.seed)


def sae_job(config: BuildConfig) -> SaeJobConfig:
    """The train stage's options: the build's where set, else `atlas train`'s defaults."""
    return SaeJobConfig(**_set(k=config.k, sae_type=config.sae_type, latents=config.latents, lr=config.lr,
                               batch_size=config.sae_batch_size, epochs=config.epochs, min_tokens=config.sae_tokens),
                        device=config.device)


def _set(**values: object) -> dict[str, object]:
    return {name: value for name, value in values.items() if value is not None}


def build_prompts(config: BuildConfig) -> list[str]:
    if config.prompts:
        return read_prompts(config.prompts)[: config.n_images]
    return shapes_captions(config.n_images, split=None, seed=config.seed)


def build_atlas(config: BuildConfig, progress: bool = True, say: Callable[[str], None] = logger.info,
                executor: Executor | None = None) -> BuildResult:
    """Run (or resume) every stage; `say` receives one line per stage. Everything the stages need is checked first
    (`check_build`), so a missing checkpoint or prompt file stops the build before it starts; then the capture's
    disk plan is said, and a capture the disk cannot hold stops it too."""
    from atlas.models import load_model

    config = check_build(config, say)
    if config.threads:
        torch.set_num_threads(config.threads)
    for note in size_notes(config):
        say(note)
    root = Path(config.atlas) if config.atlas else default_path()
    acts_dir, saes_dir = root / "activations", root / "saes"
    planned = [prepare_capture(load_model(config.model, device=config.device), build_prompts(config), acts_dir,
                               capture_config(config))]
    say(planned[0].plan.format())
    planned[0].plan.check()
    atlas = Atlas.create(root)
    writer = atlas.writer()
    seconds: dict[str, float] = {}
    reports: list[SaeReport] = []

    def stage(name: str, run: Callable[[], str]) -> None:
        start = time.perf_counter()
        say(f"[{STAGES.index(name) + 1}/{len(STAGES)}] {name} ...")
        summary = run()
        seconds[name] = time.perf_counter() - start
        say(f"      {summary} ({seconds[name]:.0f} s)")

    def run_capture() -> str:
        planned.pop().run(progress=progress, executor=executor)  # popped: the model is freed once captured
        return f"{len(ActivationSet(acts_dir).prompts)} images -> {acts_dir}"

    def run_train() -> str:
        reports.extend(train_all(ActivationSet(acts_dir), saes_dir, sae_job(config), progress=progress,
                                 executor=executor, say=lambda line: say(f"      {line}")))
        return f"{len(reports)} SAEs -> {saes_dir}\n" + ev_table(reports)

    def run_encode() -> str:
        written = encode_atlas(writer, ActivationSet(acts_dir), saes_dir, progress=progress, executor=executor)
        return f"{sum(written.values()):,} codes written ({len(written)} SAEs encoded now)"

    def run_annotate() -> str:
        annotator = annotator_for_atlas(config.annotator, config.annotate, root)
        return f"{annotate_atlas(writer, annotator, progress=progress)} objects found"

    def run_link() -> str:
        stored = link_atlas(writer, LinkConfig(), progress=progress)
        return f"{sum(stored.values())} (concept, label) pairs pass the IoU rule"

    def run_evolve() -> str:
        if atlas.stage_done(EVOLVE_STAGE):
            return "trajectories and lineage already stored"
        found = evolve_atlas(writer, EvolveConfig(), ActivationSet(acts_dir), progress=progress)
        return f"{found.trajectories:,} trajectory rows, {found.lineage:,} lineage links ({found.images} images)"

    def run_report() -> str:
        from atlas.report.report import build_report

        figures = build_report(atlas, root / "report")
        first = [x for x in figures["layout"] if x["method"] == "weighted" and x["t"] == 1.0]
        first = "; layout IoU at t=1.0: " + ", ".join(
            f"{x['block']} {branch_part(x['branch'], x['variant'])} {x['iou']:.3f} (baseline {x['baseline_iou']:.3f})"
            for x in first
        ) if first else ""
        note = f"; layout prediction: {figures['layout_note']}" if figures["layout_note"] else ""
        return f"{root / 'report' / 'index.html'}{first}{note}"

    with atlas, writer:
        for name, run in zip(STAGES, (run_capture, run_train, run_encode, run_annotate, run_link, run_evolve,
                                    run_report)):
            stage(name, run)
        writer.catalog.mark_stage("build", {"preset": config.preset, "model": config.model,
                                            "n_images": config.n_images})
    found = check_atlas(root, quick=True)  # a resumed build skips finished stages: damage there is not redone
    if not found.ok:
        raise UnavailableError(f"the stages are done, but {len(found.problems)} problem(s) remain, first: "
                               f"{found.problems[0]} (`atlas check --atlas {root}` lists them)")
    return BuildResult(root, seconds, reports)
