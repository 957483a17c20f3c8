"""The diffusion SAEBench: per SAE of an atlas, figures on held-out activations and the diffusion counterpart of
"loss recovered", and an L0 sweep per SAE type.

On activations (atlas.sae.bench_metrics, on the held-out split of the capture): L0, explained variance, MSE,
cosine, relative reconstruction bias, dead / alive fraction, the counts of latents firing on > 1 % and > 10 % of
positions, the decoder's max cosine.

Spliced: held-out captions are generated three ways -- clean; with the block's update of the SAE's branch replaced
by the SAE's reconstruction on the steps of the SAE's window (the paper's windows, each served by the SAE of the
nearest t, atlas.edit.core); and with that update zeroed on the same steps (the ablation). What splicing loses is
the change from the clean image: pixel change (mean |difference| in [0, 1]), LPIPS, the share of the clean image's
layout kept (mean IoU of each object the shapes annotator finds in the clean image with the same-label object of
the spliced one, 0 when gone), and the shapes eval figures. `lpips_recovered` = 1 - LPIPS(spliced) /
LPIPS(ablated) is SAEBench's loss recovered: 1 when splicing changes nothing, 0 when it is as bad as no update.

Results go to <atlas>/report/saebench.json (read by `atlas report`); sweep SAEs to
<atlas>/saes/sweep/<types>_k<ks>/, where the same sweep run again finds them trained.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from atlas.capture import ActivationSet
from atlas.errors import NotFoundError
from atlas.files import atomic_write
from atlas.models.hooks import Hooks, StepInfo
from atlas.pipeline.config import SaeBenchConfig, SaeJobConfig
from atlas.pipeline.presets import SHAPES_MODELS
from atlas.pipeline.train import held_out_split, train_one
from atlas.report.saebench import BENCH_FILE
from atlas.sae import Sae, bench_metrics
from atlas.store import SaeInfo, open_atlas
from atlas.store.ids import sae_name

SWEEP_DIR = "sweep"
"""The sweep's SAEs, in the atlas's SAE directory."""
SHAPES_FIGURES = ("objects_present", "no_extra_objects", "positions_respected", "style_respected")


@dataclass
class Splice:
    """A hook handler: the update of `branch`'s half of the CFG batch becomes the SAE's reconstruction of it, or
    zero without an SAE (the ablation)."""

    sae: Sae | None
    branch: str

    def __call__(self, block: str, step: StepInfo, delta: torch.Tensor) -> torch.Tensor:
        n, channels, h, w = delta.shape
        rows = slice(n // 2, n) if self.branch == "cond" else slice(0, n // 2)
        x = delta[rows]
        change = torch.zeros_like(delta)
        if self.sae is None:
            change[rows] = -x
            return change
        flat = x.permute(0, 2, 3, 1).reshape(-1, channels).to(self.sae.device, self.sae.dtype)
        with torch.no_grad():
            code = self.sae.encode(flat)
            x_hat = self.sae.decode(code.top_acts, code.top_indices)
        change[rows] = x_hat.reshape(x.shape[0], h, w, channels).permute(0, 3, 1, 2).to(delta) - x
        return change


def window_steps(t: float, ts: list[float], n_steps: int) -> list[int]:
    """The denoising steps an SAE of `t` serves among SAEs of `ts`: those of the paper's windows whose nearest SAE
    it is."""
    from atlas.edit.core import WINDOWS

    return sorted({s for window in WINDOWS.values() if window.sae_t(ts) == t for s in window.steps(n_steps)})


def layout_kept(clean: list, other: list) -> float:
    """Mean over the objects of the clean images' annotations of the best mask IoU with a same-label object of the
    other image (0 when none is left); nan when the clean images hold no object."""
    scores = []
    for before, after in zip(clean, other):
        for obj in before.objects:
            same = [o.mask for o in after.objects if o.label == obj.label]
            scores.append(max((float((obj.mask & m).sum() / max((obj.mask | m).sum(), 1)) for m in same), default=0.0))
    return float(np.mean(scores)) if scores else math.nan


def image_change(clean: np.ndarray, other: np.ndarray, lpips: object | None) -> dict[str, float]:
    """Mean |pixel difference| (0-1) and mean LPIPS (nan without a scorer) between image pairs."""
    pixel = float(np.abs(clean.astype(np.float64) - other.astype(np.float64)).mean() / 255.0)
    dist = float(np.mean([lpips.distance(a, b) for a, b in zip(clean, other)])) if lpips is not None else math.nan
    return {"pixel_change": pixel, "lpips": dist}


def recovered(spliced: float, ablated: float) -> float:
    """1 - spliced / ablated: the share of what zeroing the update loses that splicing the SAE in does not."""
    return 1.0 - spliced / ablated if ablated > 0 else math.nan


@dataclass
class Subject:
    """One SAE to bench and where it sits."""

    name: str
    sae: Sae
    block: str
    t: float
    branch: str


class SplicedBench:
    """Generates the held-out captions clean once, ablated once per (block, window, branch), spliced per SAE."""

    def __init__(self, model: object, spec: dict, captions: list[str], scenes: list | None, config: SaeBenchConfig,
                 lpips: object | None) -> None:
        from atlas.models.sampler import generate

        self.model, self.captions, self.scenes, self.lpips = model, captions, scenes, lpips
        self.steps = int(spec.get("steps") or model.spec.steps(None))
        self.guidance = spec.get("guidance")
        self.seeds = [config.seed + i for i in range(len(captions))]
        self.batch_size = config.batch_size
        self._generate = generate
        self.clean = self.images(None)
        self.clean_annotations = self.annotate(self.clean)
        self._ablated: dict[tuple, tuple[np.ndarray, dict]] = {}

    def images(self, hooks: Hooks | None) -> np.ndarray:
        return self._generate(self.model, self.captions, self.seeds, self.steps, self.guidance, hooks=hooks,
                              batch_size=self.batch_size)

    def annotate(self, images: np.ndarray) -> list | None:
        if self.scenes is None:
            return None
        from atlas.shapes.annotator import annotate

        return [annotate(image) for image in images]

    def figures(self, annotations: list | None) -> dict[str, float]:
        """The shapes eval figures of generated images (none off the shapes world)."""
        if annotations is None:
            return {}
        from atlas.shapes.evaluate import score

        result = asdict(score(self.scenes, annotations))
        return {name: result[name] for name in SHAPES_FIGURES}

    def measure(self, subject: Subject, ts: list[float]) -> dict[str, float]:
        steps = window_steps(subject.t, ts, self.steps)
        key = (subject.block, tuple(steps), subject.branch)
        if key not in self._ablated:
            ablated = self.images(Hooks().on(subject.block, Splice(None, subject.branch), steps))
            self._ablated[key] = (ablated, image_change(self.clean, ablated, self.lpips))
        _, lost = self._ablated[key]
        spliced = self.images(Hooks().on(subject.block, Splice(subject.sae, subject.branch), steps))
        change = image_change(self.clean, spliced, self.lpips)
        annotations = self.annotate(spliced)
        row = {**change, "lpips_ablated": lost["lpips"], "pixel_change_ablated": lost["pixel_change"],
               "lpips_recovered": recovered(change["lpips"], lost["lpips"]),
               "pixel_recovered": recovered(change["pixel_change"], lost["pixel_change"]),
               "spliced_steps": len(steps)}
        if annotations is not None:
            row["layout_kept"] = layout_kept(self.clean_annotations, annotations)
            row.update({f"spliced_{name}": value for name, value in self.figures(annotations).items()})
        return row


def _held_out_captions(atlas: object, spec: dict, config: SaeBenchConfig) -> tuple[list[str], list | None]:
    """Held-out captions: the shapes world's test-split scenes for a shapes model, else the atlas's test prompts."""
    if spec["name"] in SHAPES_MODELS:
        from atlas.shapes.evaluate import held_out_scenes

        scenes = held_out_scenes(config.spliced_images, config.seed)
        return [scene.caption for scene in scenes], scenes
    prompts = atlas.images("test")["prompt"].to_pylist()[: config.spliced_images]
    if not prompts:
        raise NotFoundError(f"{atlas.root} has no test-split prompts to generate held-out images from; pass "
                            "--spliced-images 0")
    return prompts, None


def _lpips(say: Callable[[str], None]) -> object | None:
    from atlas.edit.judge import JudgeUnavailable
    from atlas.edit.scores import load_lpips

    try:
        return load_lpips("cpu")
    except JudgeUnavailable as err:
        say(f"no LPIPS ({err.message}); pixel change only")
        return None


def bench_subjects(acts: ActivationSet, subjects: list[Subject], ts: dict[tuple[str, str], list[float]],
                   say: Callable[[str], None], spliced: SplicedBench | None) -> list[dict]:
    """Figures on held-out activations and (given `spliced`) spliced generation, one row per subject."""
    held_out = held_out_split(acts)
    rows = []
    for subject in subjects:
        cfg = subject.sae.cfg
        row = {"name": subject.name, "sae_type": cfg.sae_type, "k": cfg.k, "n_latents": cfg.num_latents,
               "scored_on": held_out or "train",
               **bench_metrics(subject.sae, acts.vectors(subject.block, subject.t, subject.branch, held_out))}
        if spliced is not None:
            row.update(spliced.measure(subject, ts[(subject.block, subject.branch)]))
        shown = [name for name in ("pixel_recovered", "lpips_recovered") if not math.isnan(row.get(name, math.nan))]
        say(f"{subject.name}: L0 {row['l0']:.1f}, explained variance {row['explained_variance']:.3f}"
            + "".join(f", {name.replace('_', ' ')} {row[name]:.3f}" for name in shown))
        rows.append(row)
    return rows


def bench_saes(root: str | Path, config: SaeBenchConfig | None = None, say: Callable[[str], None] = print,
               progress: bool = True) -> dict:
    """Bench every SAE of the atlas at `root` (and, with `config.sweep_k`, train and bench the sweep); writes and
    returns the results of <atlas>/report/saebench.json."""
    from atlas.models import load_model

    config = config or SaeBenchConfig()
    root = Path(root)
    if config.threads:
        torch.set_num_threads(config.threads)
    with open_atlas(root) as atlas:
        infos = atlas.saes()
        if not infos:
            raise NotFoundError(f"{root} holds no SAE; build it with `atlas build`")
        chosen = [i for i in infos if i.name == config.sweep_key] if config.sweep_key else \
            [i for i in infos if not i.variant][:1]
        if config.sweep_k and not chosen:  # before any work
            raise NotFoundError(f"no SAE {config.sweep_key!r} in {root}; name one of "
                                f"{', '.join(i.name for i in infos)}")
        spec = atlas.model()
        listed = [r["path"] for r in atlas.query("SELECT path FROM files WHERE kind = 'activations'").to_pylist()]
        acts = ActivationSet(atlas.file_path(listed[0]).parent if listed else root / "activations")
        subjects = [Subject(info.name, Sae.from_pretrained(atlas.file_path(info.path)), info.block, info.t,
                            info.branch) for info in infos]
        ts = {(s.block, s.branch): sorted({i.t for i in infos if (i.block, i.branch) == (s.block, s.branch)})
              for s in subjects}
        spliced = None
        if config.spliced_images:
            captions, scenes = _held_out_captions(atlas, spec, config)
            say(f"generating {len(captions)} held-out captions clean, ablated and with each SAE spliced in")
            spliced = SplicedBench(load_model(spec["source"], device=config.device), spec, captions, scenes, config,
                                   _lpips(say))
        rows = bench_subjects(acts, subjects, ts, say, spliced)
        path = root / "report" / BENCH_FILE
        saved = json.loads(path.read_text()) if path.is_file() else {}
        result = {**saved, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  "model": spec["name"], "spliced_images": config.spliced_images, "saes": rows,
                  "clean": spliced.figures(spliced.clean_annotations) if spliced else {}}
        if config.sweep_k:
            result["sweep"] = sweep(root, acts, chosen[0], atlas.file_path(chosen[0].path), ts, config, say, spliced,
                                    progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1, default=float) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return result


def sweep(root: Path, acts: ActivationSet, info: SaeInfo, path: Path, ts: dict[tuple[str, str], list[float]],
          config: SaeBenchConfig, say: Callable[[str], None], spliced: SplicedBench | None,
          progress: bool) -> list[dict]:
    """Train one SAE per (type, k) of the sweep on the activations of `info`'s key (SAE directory `path`), as large
    as that SAE and on as many positions, and bench each: the frontier of L0 against explained variance and spliced
    quality."""
    trained = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").is_file() else {}
    tokens = config.sweep_tokens or int(trained.get("train", {}).get("n_tokens", 0))
    job = SaeJobConfig(k=config.sweep_k, sae_type=config.sweep_types, latents=str(info.n_latents), epochs=1e-9,
                       min_tokens=tokens, device=config.device)
    say(f"sweep: {len(job.saes())} SAEs on {sae_name(info.block, info.t, info.branch)}, {tokens} positions each")
    out = root / "saes" / SWEEP_DIR / f"{'-'.join(job.sae_type)}_k{'-'.join(map(str, job.k))}"  # a rerun keeps them
    reports = train_one(acts, info.block, info.t, info.branch, out, job, progress)
    subjects = [Subject(f"{r.sae_type} k={r.k}", Sae.from_pretrained(r.path), info.block, info.t, info.branch)
                for r in reports]
    return bench_subjects(acts, subjects, ts, say, spliced)
