"""`atlas check`: verify that everything an atlas's catalog points to is there and readable.

Read-only: it opens the atlas like any reader and reports one problem per line, so it can run while
a build writes. Checked: every listed data file (codes, FAISS) exists, its Parquet footer or index
reads and its row count matches the catalog; image and mask files exist; SAE checkpoints load with
the catalog's shape; each SAE's stored codes add up to its recorded count. It also lists orphans:
files no kept snapshot generation refers to (see `find_orphans`), which `repair_atlas` removes.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from atlas.store import Atlas, AtlasError, AtlasNotFoundError, codes, default_path, open_atlas, snapshot
from atlas.store.catalog import CATALOG_FILE, Catalog

FAISS_KINDS = ("faiss_sae", "faiss_block")


@dataclass
class CheckReport:
    checked: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    """Not problems: a write in progress has some too (its files are listed when it commits)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def count(self, what: str, n: int = 1) -> None:
        self.checked[what] = self.checked.get(what, 0) + n


def check_atlas(atlas: Atlas) -> CheckReport:
    report = CheckReport()
    _check_files(atlas, report)
    _check_paths(atlas, report, "image", "SELECT id, path FROM images")
    _check_paths(atlas, report, "mask", "SELECT id, mask_path AS path FROM objects WHERE mask_path IS NOT NULL")
    _check_saes(atlas, report)
    report.orphans = find_orphans(atlas.root)
    return report


def _column(generation: Path, table: str, column: str) -> set:
    try:
        return set(pq.read_table(generation / f"{table}.parquet", columns=[column]).column(column).to_pylist())
    except FileNotFoundError:  # a generation pruned meanwhile (a writer is running), or a table it lacks
        return set()


def find_orphans(root: Path) -> list[str]:
    """Atlas-relative paths of what no kept snapshot generation refers to, and that no reader or resumed run needs:
    codes and FAISS files not in `files`, masks not in `objects`, staged codes of SAEs not in `saes` or already
    merged (`codes.merged_parts`), generations
    that were pruned or never became current, and anywhere else the temporary files of atomic writes. Captures,
    checkpoints, annotations and the report are not in the catalog and stay, but for their temporary files."""
    root = Path(root)
    current = snapshot.current(root)
    if current is None:
        return []
    newest = snapshot.meta(current)["generation"]
    kept = {g.name for g in (root / snapshot.TABLES_DIR).glob("g[0-9]*")
            if g.is_dir() and newest - snapshot.KEEP < int(g.name[1:]) <= newest}
    generations = [root / snapshot.TABLES_DIR / name for name in kept]
    listed = set().union(*(_column(g, "files", "path") | _column(g, "objects", "mask_path") for g in generations))
    staged = {f"sae_id={i}" for i in _column(current, "saes", "id")}
    merged = {str(p.relative_to(root)) for p in codes.merged_parts(root, listed)}

    def orphan(here: tuple[str, ...], name: str, is_dir: bool) -> bool:
        if name.endswith(".tmp"):
            return True
        if is_dir:
            return here == (snapshot.TABLES_DIR,) and name.startswith("g") and name[1:].isdigit() and name not in kept
        if here[:2] in (("codes", "by_latent"), ("codes", "by_image")) or here[:1] in (("index",), ("masks",)):
            return "/".join(here + (name,)) not in listed
        return here[:2] == ("codes", "parts") and len(here) == 3 and (here[2] not in staged
                                                                       or "/".join(here + (name,)) in merged)

    orphans = []
    for directory, dirs, files in os.walk(root):
        here = Path(directory).relative_to(root).parts
        found = [name for name in dirs if orphan(here, name, True)] + [name for name in files
                                                                        if orphan(here, name, False)]
        orphans += ["/".join(here + (name,)) for name in found]
        dirs[:] = sorted(d for d in dirs if d not in found)
    return sorted(orphans)


def repair_atlas(root: str | Path | None = None) -> list[str]:
    """Remove the orphans (see `find_orphans`) with the atlas to this process alone; returns what was removed.
    Refused while another process writes: a file it has written but not committed yet would look orphaned."""
    root = Path(root) if root is not None else default_path()
    open_atlas(root).close()  # the usual one-line errors for a missing or too old atlas
    if not (root / CATALOG_FILE).exists():
        raise AtlasNotFoundError(root)
    catalog = Catalog(root)
    with catalog.exclusive():
        catalog.recover()  # so the snapshot lists everything the catalog does
        orphans = find_orphans(root)
        for rel in orphans:
            path = root / rel
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    return orphans


def _check_files(atlas: Atlas, report: CheckReport) -> None:
    from atlas.store import index as faiss_index

    for row in atlas.query("SELECT path, kind, rows FROM files ORDER BY path").to_pylist():
        path, kind, expected = row["path"], row["kind"], row["rows"]
        full = atlas.file_path(path)
        report.count("data file")
        if not full.exists():
            report.problems.append(f"missing {kind} file {path}")
            continue
        try:
            n = faiss_index.read(full, path).ntotal if kind in FAISS_KINDS else pq.ParquetFile(full).metadata.num_rows
        except Exception as err:  # any unreadable footer or index is the finding itself
            report.problems.append(f"unreadable {kind} file {path}: {str(err).splitlines()[0][:120]}")
            continue
        if expected and n != expected:
            report.problems.append(f"{kind} file {path} holds {n} rows, the catalog says {expected}")


def _check_paths(atlas: Atlas, report: CheckReport, what: str, query: str) -> None:
    for row in atlas.query(query).to_pylist():
        row_id, path = row["id"], row["path"]
        report.count(what)
        if not path:
            report.problems.append(f"{what} {row_id} has no file")
        elif not atlas.file_path(path).exists():
            report.problems.append(f"{what} {row_id}: missing file {path}")


def _check_saes(atlas: Atlas, report: CheckReport) -> None:
    from atlas.sae import Sae

    try:
        counts = atlas.query("SELECT sae_id, count(*) AS n FROM codes GROUP BY sae_id")
        stored = dict(zip(counts["sae_id"].to_pylist(), counts["n"].to_pylist()))
    except AtlasError as err:
        report.problems.append(f"codes cannot be read: {str(err).splitlines()[0]}")
        stored = {}
    for sae in atlas.saes():
        report.count("SAE")
        name = f"SAE {sae.name}"
        if stored.get(sae.id, 0) != sae.n_codes:
            report.problems.append(f"{name}: {stored.get(sae.id, 0)} stored codes, the catalog says {sae.n_codes}")
        if not sae.path:
            continue
        try:
            loaded = Sae.from_pretrained(atlas.file_path(sae.path))
        except Exception as err:  # a missing or damaged checkpoint is the finding itself
            report.problems.append(f"{name}: checkpoint {sae.path} does not load ({str(err).splitlines()[0][:100]})")
            continue
        if (loaded.n_latents, loaded.d_in) != (sae.n_latents, sae.d_in):
            report.problems.append(f"{name}: checkpoint is {loaded.n_latents}x{loaded.d_in}, the catalog says "
                                   f"{sae.n_latents}x{sae.d_in}")
