"""Latency and memory of one `atlas sql` call against the same query in plain DuckDB, each a fresh process.

The atlas is synthetic and shaped like the demo atlas (640 images, 3 blocks x 3 timesteps = 9 SAEs, an 8 x 8
grid, k = 10, 1,280 latents: 3.7M stored codes), or an existing one given with --atlas. Each round starts
    atlas    the installed `atlas` command: atlas sql "SELECT count(*) FROM codes" --atlas DIR
    duckdb   python -c "import duckdb; ..." counting the rows of the same Parquet files
and both must print the same count. Wall time is the median over --rounds; peak RSS comes from wait4() of
each child. The `atlas` run also reports whether torch was imported (it must not be). The last line is
RESULT atlas_ms=.. duckdb_ms=.. ratio=.. atlas_rss_mb=.. duckdb_rss_mb=.. torch_loaded=0|1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUERY = "SELECT count(*) FROM codes"
TORCH_PROBE = ("import sys, runpy; sys.argv = ['atlas'] + sys.argv[1:]; "
               "import atexit; atexit.register(lambda: sys.stderr.write(f'torch={int(\"torch\" in sys.modules)}\\n')); "
               "runpy.run_module('atlas.cli.main', run_name='__main__')")


def run(argv: list[str]) -> tuple[float, float, str, str]:
    """Wall seconds, peak RSS (MB), stdout and stderr of one child process (reaped by wait4 for its own rusage)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {child.returncode}"
        raise SystemExit(f"{' '.join(argv[:2])} ... failed: {last}")
    return seconds, usage.ru_maxrss / 1024, stdout, stderr


def build_atlas(root: Path) -> None:
    """In a child process: the children timed later are forked from this one, and a child's peak RSS counts the
    pages it shares with its parent until it execs, so the parent must stay small."""
    start = time.perf_counter()
    code = ("from atlas.store import synthetic; "
            f"synthetic.build({str(root)!r}, n_images=640, blocks=('down', 'mid', 'up'), times=(1.0, 0.5, 0.0), "
            "n_latents=1280, d=64, k=10, grid=(8, 8), batch_images=128)[0].close()")
    subprocess.run([sys.executable, "-c", code], check=True)
    print(f"synthetic demo-sized atlas built in {time.perf_counter() - start:.1f} s: {root}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--atlas", help="An existing atlas (default: a synthetic demo-sized one in a temp dir).")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    tmp = None
    if args.atlas:
        root = Path(args.atlas).resolve()
    else:
        tmp = Path(tempfile.mkdtemp(prefix="cli-latency-"))
        root = tmp / "atlas"
        build_atlas(root)
    files = f"{root}/codes/by_latent/**/*.parquet"
    plain = [sys.executable, "-c", f"import duckdb; print(duckdb.sql(\"SELECT count(*) FROM read_parquet('{files}')\")"
             ".fetchall()[0][0])"]
    ours = [sys.executable, "-c", TORCH_PROBE, "sql", QUERY, "--atlas", str(root), "--format", "csv"]
    try:
        times: dict[str, list[float]] = {"atlas": [], "duckdb": []}
        rss: dict[str, list[float]] = {"atlas": [], "duckdb": []}
        torch_loaded = 0
        for _ in range(args.rounds):
            for name, argv in (("atlas", ours), ("duckdb", plain)):
                seconds, peak, out, err = run(argv)
                times[name].append(seconds)
                rss[name].append(peak)
                if name == "atlas":
                    torch_loaded |= int("torch=1" in err)
                    count_atlas = out.strip().splitlines()[-1]
                else:
                    count_plain = out.strip()
            if count_atlas != count_plain:
                raise SystemExit(f"the counts differ: atlas {count_atlas}, duckdb {count_plain}")
        ms = {name: statistics.median(values) * 1000 for name, values in times.items()}
        mb = {name: max(values) for name, values in rss.items()}
        print(f"{'':8} {'median ms':>10} {'peak RSS MB':>12}   ({args.rounds} rounds, {count_plain} codes)")
        for name in ("atlas", "duckdb"):
            print(f"{name:8} {ms[name]:>10.0f} {mb[name]:>12.0f}")
        print(f"RESULT atlas_ms={ms['atlas']:.0f} duckdb_ms={ms['duckdb']:.0f} ratio={ms['atlas'] / ms['duckdb']:.2f} "
              f"atlas_rss_mb={mb['atlas']:.0f} duckdb_rss_mb={mb['duckdb']:.0f} torch_loaded={torch_loaded}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
