"""`atlas check`: verify that everything an atlas's catalog points to is there and readable.

Read-only: it opens the atlas like any reader and reports one problem per line, so it can run while
a build writes. Checked: every listed data file (codes, FAISS) exists, its Parquet footer or index
reads and its row count matches the catalog; image and mask files exist; SAE checkpoints load with
the catalog's shape; each SAE's stored codes add up to its recorded count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow.parquet as pq

from atlas.store import Atlas, AtlasError

FAISS_KINDS = ("faiss_sae", "faiss_block")


@dataclass
class CheckReport:
    checked: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def count(self, what: str, n: int = 1) -> None:
        self.checked[what] = self.checked.get(what, 0) + n


def check_atlas(atlas: Atlas) -> CheckReport:
    report = CheckReport()
    _check_files(atlas, report)
    _check_paths(atlas, report, "image", "SELECT id, path FROM images")
    _check_paths(atlas, report, "mask", "SELECT id, mask_path FROM objects WHERE mask_path IS NOT NULL")
    _check_saes(atlas, report)
    return report


def _check_files(atlas: Atlas, report: CheckReport) -> None:
    from atlas import index as faiss_index

    rows = atlas.sql("SELECT path, kind, rows FROM files ORDER BY path", max_rows=10_000_000).rows
    for path, kind, expected in rows:
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
    for row_id, path in atlas.sql(query, max_rows=10_000_000).rows:
        report.count(what)
        if not path:
            report.problems.append(f"{what} {row_id} has no file")
        elif not atlas.file_path(path).exists():
            report.problems.append(f"{what} {row_id}: missing file {path}")


def _check_saes(atlas: Atlas, report: CheckReport) -> None:
    from atlas.sae import Sae

    try:
        stored = dict(atlas.sql("SELECT sae_id, count(*) FROM codes GROUP BY sae_id", timeout=300).rows)
    except AtlasError as err:
        report.problems.append(f"codes cannot be read: {str(err).splitlines()[0]}")
        stored = {}
    for sae in atlas.saes():
        report.count("SAE")
        name = f"SAE {sae.block}/{sae.t}/{sae.branch}"
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
