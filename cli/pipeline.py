"""`atlas train`, `encode`, `annotate`, `link`, `build` and `demo`: the pipeline stages over atlas.pipeline."""

from __future__ import annotations

import click

from atlas.annotate.config import AnnotateConfig
from atlas.capture.config import CaptureConfig
from atlas.cli.common import (
    CONTEXT,
    DEVICE_NAME,
    OUTPUT_DIR,
    OUTPUT_FILE,
    PROMPT,
    FiniteFloat,
    atlas_option,
    model_option,
    one_line_errors,
)
from atlas.cli.options import ChoiceList, build_config, config_options, field_docs
from atlas.cli.store import format_table
from atlas.dictionary.config import LinkConfig
from atlas.layout.config import METHODS
from atlas.pipeline.config import BuildConfig, ExecutorConfig, SaeJobConfig
from atlas.pipeline.online_config import KEEPABLE, OnlineConfig
from atlas.pipeline.presets import ANNOTATOR_NAMES


def _atlas_dir(atlas_dir: str | None) -> str:
    from atlas.store import default_path

    return str(atlas_dir or default_path())


@click.command(context_settings=CONTEXT)
@click.option("--activations", "acts_dir", required=True, type=click.Path(file_okay=False),
              help="Activation directory written by `atlas capture`.")
@click.option("--out", "out_dir", default="saes", show_default=True, type=OUTPUT_DIR,
              help="Where the SAE checkpoints go.")
@click.option("--block", help="Block of the one SAE to train (down, mid, up or a module name).")
@click.option("--t", "t", type=float, help="Timestep of the one SAE to train (e.g. 1.0).")
@click.option("--branch", default="cond", show_default=True, help="CFG branch: cond or uncond.")
@click.option("--all", "train_everything", is_flag=True,
              help="Train one SAE per captured (block, t) of --branch and print the explained-variance table.")
@config_options(SaeJobConfig)
@config_options(ExecutorConfig)
@one_line_errors
def train(acts_dir: str, out_dir: str, block: str | None, t: float | None, branch: str, train_everything: bool,
          **options) -> None:
    """Train TopK sparse autoencoders on captured activations.

    Each SAE trains on the train split and is scored on held-out images; checkpoints are written as
    OUT/<block>/t<t>/<branch>/ (config.json, sae.safetensors, metrics.json, stats.parquet). With several
    --k, the SAEs of one (block, t, branch) train together in one pass over its shards: the first k's is
    the primary SAE, each other k's goes to OUT/<block>/t<t>/<branch>@k<k>/ (the variant k<k>, whose
    concept ids read mid/1.0/cond@k20/412). Training streams the shards through a buffer of
    --buffer-tokens positions and checkpoints every --checkpoint-minutes: when the command runs again,
    finished SAEs are kept (--retrain to redo them) and an interrupted one resumes.

    With --all --executor ray the SAEs train side by side, one at a time on each Ray actor (with
    --device auto, on the actor's GPU when the cluster has GPUs; --num-gpus-per-actor 0.25 puts four
    small ones on a GPU). The actors read the shards from --activations and write to --out themselves,
    so both must be on storage every node shares. The seed gives the same SAE as training here (the
    same weights on the same kind of device and thread count). One line is printed per SAE finished.

    \b
    Examples:
      atlas train --activations acts --block mid --t 1.0 --k 10 --latents 4x
      atlas train --activations acts --all --k 10,20
      atlas train --activations /shared/acts --out /shared/saes --all --executor ray --ray-address auto
    """
    from atlas.capture import ActivationSet
    from atlas.pipeline.executor import open_executor
    from atlas.pipeline.train import ev_table, train_all, train_one

    config = build_config(SaeJobConfig, options)
    executor = open_executor(build_config(ExecutorConfig, options))  # checks the options; Ray starts when used
    acts = ActivationSet(acts_dir)
    if train_everything:
        if block or t is not None:
            raise click.UsageError("--all trains every captured (block, t); leave out --block and --t")
        with executor:
            reports = train_all(acts, out_dir, config, branch=branch, executor=executor,
                                say=lambda line: click.echo(line, err=True))
        click.echo(ev_table(reports))
        return
    if not block or t is None:
        raise click.UsageError("give --block and --t (or --all)")
    if executor.name != "local":
        raise click.UsageError("--executor ray trains with --all; one SAE trains here")
    for report in train_one(acts, block, t, branch, out_dir, config):
        m = report.metrics
        click.echo(f"{block} t={t} {branch} {report.sae_type} k={report.k}: explained variance "
                   f"{m['explained_variance']:.3f}, FVU {m['fvu']:.3f}, L0 {m['l0']:.1f}, dead "
                   f"{m['dead_fraction']:.3f} (on the {report.scored_on} split) -> {report.path}")


