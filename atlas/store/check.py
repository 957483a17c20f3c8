"""`atlas check`: verify the catalog and everything it points to, one problem per cause.

Read-only: it reads the atlas like any reader and reports one problem per line, so it can run while
a build writes. Checked: the catalog file opens and its tables read; tables/CURRENT names a generation;
every listed file (codes, FAISS, the capture's manifest, images, masks, SAE checkpoint files) exists with the
catalog's size and, unless `quick`, its checksum (files listed before checksums existed: their Parquet footer or
index reads with the catalog's row count; images and masks exist); SAE checkpoints load with the catalog's shape
(unless `quick`); each SAE's count of codes matches the rows its listed files hold. A damaged file is one
problem: what depends on it (an SAE's count, the codes view) is not reported again. It also lists orphans:
files no kept snapshot generation refers to (see `find_orphans`), which `remove_orphans` removes.
`atlas.pipeline.repair` rebuilds what the problems name.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from atlas.files import sha256
from atlas.store import Atlas, AtlasNotFoundError, codes, default_path, snapshot
from atlas.store.catalog import CATALOG_FILE, Catalog
from atlas.store.revisions import IMAGE, MASK, SAE_CHECKPOINT
from atlas.store.schema import TABLES

FAISS_KINDS = ("faiss_sae", "faiss_block")


REPAIR = "`atlas check --repair` rebuilds it"
MISSING = "is missing"
IMAGE_FIX = "`atlas check --repair` generates it again from its seed (with the atlas's model)"
MASK_FIX = "`atlas check --repair` annotates its image again (with the annotator that found it)"
NOT_DERIVABLE_SAE = ("nothing derives it: restore it from a copy, or train the SAE again (`atlas train`) and encode "
                     "with it (`atlas encode`)")


@dataclass
class CheckReport:
    checked: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    """Not problems: a write in progress has some too (its files are listed when it commits)."""
    catalog_damaged: bool = False
    pointer_missing: bool = False
    damaged: list[dict] = field(default_factory=list)
    """The `files` rows (path, kind, sae_id, bucket, key, ...) of missing or damaged files; an image's or mask's
    also has the `id` of its image or object."""
    broken_saes: set[int] = field(default_factory=set)
    """SAEs whose checkpoint is missing or does not load: nothing of theirs can be rebuilt."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def count(self, what: str, n: int = 1) -> None:
        self.checked[what] = self.checked.get(what, 0) + n


def check_atlas(root: str | Path | None = None, quick: bool = False) -> CheckReport:
    """Check the atlas at `root` (see the module docstring); `quick` compares sizes only, loads no checkpoint."""
    root = Path(root) if root is not None else default_path()
    if not root.is_dir() or snapshot.newest(root) is None:
        raise AtlasNotFoundError(root)
    report = CheckReport()
    _check_catalog(root, report)
    shown = snapshot.pointed(root)
    if shown is None or not (shown / "meta.json").exists():
        report.pointer_missing = True
        report.problems.append(f"{snapshot.TABLES_DIR}/{snapshot.POINTER} is missing or names a missing generation: "
                               "`atlas check --repair` points it at the newest complete one")
    with Atlas(root) as atlas:
        _check_files(atlas, report, quick)
        _check_paths(atlas, report, "image", IMAGE, "SELECT id, path FROM images", quick)
        _check_paths(atlas, report, "mask", MASK, "SELECT id, mask_path AS path FROM objects WHERE mask_path IS NOT "
                     "NULL", quick)
        _check_saes(atlas, report, quick)
        _check_evolution(atlas, report)
    report.orphans = find_orphans(root)
    return report


def _check_catalog(root: Path, report: CheckReport, busy_seconds: float = 10.0) -> None:
    """The catalog file opens read-only and every table reads (waiting while a writer holds it)."""
    import duckdb

    report.count("catalog")
    path = root / CATALOG_FILE
    deadline = time.monotonic() + busy_seconds
    while True:
        try:
            if not path.exists():
                raise FileNotFoundError("missing")
            con = duckdb.connect(str(path), read_only=True)
            try:
                for table in TABLES:
                    con.execute(f"SELECT count(*) FROM {table}").fetchall()
            finally:
                con.close()
            return
        except duckdb.IOException as err:
            if "lock" in str(err).lower() and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            if "lock" in str(err).lower():
                return  # a writer holds it all along: it opened it, so it is not damaged
            detail = str(err).splitlines()[0][:120]
        except (duckdb.Error, OSError) as err:
            detail = str(err).splitlines()[0][:120]
        report.catalog_damaged = True
        report.problems.append(f"catalog {CATALOG_FILE} is damaged ({detail}): `atlas check --repair` rebuilds it "
                               "from the newest snapshot in tables/")
        return


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
    current = snapshot.newest(root)
    if current is None:
        return []
    kept = snapshot.kept(root, snapshot.number(current)) & {g.name for g in snapshot.generations(root)}
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


