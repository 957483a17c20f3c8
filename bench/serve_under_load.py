"""Read latency of the web atlas while an expensive query and an edit run (issue 20).

Starts `atlas serve` on an atlas (a copy, since the edit logs into it), then for `--seconds`: `--readers` threads
GET the list pages and their JSON in a loop, one thread sends the memory probes (PROBES) in turn again and again,
one thread runs edits through /edit.json (with the session's CSRF token) on a label an edit finds by default
(EDIT_LABEL). Prints each kind's count and the probe's and edit's answers; the last line is
`RESULT read_p95_ms=... read_max_ms=... reads=... probe_max_ms=... edits=... server_rss_mb=...`.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

READS = ["/concepts.json?limit=50", "/labels.json", "/.json", "/images.json", "/concepts", "/labels"]
PROBES = ["SELECT list(i) FROM range(50000000) t(i)", "SELECT repeat('x', 100000000) FROM range(50)"]
"""The memory probes, in turn: a huge list, and huge single values (built outside DuckDB's memory limit)."""
EDIT_LABEL = ("SELECT label FROM concept_labels WHERE block = 'up' AND t = 1.0 AND branch = 'cond' "
              "ORDER BY mean_iou DESC LIMIT 1")
"""The label the edits set: one linked to a concept where an edit looks by default (the up block at t = 1.0)."""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atlas", default="demo/atlas", help="An atlas with SAEs and labels (it is copied)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--no-edit", action="store_true", help="Only reads and the probe (the server's RSS then "
                                                               "shows the probe's cost without a model loaded)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    shutil.copytree(args.atlas, work / "atlas")
    command = [sys.executable, "-c", "from atlas.cli.main import main; main()", "serve", "--atlas",
               str(work / "atlas"), "--port", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 180)
        line = proc.stdout.readline() if ready else ""
        base = line.split(" at ")[1].split()[0].rstrip("/")
        label = requests.get(f"{base}/sql.json", params={"q": EDIT_LABEL}, timeout=60).json()["table"]["rows"][0][0]
        reads: list[float] = []
        probes: list[tuple[float, int]] = []
        edits: list[tuple[float, int]] = []
        errors: set[str] = set()
        stop = time.monotonic() + args.seconds

        def reader(offset: int) -> None:
            i = offset
            while time.monotonic() < stop:
                start = time.monotonic()
                requests.get(base + READS[i % len(READS)], timeout=120).raise_for_status()
                reads.append(time.monotonic() - start)
                i += 1

        def prober() -> None:
            i = 0
            while time.monotonic() < stop:
                start = time.monotonic()
                answer = requests.get(f"{base}/sql.json", params={"q": PROBES[i % len(PROBES)]}, timeout=120)
                i += 1
                probes.append((time.monotonic() - start, answer.status_code))
                errors.add(answer.json().get("error", "")[:60])

        def editor() -> None:
            session = requests.Session()
            session.headers["X-CSRF-Token"] = session.get(f"{base}/session.json", timeout=60).json()["csrf_token"]
            seed = 0
            while time.monotonic() < stop:
                start = time.monotonic()
                status = session.post(f"{base}/edit.json", json={"prompt": f"a {label}", "concept": label,
                                                                  "seed": seed}, timeout=600).status_code
                edits.append((time.monotonic() - start, status))
                seed += 1

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(args.readers)]
        threads += [threading.Thread(target=prober)] + ([] if args.no_edit else [threading.Thread(target=editor)])
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rss = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    ms = np.array(reads) * 1000
    longest = max((t for t, _ in edits), default=0.0)
    print("probe answers:", sorted(errors))
    print(f"reads: {len(reads)}, probes: {len(probes)} (statuses {sorted({s for _, s in probes})}), edits: "
          f"{len(edits)} (statuses {sorted({s for _, s in edits})}, longest {longest:.1f} s)")
    print(f"RESULT read_p95_ms={np.percentile(ms, 95):.0f} read_max_ms={ms.max():.0f} reads={len(reads)} "
          f"probe_max_ms={max(t for t, _ in probes) * 1000:.0f} edits={len(edits)} server_rss_mb={rss:.0f}")


if __name__ == "__main__":
    main()