@click.command("train-online", context_settings=CONTEXT)
@model_option
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False),
              help="File with one prompt per line  [default: shapes-world captions, for a shapes model]")
@click.option("--n-images", type=click.IntRange(min=1), default=None,
              help="Images to generate: the first N prompts of --prompts, or N shapes-world captions.")
@click.option("--activations", "acts_dir", required=True, type=OUTPUT_DIR,
              help="Activation directory that keeps the held-out images (what `atlas encode --activations` reads).")
@click.option("--out", "out_dir", default="saes", show_default=True, type=OUTPUT_DIR,
              help="Where the SAEs go; the buffer and the checkpoint wait in OUT/online/ while they train.")
@config_options(CaptureConfig, exclude=("batch_size", "seed"))
@click.option("--images-per-batch", default=CaptureConfig.batch_size, show_default=True, type=click.IntRange(min=1),
              help="Images denoised together; the buffer holds whole batches.")
@config_options(OnlineConfig, exclude=("keep",))
@click.option("--keep", type=ChoiceList(*KEEPABLE), default=",".join(KEEPABLE), show_default=True,
              help=field_docs(OnlineConfig)["keep"])
@config_options(SaeJobConfig, exclude=("buffer_tokens",))
@one_line_errors
def train_online(model_name: str, prompts_file: str | None, n_images: int | None, acts_dir: str, out_dir: str,
                 images_per_batch: int, **options) -> None:
    """Train the SAEs while the images are generated, with no dense activation cache on disk.

    Generates the images batch by batch (the seeds and splits `atlas capture` gives them), puts each
    batch's train-split positions into a shuffle buffer on disk of at most --buffer-gb (the oldest batch
    leaves when a new one comes) and trains one TopK SAE per (block, t, branch) on batches mixed from the
    buffered images. Each position is read as often as `atlas train` reads it from a full capture
    (--epochs, --min-tokens). The first lines say the buffer's size against the full cache's.

    The held-out images (--keep) stay in --activations, an activation directory: its test images score
    the SAEs, and `atlas encode --activations` puts them in an atlas that link and report use as usual.
    The training images' activations are never stored, so the atlas has codes of the kept images only;
    for codes of every image, `atlas capture` them and encode that directory instead.

    The SAEs land in OUT/<block>/t<t>/<branch>/ as `atlas train` writes them. Interrupt at any time: the
    same command resumes from the last checkpoint (every --checkpoint-minutes, and on Ctrl-C at the end of
    the batch in hand), generating again the batches the buffer no longer holds.

    \b
    Examples:
      atlas train-online --model shapes --n-images 640 --buffer-gb 0.05 --activations held --out saes
      atlas train-online --model sd14 --prompts coco-200k.txt --steps 50 --guidance 7.5 --branches both \\
          --lr 1e-4 --batch-size 4096 --epochs 1 --min-tokens 0 --buffer-gb 100 --activations held --out saes
      atlas encode --activations held --saes saes --atlas atlas
    """
    from dataclasses import replace

    from atlas.models import load_model
    from atlas.pipeline.generate import read_prompts
    from atlas.pipeline.online import train_online as run_online
    from atlas.pipeline.presets import shapes_captions
    from atlas.pipeline.train import ev_table

    config = build_config(SaeJobConfig, options)
    capture_config = replace(build_config(CaptureConfig, options), seed=config.seed, batch_size=images_per_batch)
    online = build_config(OnlineConfig, options)
    if prompts_file:
        prompts = read_prompts(prompts_file)[:n_images]
    elif n_images:
        prompts = shapes_captions(n_images, split=None, seed=config.seed)
    else:
        raise click.UsageError("give --prompts FILE or --n-images N (shapes-world captions)")
    model = load_model(model_name, device=config.device)
    reports = run_online(model, prompts, acts_dir, out_dir, capture_config, config, online,
                         say=lambda line: click.echo(line, err=True))
    click.echo(ev_table(reports))