def remove_orphans(root: Path) -> list[str]:
    """Remove the orphans (see `find_orphans`); returns what was removed. The caller holds the atlas exclusively
    (`Catalog.exclusive`): a file another process has written but not committed yet would look orphaned."""
    Catalog(root).recover()  # so the snapshot lists everything the catalog does
    orphans = find_orphans(root)
    for rel in orphans:
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return orphans


def rebuild_catalog(root: Path) -> Path:
    """Replace a damaged catalog file by one made from the newest snapshot generation (which every commit
    published); the damaged file is kept beside it as catalog.duckdb.damaged. Returns the generation used. The
    caller holds the atlas exclusively."""
    import duckdb

    generation = snapshot.newest(root)
    schema = snapshot.meta(generation)["schema"]
    path = root / CATALOG_FILE
    for suffix in ("", ".wal"):
        damaged = path.with_name(path.name + suffix)
        if damaged.exists():
            os.replace(damaged, path.with_name(f"{CATALOG_FILE}{suffix}.damaged"))
    catalog = Catalog(root)
    catalog.migrate_only(schema)
    con = duckdb.connect(str(path))
    try:
        con.execute("BEGIN")
        for table in TABLES:
            source = generation / f"{table}.parquet"
            if source.exists():
                columns = [r[0] for r in con.execute(f"SELECT * FROM read_parquet('{source}') LIMIT 0").description]
                names = ", ".join(f'"{c}"' for c in columns)
                con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM read_parquet('{source}')")
        con.execute("COMMIT")
    finally:
        con.close()
    return generation


def _check_files(atlas: Atlas, report: CheckReport, quick: bool) -> None:
    """Every file `files` lists but images and masks (`_check_paths` checks those, by image and object)."""
    from atlas.store import index as faiss_index

    names = {s.id: s.name for s in atlas.saes()}
    for row in atlas.query("SELECT * FROM files WHERE kind NOT IN (?, ?) ORDER BY path", [IMAGE, MASK]).to_pylist():
        path, kind = row["path"], row["kind"]
        full = atlas.file_path(path)
        report.count("data file")
        whose, what, fix = "", f"{kind} file", REPAIR
        if kind == SAE_CHECKPOINT:
            whose, what, fix = f"SAE {names.get(row['sae_id'], row['sae_id'])}: ", "checkpoint file", NOT_DERIVABLE_SAE
        elif kind == "activations":
            fix = "restore it, or capture again (`atlas capture`) and re-encode: the codes were encoded from it"
        problem = _verify(full, row, quick)
        if problem is None and not quick and not row.get("sha256") and kind != "activations":
            try:
                n = faiss_index.read(full, path).ntotal if kind in FAISS_KINDS else \
                    pq.ParquetFile(full).metadata.num_rows
            except Exception as err:  # any unreadable footer or index is the finding itself
                problem = f"is unreadable ({str(err).splitlines()[0][:120]})"
            else:
                if row["rows"] and n != row["rows"]:
                    problem = f"holds {n} rows, the catalog says {row['rows']}"
        if problem:
            report.problems.append(f"{whose}missing {what} {path}: {fix}" if problem == MISSING else
                                   f"{whose}{what} {path} {problem}: {fix}")
            report.damaged.append(row)
            if kind == SAE_CHECKPOINT:
                report.broken_saes.add(row["sae_id"])


def _verify(full: Path, row: dict, quick: bool) -> str | None:
    """What is wrong with a listed file against its `files` row (size, and unless `quick` its checksum), if any."""
    if not full.exists():
        return MISSING
    if row["bytes"] and full.stat().st_size != row["bytes"]:
        return f"is {full.stat().st_size} bytes, the catalog says {row['bytes']}"
    if not quick and row.get("sha256") and sha256(full) != row["sha256"]:
        return "is damaged (its checksum differs from the catalog's)"
    return None


