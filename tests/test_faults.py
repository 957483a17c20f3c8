"""Faults on real processes: `atlas build` killed with SIGKILL at random points resumes to exactly the atlas of an
uninterrupted build, and `atlas serve` keeps answering consistently while other processes write to its atlas.

Both use one tiny real build of the shipped shapes model (8 images, SAEs on a few thousand positions).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
from PIL import Image
from safetensors.numpy import load_file

from atlas.store import open_atlas, open_writer, snapshot
from atlas.store.catalog import Catalog
from atlas.store.schema import TABLES

REPO = Path(__file__).resolve().parents[1]
TINY = ["--n-images", "8", "--sae-tokens", "2000", "--threads", "1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ATLAS_THREADS": "1", "PYTHONUNBUFFERED": "1"}
"""One thread everywhere: DuckDB's parallel sums (link's mean IoU) differ in the last bit from run to run."""
TIMESTAMPS = {"created_at", "done_at"}
"""Columns that legitimately differ between two runs: when a row was written (models, saes, files, stages)."""
SPEED = {"seconds", "tokens_per_s"}
"""Keys of an SAE's metrics.json `train` entry that measure wall-clock speed, not the result."""
TOKEN = re.compile(r"\d{20}-\d+")
"""Codes and FAISS files are named by a time_ns-pid token (atlas.store.codes.token), so `files.path` differs too."""


def atlas_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from atlas.cli.main import main; main()", *args]