@click.command(context_settings=CONTEXT)
@click.option("--activations", "acts_dir", required=True, type=click.Path(file_okay=False),
              help="Activation directory written by `atlas capture`.")
@click.option("--saes", "saes_dir", default="saes", show_default=True, type=click.Path(exists=True, file_okay=False),
              help="SAE checkpoints from `atlas train`.")
@click.option("--branch", type=click.Choice(["cond", "uncond"]),
              help="Only SAEs of this branch (default: every trained one).")
@atlas_option
@config_options(ExecutorConfig)
@one_line_errors
def encode(acts_dir: str, saes_dir: str, branch: str | None, atlas_dir: str | None, **options) -> None:
    """Run the trained SAEs over captured activations and store their top-k codes in an atlas.

    Creates the atlas if needed; adds the model, prompts, images, SAEs (with FAISS indexes) and
    per-concept statistics. Re-running skips SAEs already encoded.

    \b
    Examples:
      atlas encode --activations acts --saes saes --atlas atlas
      atlas encode --activations s3://bucket/acts --saes saes --atlas atlas --executor ray --ray-address auto
    """
    from atlas.capture import ActivationSet
    from atlas.pipeline.encode import encode_atlas, encode_keys
    from atlas.pipeline.executor import open_executor
    from atlas.store import Atlas

    executor = open_executor(build_config(ExecutorConfig, options))  # checks its options; starts nothing yet
    encode_keys(ActivationSet(acts_dir), saes_dir, branch)  # bad inputs create no atlas
    with executor, Atlas.create(_atlas_dir(atlas_dir)) as atlas, atlas.writer() as writer:
        written = encode_atlas(writer, ActivationSet(acts_dir), saes_dir, branch=branch, executor=executor)
    click.echo(f"encoded {len(written)} SAEs ({sum(written.values()):,} codes) into {_atlas_dir(atlas_dir)}")


@click.command(context_settings=CONTEXT)
@click.option("--annotator", default="shapes", show_default=True, type=click.Choice(ANNOTATOR_NAMES),
              help="shapes: the shapes world's classical annotator; grounded-sam: tagger -> Grounding DINO -> SAM.")
@config_options(AnnotateConfig)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Images annotated and stored together (a re-run redoes at most one batch).")
@atlas_option
@one_line_errors
def annotate(annotator: str, batch_size: int, atlas_dir: str | None, **options) -> None:
    """Find the objects in the atlas's images and store them with their masks.

    Masks are kept at image resolution (masks/) and at every SAE grid (annotations/<annotator>/), which
    `atlas link` compares with the concepts' activation maps. Interrupt at any time; re-running resumes.

    \b
    Examples:
      atlas annotate --atlas atlas
      atlas annotate --annotator grounded-sam --grounding-dino IDEA-Research/grounding-dino-tiny \\
                     --sam facebook/sam-vit-base --atlas sd-atlas
    """
    from atlas.annotate.run import annotate_atlas
    from atlas.pipeline.presets import annotator_for_atlas, check_annotator
    from atlas.store import open_writer

    config = build_config(AnnotateConfig, options)
    check_annotator(annotator, config)
    with open_writer(atlas_dir) as writer:
        backend = annotator_for_atlas(annotator, config, writer.root)
        n = annotate_atlas(writer, backend, batch_size=batch_size)
    click.echo(f"stored {n} objects found by {annotator}")