def _check_paths(atlas: Atlas, report: CheckReport, what: str, kind: str, query: str, quick: bool) -> None:
    """The files of images or masks: each exists, and when `files` lists it (with its checksum), is unchanged."""
    listed = {r["path"]: r for r in atlas.query("SELECT * FROM files WHERE kind = ?", [kind]).to_pylist()}
    fix = IMAGE_FIX if kind == IMAGE else MASK_FIX
    for row in atlas.query(query).to_pylist():
        row_id, path = row["id"], row["path"]
        report.count(what)
        if not path:
            report.problems.append(f"{what} {row_id} has no file")
            continue
        full = atlas.file_path(path)
        problem = _verify(full, listed[path], quick) if path in listed else None if full.exists() else MISSING
        if problem == MISSING:
            report.problems.append(f"{what} {row_id}: missing file {path}: {fix}")
        elif problem:
            report.problems.append(f"{what} {row_id}: file {path} {problem}: {fix}")
        if problem:
            report.damaged.append({**listed.get(path, {"path": path, "kind": kind}), "id": row_id})


EVOLVE = "`atlas evolve` measures them again"
_DANGLING = ("SELECT {sae} AS sae_id, {latent} AS latent, count(*) AS n FROM snapshot.{table} x "
             "LEFT JOIN snapshot.saes s ON s.id = x.{sae} WHERE s.id IS NULL OR x.{latent} >= s.n_latents "
             "OR x.{latent} < 0 GROUP BY ALL ORDER BY ALL")


def _check_evolution(atlas: Atlas, report: CheckReport) -> None:
    """Trajectories and lineage name existing SAEs and latents, and once the evolve stage ran, every SAE has
    trajectories (an SAE encoded later has none until `atlas evolve` runs again)."""
    for table, what, ends in (("trajectories", "trajectory row", [("sae_id", "latent")]),
                              ("lineage", "lineage link", [("parent_sae_id", "parent_latent"),
                                                           ("child_sae_id", "child_latent")])):
        report.count(what, atlas.query(f"SELECT count(*) AS n FROM {table}")["n"][0].as_py())
        for sae, latent in ends:
            for row in atlas.query(_DANGLING.format(table=table, sae=sae, latent=latent)).to_pylist():
                report.problems.append(f"{table}: {row['n']} row(s) name latent {row['latent']} of SAE id "
                                       f"{row['sae_id']}, which the atlas does not hold: {EVOLVE}")
    if atlas.stage_done("evolve"):
        measured = set(atlas.query("SELECT DISTINCT sae_id FROM trajectories")["sae_id"].to_pylist())
        for sae in atlas.saes():
            if sae.id not in measured:
                report.problems.append(f"SAE {sae.name} has no trajectories though the evolve stage ran: {EVOLVE}")


def _check_saes(atlas: Atlas, report: CheckReport, quick: bool) -> None:
    """Each SAE's count of codes against the rows of its listed codes files (the catalog's own consistency: a
    damaged file is reported once, by _check_files), and its checkpoint."""
    from atlas.sae import Sae

    counts = atlas.query("SELECT sae_id, sum(rows) AS n FROM files WHERE kind = ? GROUP BY sae_id", [codes.BY_LATENT])
    listed = dict(zip(counts["sae_id"].to_pylist(), counts["n"].to_pylist()))
    for sae in atlas.saes():
        report.count("SAE")
        name = f"SAE {sae.name}"
        if listed.get(sae.id, 0) != sae.n_codes:
            report.problems.append(f"{name}: its codes files hold {listed.get(sae.id, 0)} codes, the catalog says "
                                   f"{sae.n_codes}: {REPAIR}")
        if not sae.path or quick or sae.id in report.broken_saes:  # a damaged checkpoint file is reported once
            continue
        try:
            loaded = Sae.from_pretrained(atlas.file_path(sae.path))
        except Exception as err:  # a missing or damaged checkpoint is the finding itself
            report.broken_saes.add(sae.id)
            report.problems.append(f"{name}: checkpoint {sae.path} does not load ({str(err).splitlines()[0][:100]}); "
                                   "train it again with `atlas train`")
            continue
        if (loaded.n_latents, loaded.d_in) != (sae.n_latents, sae.d_in):
            report.broken_saes.add(sae.id)
            report.problems.append(f"{name}: checkpoint is {loaded.n_latents}x{loaded.d_in}, the catalog says "
                                   f"{sae.n_latents}x{sae.d_in}")