def run_atlas(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(atlas_command(*args), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def build(root: Path) -> None:
    result = run_atlas("build", "--atlas", str(root), *TINY)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The tiny atlas built in one uninterrupted run."""
    root = tmp_path_factory.mktemp("reference") / "atlas"
    build(root)
    return root


# -- comparing two atlases row for row -------------------------------------------------------------------------


def catalog_rows(root: Path) -> dict[str, list[tuple]]:
    """Every catalog table, sorted, without the timestamp columns; each must equal the snapshot readers see."""
    generation = snapshot.current(root)
    con = duckdb.connect(str(root / "catalog.duckdb"), read_only=True)
    try:
        tables = {}
        for table in TABLES:
            stored = con.sql(f"SELECT * FROM {table}").to_arrow_table()
            published = pq.read_table(generation / f"{table}.parquet")
            assert sorted(stored.to_pylist(), key=repr) == sorted(published.to_pylist(), key=repr), \
                f"the published snapshot of {table} differs from the catalog"
            keep = [c for c in stored.column_names if c not in TIMESTAMPS]
            rows = [tuple(TOKEN.sub("TOKEN", v) if isinstance(v, str) else v for v in row)
                    for row in zip(*(stored.column(c).to_pylist() for c in keep))]
            tables[table] = sorted(rows, key=repr)
        return tables
    finally:
        con.close()


def codes_rows(root: Path) -> dict[str, list[tuple]]:
    """Both arrangements of the sparse codes, through the views readers query."""
    with open_atlas(root) as atlas:
        return {view: atlas.sql(f"SELECT image_id, sae_id, row, col, latent, value FROM {view} "
                                "ORDER BY ALL", max_rows=10_000_000, timeout=120).rows
                for view in ("codes", "codes_by_image")}


def file_contents(root: Path) -> dict[str, object]:
    """Every other file a build writes, by path: Parquet rows, tensors, pixels, JSON, text."""
    found: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if not path.is_file() or rel.startswith(("tables/", "codes/", "index/", "report/")) or rel == "catalog.duckdb":
            continue
        if path.suffix == ".parquet":
            found[rel] = pq.read_table(path).to_pylist()
        elif path.suffix == ".safetensors":
            found[rel] = {k: v.tobytes() for k, v in load_file(path).items()}
        elif path.suffix == ".png":
            found[rel] = np.asarray(Image.open(path)).tobytes()
        elif path.name == "metrics.json":
            metrics = json.loads(path.read_text())
            found[rel] = {**metrics, "train": {k: v for k, v in metrics["train"].items() if k not in SPEED}}
        elif path.suffix == ".json":
            found[rel] = json.loads(path.read_text())
        else:
            found[rel] = path.read_bytes()
    return found


def layout(root: Path) -> list[str]:
    """Every file's path, with the run-dependent parts of the names (tokens, generation numbers) blanked."""
    return sorted(re.sub(r"^tables/g\d+/", "tables/G/", TOKEN.sub("TOKEN", str(p.relative_to(root))))
                  for p in root.rglob("*") if p.is_file())


def assert_same_atlas(root: Path, reference: Path) -> None:
    got, want = catalog_rows(root), catalog_rows(reference)
    for table in TABLES:
        assert got[table] == want[table], f"table {table} differs from the uninterrupted build"
    got, want = codes_rows(root), codes_rows(reference)
    for view in want:
        assert got[view] == want[view], f"{view} differs from the uninterrupted build"
    assert len(want["codes"]) > 0
    got, want = file_contents(root), file_contents(reference)
    assert sorted(got) == sorted(want)
    for rel in want:
        assert got[rel] == want[rel], f"{rel} differs from the uninterrupted build"


# -- kill -9 of atlas build ------------------------------------------------------------------------------------

HEADER = re.compile(r"\[\d+/\d+\] (\w+) \.\.\.")


class Run:
    """One atlas command in a process group of its own; a thread follows the stage headers `atlas build` prints
    ("[3/6] encode ...")."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.proc = subprocess.Popen(atlas_command(*args), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.stage, self.log = args[0], log
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:  # the stage headers are log lines (stderr); the log keeps every line
        with open(self.log, "a") as log:
            for line in self.proc.stdout:
                log.write(line)
                match = HEADER.match(line)
                if match:
                    self.stage = match.group(1)

    def wait_until(self, what: str, ready: Callable[[], bool], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"the run ended (exit {self.proc.returncode}) before {what}"
            assert time.monotonic() < deadline, f"no {what} after {timeout} s"
            time.sleep(0.05)

    def kill(self) -> str:
        """SIGKILL the run's process group (only what this test started); returns the stage it was in."""
        stage = self.stage if self.proc.poll() is None else "finished"
        if stage != "finished":
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        return stage


def trained(root: Path) -> int:
    return len(list((root / "saes").glob("*/*/*/metrics.json")))


def encoded(root: Path) -> int:
    """SAEs whose encode stage a reader can see as done."""
    try:
        names = pq.read_table(snapshot.current(root) / "stages.parquet").column("name").to_pylist()
    except (OSError, TypeError):  # no atlas yet, or a generation pruned while we read it
        return 0
    return sum(name.startswith("encode:") for name in names)


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_gives_the_uninterrupted_atlas(reference, tmp_path):
    rng = random.Random(8)
    root, log = tmp_path / "atlas", tmp_path / "runs.log"
    build_args = ["build", "--atlas", str(root), *TINY]
    encode_args = ["encode", "--activations", str(root / "activations"), "--saes", str(root / "saes"),
                   "--atlas", str(root)]
    landed = []

    def kill_build(stage: str, ready: Callable[[], bool], within: float) -> None:
        run = Run(build_args, log)
        run.wait_until(stage, lambda: run.stage == stage and ready())
        time.sleep(rng.uniform(0, within))
        landed.append(run.kill())

    kill_build("capture", lambda: True, 4)  # model loading, sampling or writing the shards (8 images: seconds)
    target = rng.randint(1, 6)
    kill_build("train", lambda: trained(root) >= target, 0)  # between SAEs
    kill_build("encode", lambda: True, 6)
    for _ in range(2):  # the encode command itself, once a few more SAEs are done
        run, target = Run(encode_args, log), min(encoded(root) + rng.randint(1, 3), 8)
        run.wait_until(f"{target} encoded SAEs", lambda target=target: encoded(root) >= target)
        time.sleep(rng.uniform(0, 1.5))
        landed.append(run.kill())
    kill_build("link", lambda: True, 0.3)  # link takes about a second
    assert len(set(landed) - {"finished"}) >= 4, f"the kills landed in too few stages: {landed}"
    final = run_atlas(*build_args)
    assert final.returncode == 0, final.stderr[-3000:] + log.read_text()[-3000:]
    assert_same_atlas(root, reference)
    repair = run_atlas("check", "--atlas", str(root), "--repair")
    assert repair.returncode == 0 and "no problems" in repair.stdout, repair.stdout + repair.stderr
    assert layout(root) == layout(reference), "after --repair the killed runs left other files than a clean build"


KILLED_BEFORE_PUBLISHING = """
import os, signal, sys
from atlas.store import open_writer, snapshot
writer = open_writer(sys.argv[1])
snapshot.publish = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
writer.catalog.rename_concept("mid/1.0/14", "renamed, then killed")
"""


@pytest.mark.slow
def test_kill_9_between_commit_and_publication_is_published_by_the_next_writer(reference, tmp_path):
    """The narrowest window, hit on purpose: a real SIGKILL right after the catalog committed a rename and before
    its snapshot generation was published. Readers keep the old generation until the next writer opens, which
    must publish it (before, the rename stayed invisible until some later write changed `concepts` again)."""
    root = tmp_path / "atlas"
    shutil.copytree(reference, root)
    killed = subprocess.run([sys.executable, "-c", KILLED_BEFORE_PUBLISHING, str(root)], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    with open_atlas(root) as atlas:
        assert atlas.concept("mid/1.0/14").name is None
    open_writer(root).close()
    with open_atlas(root) as atlas:
        assert atlas.concept("mid/1.0/14").name == "renamed, then killed"
    catalog_rows(root)  # asserts that every published table equals the catalog's


# -- atlas serve while writers work on the same atlas -----------------------------------------------------------

ROUTES = [
    ("/.json", {}),
    ("/concept/mid/1.0/14.json", {"n": 6}),
    ("/sql.json", {"q": "SELECT s.id, s.n_codes, count(c.latent) AS stored, (SELECT count(*) FROM concept_labels) "
                        "AS links FROM saes s LEFT JOIN codes c ON c.sae_id = s.id GROUP BY ALL ORDER BY s.id"}),
    ("/search.json", {"q": "red circle"}),
]
VOLATILE = {"elapsed_ms"}
"""Response fields that measure the request, not the atlas."""


def answer(url: str, path: str, params: dict, timeout: float = 60) -> tuple[float, float, object]:
    """(start, end, body) of one GET; body is the status code or exception name when it failed."""
    start = time.monotonic()
    try:
        response = requests.get(url + path, params=params, timeout=timeout)
        body = {k: v for k, v in response.json().items() if k not in VOLATILE} if response.ok \
            else f"{response.status_code}: {response.text[:300]}"
    except (requests.RequestException, ValueError) as err:
        body = f"{type(err).__name__}: {err}"
    return start, time.monotonic(), body


def listed_files_exist(root: Path) -> list[str]:
    """Files the current generation lists that are missing while it is still one readers may use."""
    generation = snapshot.current(root)
    try:
        missing = [p for p in snapshot.listed_files(generation) if not (root / p).exists()]
    except FileNotFoundError:  # pruned while we read it: KEEP newer generations were published meanwhile
        return []
    newest = snapshot.current(root)
    return missing if snapshot.meta(newest)["generation"] - int(generation.name[1:]) < snapshot.KEEP else []


@pytest.mark.slow
def test_serve_answers_the_same_while_encode_and_link_rewrite_the_atlas(reference, tmp_path):
    """The writers rewrite every SAE, index, code file and concept label with the same content, so every answer
    the server gives during the writes must equal the answer before them: a failed request, a count that
    changes or a listed file that is missing is a reader seeing a half-written atlas."""
    from test_server import serve_atlas

    root = tmp_path / "atlas"
    shutil.copytree(reference, root)
    with Catalog(root).write("stages") as tx:  # so `atlas encode` redoes every SAE
        tx.query("DELETE FROM stages WHERE name LIKE 'encode:%'")
    writers = [atlas_command("encode", "--activations", str(root / "activations"), "--saes", str(root / "saes"),
                             "--atlas", str(root)),
               atlas_command("link", "--atlas", str(root))]
    with serve_atlas(root, log=tmp_path / "server.log") as url:
        baseline = {path: answer(url, path, params, timeout=600)[2] for path, params in ROUTES}  # loads MiniLM
        assert all(isinstance(body, dict) for body in baseline.values()), baseline
        answers: list[tuple[str, float, float, object]] = []
        missing: list[str] = []
        done = threading.Event()

        def poll(path: str, params: dict) -> None:
            while not done.is_set():
                answers.append((path, *answer(url, path, params)))
                time.sleep(0.05)  # leave the writers some CPU

        def watch_files() -> None:
            while not done.is_set():
                missing.extend(listed_files_exist(root))
                time.sleep(0.05)

        threads = [threading.Thread(target=poll, args=route) for route in ROUTES]
        threads.append(threading.Thread(target=watch_files))
        for thread in threads:
            thread.start()
        try:
            for command in writers:
                result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
                assert result.returncode == 0, result.stderr[-3000:]
        finally:
            done.set()
            for thread in threads:
                thread.join()
    published = snapshot.meta(snapshot.current(root))["generation"] - snapshot.meta(snapshot.current(reference))[
        "generation"]
    assert published > 25, f"the writers published only {published} snapshots"  # encode 3 + 2 per SAE, link ~11
    wrong = [(path, round(end - start, 2), body) for path, start, end, body in answers if body != baseline[path]]
    assert not wrong, f"{len(wrong)} of {len(answers)} answers differ from before the writes, e.g. {wrong[:3]}"
    assert not missing, f"a current snapshot listed missing files: {sorted(set(missing))[:5]}"
    per_route = {path: sum(1 for a in answers if a[0] == path) for path, _ in ROUTES}
    assert min(per_route.values()) >= 10, per_route
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_a_reader_during_link_sees_the_old_dictionary_then_the_new_one(two_branch_atlas, tmp_path):
    """`atlas link` commits one SAE's labels at a time; a reader polling meanwhile must see two states only: the
    dictionary before (here: none) and the whole new one."""
    root = tmp_path / "atlas"
    shutil.copytree(two_branch_atlas, root, ignore=shutil.ignore_patterns("report"))
    with Catalog(root).write("concept_labels", "concepts", "stages") as tx:
        tx.query("DELETE FROM concept_labels")
        tx.query("UPDATE concepts SET best_label = NULL")
        tx.query("DELETE FROM stages WHERE name = 'link'")
    query = ("SELECT (SELECT count(*) FROM concept_labels), (SELECT count(best_label) FROM concepts), "
             "(SELECT count(*) FROM stages WHERE name = 'link')")
    states: list[tuple] = []
    polls = 0
    with open_atlas(root) as atlas:
        writer = subprocess.Popen(atlas_command("link", "--atlas", str(root)), cwd=REPO, env=ENV,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while True:
            running = writer.poll() is None
            state = atlas.sql(query).rows[0]
            polls += 1
            if not states or states[-1] != state:
                states.append(state)
            if not running:
                break
    assert writer.returncode == 0, writer.stderr.read()[-3000:]
    assert polls > 20, polls
    assert len(states) == 2 and states[0] == (0, 0, 0), states
    assert states[1][0] > 0 and states[1][1] > 0 and states[1][2] == 1, states
    assert (root / "tables" / "CURRENT").read_text() == snapshot.newest(root).name