@click.command(context_settings=CONTEXT)
@click.option("--source", default=None, help="Annotator whose objects to use (default: the only one present).")
@config_options(LinkConfig)
@atlas_option
@one_line_errors
def link(source: str | None, atlas_dir: str | None, **options) -> None:
    """Build the concept dictionary: which concepts' activation maps match which objects' masks.

    For every SAE latent and annotated object (dictionary images: every split but test) the latent's
    map is normalised to [0, 1], binarised at --threshold and compared with the object's mask (IoU);
    a concept earns a label when at least --min-hits objects of it match with IoU > --iou.

    \b
    Example:
      atlas link --atlas atlas && atlas search "red circle" --t 1.0 --block mid
    """
    from atlas.dictionary.run import link_atlas
    from atlas.store import open_writer

    config = build_config(LinkConfig, options)
    with open_writer(atlas_dir) as writer:
        stored = link_atlas(writer, config, source=source)
    rows = [(name, n) for name, n in stored.items()]
    click.echo(format_table(["sae", "labelled concepts"], rows))


@click.command(context_settings=CONTEXT)
@config_options(BuildConfig)
@config_options(AnnotateConfig)
@config_options(ExecutorConfig)
@one_line_errors
def build(**options) -> None:
    """Build an atlas end to end: capture, train SAEs, encode, annotate, link, report.

    A preset gives every option its value (the shapes world's, or the paper's recipe for sd14); an
    option given here wins over the preset's. The model's and the annotator's checkpoints are checked
    before the first stage starts. Every stage skips what it finds done, so the same command resumes
    after an interruption.

    \b
    Examples:
      atlas build --preset shapes --atlas atlas            # the embedded model, minutes on a CPU
      atlas build --preset sd14 --prompts coco.txt --atlas sd-atlas   # GPU and local SD v1.4 weights
      atlas build --preset sd14 --prompts coco.txt --k 20 --tagger ram --tagger-weights ram_plus_swin_large_14m.pth
      atlas build --preset sd14 --prompts coco.txt --atlas sd-atlas --executor ray --ray-address auto
    """
    from atlas.pipeline.build import build_atlas, check_build
    from atlas.pipeline.executor import open_executor

    executor_config = build_config(ExecutorConfig, options)
    config = build_config(BuildConfig, {**options, "annotate": build_config(AnnotateConfig, options)})
    config = check_build(config)  # before an executor (a Ray cluster) starts
    with open_executor(executor_config) as executor:
        result = build_atlas(config, executor=executor)
    click.echo(f"atlas ready at {result.path} ({sum(result.seconds.values()):.0f} s); try "
               f"`atlas sql --atlas {result.path} \"SELECT * FROM saes\"`")


@click.command(context_settings=CONTEXT)
@click.option("--atlas", "atlas_dir", default=None, type=OUTPUT_DIR,
              help="Where to build the demo atlas  [default: $ATLAS_DIR, else ./atlas-data, or demo/atlas in a "
                   "source checkout]")
@click.option("--n-images", default=None, type=click.IntRange(min=1),
              help="Images to generate  [default: the shapes preset's, 640; 64 builds a small atlas in about a "
                   "minute of CPU time]")
@click.option("--sae-tokens", default=None, type=click.IntRange(min=0), help=field_docs(BuildConfig)["sae_tokens"])
@click.option("--device", default="auto", show_default=True, type=DEVICE_NAME,
              help="auto (CUDA if present, else CPU), cpu, cuda.")
@one_line_errors
def demo(atlas_dir: str | None, n_images: int | None, sae_tokens: int | None, device: str) -> None:
    """Build the shapes atlas (a few minutes on a CPU) and answer three of the README's queries."""
    from atlas.dictionary.names import atlas_concept_names
    from atlas.pipeline.build import build_atlas
    from atlas.report.demo import answer_queries, headline_concept, top_images_grid
    from atlas.store import open_atlas

    atlas_dir = _atlas_dir(atlas_dir)
    result = build_atlas(BuildConfig(atlas=atlas_dir, n_images=n_images, sae_tokens=sae_tokens, device=device))
    with open_atlas(atlas_dir) as atlas:
        answers = answer_queries(atlas)
        for i, answer in enumerate(answers, 1):
            click.echo(f"\n{i}. {answer.title}\n   atlas sql --atlas {atlas_dir} \"{' '.join(answer.sql.split())}\"\n")
            rows, columns = answer.result.rows, answer.result.columns
            if "concept_id" in columns and "name" not in columns:  # the name rolled up from its dictionary labels
                names = atlas_concept_names(atlas, [row[columns.index("concept_id")] for row in rows])
                rows = [(*row, names[row[columns.index("concept_id")]]) for row in rows]
                columns = [*columns, "name"]
            click.echo(format_table(columns, rows))
        concept = headline_concept(answers[0])
        if concept:
            grid = top_images_grid(atlas, concept, result.path / "demo_top_images.png")
            click.echo(f"\ntop images of {concept} with its activation maps: {grid}")
    click.echo(f"\natlas built in {sum(result.seconds.values()):.0f} s at {result.path}; explore it with "
               f"`atlas search \"red circle\" --atlas {atlas_dir}` or `atlas sql --atlas {atlas_dir} ...`")


