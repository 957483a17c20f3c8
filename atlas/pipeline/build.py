"""`atlas build`: every stage from prompts to a queryable atlas, resumable stage by stage.

    capture   generate images, record delta at the hooked blocks and timesteps   <atlas>/activations/
    train     one TopK SAE per (block, t, branch)                                  <atlas>/saes/
    encode    sparse codes, SAEs, concept statistics, FAISS                        codes/, index/
    annotate  objects and their grid masks                                         masks/, annotations/
    link      the concept dictionary (concept_labels, best labels)                 catalog
    report    the paper's tables and plots                                         report/

Each stage skips the work it finds done, so re-running the same command after an interruption
continues where it stopped and a finished atlas is not rebuilt. Capture and encode run their batches
on the given executor (atlas.pipeline.executor: this process, or Ray actors); the other stages run here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from atlas.annotate.run import annotate_atlas
from atlas.capture import ActivationSet, capture
from atlas.capture.config import CaptureConfig
from atlas.dictionary.config import LinkConfig
from atlas.dictionary.run import link_atlas
from atlas.errors import BadInputError
from atlas.pipeline.config import BuildConfig, SaeJobConfig
from atlas.pipeline.encode import encode_atlas
from atlas.pipeline.executor import Executor
from atlas.pipeline.presets import PRESETS, Preset, shapes_captions
from atlas.pipeline.train import SaeReport, ev_table, train_all
from atlas.store import Atlas, default_path

STAGES = ("capture", "train", "encode", "annotate", "link", "report")


@dataclass
class BuildResult:
    path: Path
    seconds: dict[str, float]
    sae_reports: list[SaeReport]


def resolve(config: BuildConfig) -> tuple[BuildConfig, Preset]:
    if config.preset not in PRESETS:
        raise BadInputError(f"unknown preset {config.preset!r}; use one of {', '.join(PRESETS)}")
    preset = PRESETS[config.preset]
    config = replace(config, model=config.model or preset.model, n_images=config.n_images or preset.n_images,
                     annotator=config.annotator or preset.annotator)
    if preset.prompts_needed and not config.prompts:
        raise BadInputError(f"--preset {config.preset} needs --prompts FILE (one prompt per line)")
    return config, preset


def build_prompts(config: BuildConfig) -> list[str]:
    from atlas.pipeline.generate import read_prompts

    if config.prompts:
        return read_prompts(config.prompts)[: config.n_images]
    return shapes_captions(config.n_images, split=None, seed=config.seed)


def build_atlas(config: BuildConfig, progress: bool = True, say: Callable[[str], None] = print,
                executor: Executor | None = None) -> BuildResult:
    """Run (or resume) every stage; `say` receives one line per stage."""
    config, preset = resolve(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    root = Path(config.atlas) if config.atlas else default_path()
    acts_dir, saes_dir = root / "activations", root / "saes"
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
        from atlas.models import load_model

        model = load_model(config.model, device=config.device)
        capture_config = CaptureConfig(blocks=list(preset.blocks), t=list(preset.t), branches=list(config.branches),
                                       steps=config.steps, guidance=config.guidance, seed=config.seed)
        capture(model, build_prompts(config), acts_dir, capture_config, progress=progress, executor=executor)
        return f"{len(ActivationSet(acts_dir).prompts)} images -> {acts_dir}"

    def run_train() -> str:
        job = SaeJobConfig(k=config.k, latents=config.latents, min_tokens=config.sae_tokens, device=config.device)
        reports.extend(train_all(ActivationSet(acts_dir), saes_dir, job, progress=progress))
        return f"{len(reports)} SAEs -> {saes_dir}\n" + ev_table(reports)

    def run_encode() -> str:
        written = encode_atlas(writer, ActivationSet(acts_dir), saes_dir, progress=progress, executor=executor)
        return f"{sum(written.values()):,} codes written ({len(written)} SAEs encoded now)"

    def run_annotate() -> str:
        from atlas.pipeline.presets import get_annotator

        return f"{annotate_atlas(writer, get_annotator(config.annotator), progress=progress)} objects found"

    def run_link() -> str:
        stored = link_atlas(writer, LinkConfig(), progress=progress)
        return f"{sum(stored.values())} (concept, label) pairs pass the IoU rule"

    def run_report() -> str:
        from atlas.report.report import build_report

        figures = build_report(atlas, root / "report")
        first = [x for x in figures["layout"] if x["method"] == "weighted" and x["t"] == 1.0]
        first = "; layout IoU at t=1.0: " + ", ".join(
            f"{x['block']} {x['iou']:.3f} (baseline {x['baseline_iou']:.3f})" for x in first) if first else ""
        return f"{root / 'report' / 'index.html'}{first}"

    with atlas, writer:
        for name, run in zip(STAGES, (run_capture, run_train, run_encode, run_annotate, run_link, run_report)):
            stage(name, run)
        writer.catalog.mark_stage("build", {"preset": config.preset, "model": config.model,
                                            "n_images": config.n_images})
    return BuildResult(root, seconds, reports)