@click.command("predict-layout", context_settings=CONTEXT)
@click.argument("prompt", type=PROMPT)
@click.option("--label", required=True, help="The object whose place to predict, e.g. 'red circle'.")
@click.option("--t", "t", type=float, default=1.0, show_default=True, help="Timestep whose codes are read.")
@click.option("--block", default="up", show_default=True,
              help="Block whose SAE reads them (up predicts the shapes model's layouts best; the paper reads mid).")
@click.option("--branch", default="cond", show_default=True, type=click.Choice(["cond", "uncond"]),
              help="CFG half whose SAE reads the codes.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--method", default="weighted", show_default=True, type=click.Choice(METHODS),
              help="weighted: every active concept adds evidence for the label (its mean IoU with the label's "
                   "objects on the dictionary images); top-concept: the paper's rule, each position's top concept "
                   "votes with its label embedding; top-labelled: each position's most active labelled concept votes.")
@click.option("--threshold", default=None, type=FiniteFloat(-1, 1),
              help="weighted: fraction of the image's best score a position needs; top-concept/top-labelled: cosine "
                   "similarity to the label its concept needs  [default: the value that predicts the dictionary "
                   "images' layouts best at this SAE]")
@click.option("--out", "out_path", default="layout.png", show_default=True, type=OUTPUT_FILE, help="PNG to write.")
@atlas_option
@one_line_errors
def predict_layout(prompt: str, label: str, t: float, block: str, branch: str, seed: int, method: str,
                   threshold: float | None, out_path: str, atlas_dir: str | None) -> None:
    """Predict where an object will be from one early denoising step, and compare with the final image.

    Reads the codes of (block, t, branch) through the atlas's SAE and turns them into a mask of the label
    (see --method). Writes the final image, the predicted mask and the annotator's mask side by side.

    \b
    Example:
      atlas predict-layout "a red circle on the left" --label "red circle" --t 1.0 --block up
    """
    import numpy as np

    from atlas.layout.config import LayoutConfig
    from atlas.pipeline.predict import predict_prompt
    from atlas.store import open_atlas
    from atlas.viz import image_grid

    with open_atlas(atlas_dir) as atlas:
        result = predict_prompt(atlas, prompt, label, t, block, seed, LayoutConfig(method, threshold), branch=branch)
    size = result.image.shape[0]

    def tile(mask: np.ndarray) -> np.ndarray:
        scaled = np.kron(mask.astype(np.uint8), np.ones((size // mask.shape[0],) * 2, np.uint8)) * 255
        return np.repeat(scaled[..., None], 3, axis=2)

    image_grid(np.stack([result.image, tile(result.predicted), tile(result.annotated)]),
               ["final image", f"predicted at t={t} ({block}, {branch})", "annotated"], cols=3).save(out_path)
    click.echo(f"IoU {result.iou:.3f} between the mask predicted at t={t} ({method}, threshold {result.threshold:g}) "
               f"and the final image's '{label}'; wrote {out_path}")


@click.command(context_settings=CONTEXT)
@click.option("--out", "out_dir", default=None, type=OUTPUT_DIR, help="Report directory  [default: <atlas>/report]")
@click.option("--compare", "compare_dir", default=None, type=click.Path(file_okay=False, exists=True),
              help="Another atlas of the same world, already reported (a U-Net beside a DiT, say): adds a side-by-side "
              "section of explained variance, layout prediction, emergence and edits.")
@atlas_option
@one_line_errors
def report(out_dir: str | None, compare_dir: str | None, atlas_dir: str | None) -> None:
    """Write the paper's tables and curves for an atlas: report/index.html, report.md, PNG plots.

    Explained variance per SAE, layout-prediction IoU per SAE (block, t, branch) on the test split against two
    baselines, the label's average mask and the caption-aware one (the average mask of the position the caption
    names), with the paper's top-concept predictor, a more generous top-labelled vote and the weighted one
    (thresholds chosen on the dictionary images), split by whether the caption names a position; every deviation
    from the paper in one table; concept cohesion and separability per t; context-free latents.

    \b
    Examples:
      atlas report --atlas atlas && xdg-open atlas/report/index.html
      atlas report --atlas dit-atlas --compare unet-atlas
    """
    from contextlib import ExitStack
    from pathlib import Path

    from atlas.report.report import build_report
    from atlas.report.tables import sae_columns
    from atlas.store import open_atlas

    with ExitStack() as stack:
        atlas = stack.enter_context(open_atlas(atlas_dir))
        other = stack.enter_context(open_atlas(compare_dir)) if compare_dir else None
        out = Path(out_dir) if out_dir else atlas.root / "report"
        figures = build_report(atlas, out, compare_with=other)
    sae = sae_columns(figures["layout"])
    rows = [(x["method"], *(x[c] for c in sae), f"{x['iou']:.3f}", f"{x['baseline_iou']:.3f}",
             f"{x['caption_baseline_iou']:.3f}", x["pairs"], x["threshold"]) for x in figures["layout"]]
    click.echo(format_table(["method", *sae, "layout IoU", "baseline", "caption baseline", "pairs", "threshold"], rows)
               if rows else f"layout prediction: {figures['layout_note']}")
    if figures.get("comparison"):
        click.echo("\n" + "\n".join(figures["comparison"]["lines"]).strip())
    click.echo(f"\nwrote {out / 'index.html'}, report.md and plots")


@click.command(context_settings=CONTEXT)
@click.option("--max-lines", default=50, show_default=True, type=click.IntRange(min=0),
              help="Problems to print before summarising the rest.")
@click.option("--repair", is_flag=True, help="First rebuild what can be derived (the catalog from its snapshot, "
              "tables/CURRENT, codes from the capture and the SAEs, FAISS indexes from the SAEs, images from their "
              "seeds, masks by annotating their image again) and remove orphans "
              "(files the catalog does not list: leftovers of interrupted writes), one line each; refused while "
              "another process writes to the atlas.")
@click.option("--quick", is_flag=True, help="Compare file sizes only: no checksums, no checkpoint loads.")
@atlas_option
@one_line_errors
def check(max_lines: int, repair: bool, quick: bool, atlas_dir: str | None) -> None:
    """Verify an atlas: the catalog opens, every listed file has its checksum, counts match, SAEs load.

    Read-only (safe while a build writes) unless --repair. Prints one problem per cause and exits with 1
    when there are any.

    \b
    Examples:
      atlas check --atlas atlas
      atlas check --atlas atlas --quick
      atlas check --atlas atlas --repair
    """
    from atlas.store.check import check_atlas

    if repair:
        from atlas.pipeline.repair import repair_atlas

        report = repair_atlas(atlas_dir, say=click.echo)
    else:
        report = check_atlas(atlas_dir, quick=quick)
    for line in report.problems[:max_lines]:
        click.echo(line)
    if len(report.problems) > max_lines:
        click.echo(f"... and {len(report.problems) - max_lines} more")
    if report.orphans:
        click.echo(f"{len(report.orphans)} files the catalog does not list (left by interrupted writes, or being "
                   f"written now), e.g. {report.orphans[0]}: `atlas check --repair` removes them")
    checked = ", ".join(f"{n} {what}{'s' if n != 1 else ''}" for what, n in report.checked.items())
    n = len(report.problems)
    click.echo(f"checked {checked}: " + ("no problems" if report.ok else f"{n} problem{'s' if n != 1 else ''}"),
               err=not report.ok)
    if not report.ok:
        raise SystemExit(1)
