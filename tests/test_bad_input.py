"""Bad input sweep (issue 8): malformed input to every `atlas` command and every route of the web atlas.

Every case must fail with one line that says what to do -- a command with a non-zero exit code, `Error: ...`
as the last line of stderr and no traceback; a route with a 4xx and the JSON error envelope (or the error
page) -- and must leave the atlas as it was. The cases run against a copy of the session's shapes atlas;
each case compares the size and modification time of every file of it before and after, and the sweep ends
by comparing the sha256 of every file with its start. Commands that would load a model or start a long job
must refuse bad input before that: every case runs under a time limit.
"""

from __future__ import annotations

import hashlib
import html
import http.client
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import chdir, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click
import pytest
from click.testing import CliRunner

import atlas
from atlas.cli.main import main

if TYPE_CHECKING:
    from fastapi import FastAPI

CASE_SECONDS = 20
"""Longer than any refusal here takes (model-free checks take milliseconds), far shorter than any real job."""
HUGE = "x" * 100_000
A = ("--atlas", "{atlas}")


# -- the atlas copy, its fingerprints, the server ------------------------------------------------------------

def stat_fingerprint(root: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file: any write, new file or removal changes it."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            info = os.stat(path)
            found[path] = (info.st_size, info.st_mtime_ns)
    return found


def sha256_tree(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass
class Sweep:
    root: Path
    """The atlas copy every case runs against."""
    tmp: Path
    """A scratch directory outside the atlas (working directory of the commands, targets of COPY)."""
    digest: str
    """sha256 of every file of the atlas before the first case."""
    url: str = ""
    errors: list[logging.LogRecord] | None = None
    """Errors the server logged (a traceback there is a bug even when the answer was a 4xx)."""


class Collect(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def serving(app: FastAPI, records: list[logging.LogRecord]) -> Iterator[str]:
    """The web atlas `app` (from create_app) on a loopback port under uvicorn, as `atlas serve` runs it, in a
    thread of this process (a subprocess would import torch again); what uvicorn logs as errors goes to `records`."""
    import uvicorn

    from atlas.server import server_config

    logger = logging.getLogger("uvicorn.error")
    handler = Collect(records)
    logger.addHandler(handler)
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(server_config(app, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the web atlas did not start"
            time.sleep(0.05)
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def sweep(shapes_atlas: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sweep]:
    from atlas.server import create_app

    where = tmp_path_factory.mktemp("bad-input")
    shutil.copytree(shapes_atlas, where / "atlas")
    (where / "scratch").mkdir()
    (where / "outside.txt").write_text("a file next to the atlas, which no query may read")
    state = Sweep(where / "atlas", where / "scratch", sha256_tree(where / "atlas"), errors=[])
    with serving(create_app(state.root, threads=1), state.errors) as url:
        state.url = url
        yield state


@contextmanager
def refused_quickly(root: Path, errors: list[logging.LogRecord]) -> Iterator[None]:
    """The case must finish within CASE_SECONDS (SIGALRM stops one that started real work), change no file
    of the atlas and make the server log no error."""
    def expire(*_: object) -> None:
        raise TimeoutError(f"still running after {CASE_SECONDS} s: bad input must be refused before real work")

    before = stat_fingerprint(root)
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(CASE_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert stat_fingerprint(root) == before, "the atlas changed"
    assert not errors, [r.getMessage() for r in errors]


# -- commands ------------------------------------------------------------------------------------------------

def cli(*args: str, expect: str) -> pytest.param:
    """A command line (`{atlas}` and `{tmp}` are filled in) and a regex its one-line error must match."""
    shown = " ".join(a if len(a) < 40 else f"<{len(a)} chars>" for a in args)
    return pytest.param(list(args), expect, id=shown)


CLI_CASES = [
    # sql: writes, several statements, files outside the atlas, malformed SQL and options
    cli("sql", "INSERT INTO images VALUES (1)", *A, expect="INSERT statements are refused"),
    cli("sql", "UPDATE concepts SET name = 'x'", *A, expect="UPDATE statements are refused"),
    cli("sql", "DELETE FROM images", *A, expect="DELETE statements are refused"),
    cli("sql", "WITH doomed AS (SELECT 1) DELETE FROM images", *A, expect="DELETE statements are refused"),
    cli("sql", "CREATE TABLE x AS SELECT 1", *A, expect="CREATE statements are refused"),
    cli("sql", "COPY (SELECT 1) TO '{tmp}/stolen.csv'", *A, expect="COPY statements are refused"),
    cli("sql", "EXPLAIN ANALYZE COPY (SELECT 1) TO '{atlas}/written.csv'", *A, expect="EXPLAIN only runs on a SELECT"),
    cli("sql", "ATTACH '{tmp}/other.duckdb'", *A, expect="ATTACH statements are refused"),
    cli("sql", "INSTALL httpfs", *A, expect="INSTALL statements are refused"),
    cli("sql", "LOAD httpfs", *A, expect="LOAD statements are refused"),
    cli("sql", "SET enable_external_access = true", *A, expect="SET statements are refused"),
    cli("sql", "SELECT 1; DROP TABLE x", *A, expect="one statement at a time, got 2"),
    cli("sql", "SELECT * FROM read_csv('/etc/passwd')", *A, expect="may only read the atlas' own views and files"),
    cli("sql", "SELECT * FROM read_text('{atlas}/../../../../etc/passwd')", *A, expect="may only read the atlas'"),
    cli("sql", "SELECT * FROM read_parquet('../other.parquet')", *A, expect="may only read the atlas'"),
    cli("sql", "SELEC 1", *A, expect='syntax error at or near "SELEC"'),
    cli("sql", "", *A, expect="empty query: write one SELECT statement"),
    cli("sql", "SELECT 1", *A, "--max-rows", "many", expect="'many' is not a valid integer"),
    cli("sql", "SELECT 1", *A, "--timeout", "-1", expect="not in the range 0<x<=86400"),
    cli("sql", "SELECT 1", *A, "--timeout", "0", expect="not in the range 0<x<=86400"),
    cli("sql", "SELECT 1", *A, "--timeout", "nan", expect="'nan' is not a finite number"),
    cli("sql", "SELECT 1", *A, "--timeout", "inf", expect="not in the range 0<x<=86400"),
    cli("sql", "SELECT 1", *A, "--timeout", "1e308", expect="not in the range 0<x<=86400"),
    cli("sql", "SELECT 1", *A, "--max-bytes", "0", expect="not in the range x>=1"),
    cli("sql", "SELECT list(i) FROM range(100000000) t(i)", *A, expect="needed more than the .* of memory"),
    cli("sql", "SELECT i FROM range(10000000000) t(i)", *A, "-o", "{tmp}/all.csv", "--timeout", "1",
        expect="query stopped after the 1 s time limit"),
    cli("sql", "SELECT 1", *A, "--format", "parquet", expect="--format parquet needs --output FILE"),
    cli("sql", "SELECT 1", *A, "--format", "csv", "--output", "{tmp}/no/such/dir/x.csv",
        expect="cannot write .*; choose another --output"),
    cli("sql", "SELECT 1", "--atlas", "{tmp}/no-atlas", expect="no atlas at .*: build one with `atlas build"),
    # search: unknown labels, blocks, timesteps, branches, concept ids; empty and huge text
    cli("search", "red circl", *A, expect="unknown label 'red circl': did you mean 'red circle'"),
    cli("search", "red circle", "--t", "7", *A, expect=r"unknown t 7.0: this atlas has t 1.0, 0.5, 0.0"),
    cli("search", "red circle", "--t", "late", *A, expect="'late' is not a valid float"),
    cli("search", "red circle", "--block", "../../etc", *A, expect="unknown block '../../etc': this atlas has block"),
    cli("search", "red circle", "--branch", "nope", *A, expect="unknown branch 'nope': this atlas has branch cond"),
    cli("search", "red circle", "--k", "0", *A, expect="not in the range x>=1"),
    cli("search", "--like", "mid/1.0", *A, expect=r"bad concept id 'mid/1.0'.*write <block>/<t>/<latent>"),
    cli("search", "--like", "mid/1.0/99999", *A, expect=r"does not exist: the SAE mid/1.0 has latents 0\.\.\d+"),
    cli("search", "--like", "nowhere/1.0/3", *A, expect="unknown block 'nowhere'"),
    cli("search", "--like", "mid/1.0/cond@k9/3", *A, expect=r"unknown variant 'k9': this atlas has variant '' \(the "
        r"primary SAE\)$"),
    cli("search", "--like", "mid/1.0/cond@/3", *A, expect="followed by a variant name such as k20"),
    cli("search", "red circle", "--variant", "k9", *A, expect="unknown variant 'k9'"),
    cli("search", "red circle", "--sae-k", "99", *A, expect=r"unknown k 99: this atlas has k \d+$"),
    cli("search", "--like", "mid/1.0/3", "--variant", "k9", *A, expect="do not apply to --like"),
    cli("search", "", *A, expect="give a LABEL or --like CONCEPT_ID"),
    cli("search", HUGE, *A, expect="give a label of at most 200"),
    # edit: empty and huge prompts, negative strengths, unknown concepts, SQL writes, bad regions
    cli("edit", "", "--concept", "red circle", *A, expect="is empty: give the text of the image"),
    cli("edit", "   ", "--concept", "red circle", *A, expect="is empty: give the text of the image"),
    cli("edit", HUGE, "--concept", "red circle", *A, expect="has 100,000 characters; give at most 1000"),
    cli("edit", "a red circle", "--concept", "red circle", "--strength", "-5", *A, expect="not in the range x>=0"),
    cli("edit", "a red circle", "--concept", "red circle", "--concepts-t", "2", *A, expect=r"2 is outside \[0, 1\]"),
    cli("edit", "a red circle", "--concept", "red circle", "--concepts-t", "1,0.5", *A,
        expect="bad --concepts-t '1,0.5': give the t of one SAE"),
    cli("eval-edits", "--concepts-t", "0.3", "--n", "1", *A, expect="no cond SAE of up at t=0.3 for --concepts-t"),
    cli("edit", "a red circle", "--concept", "red circle", "--strength", "nan", *A, expect="is not a finite number"),
    cli("edit", "a red circle", "--concept", "nope", *A, expect="unknown label 'nope'"),
    cli("edit", "a red circle", "--concept", "mid/9.0/1", *A, expect="unknown t 9.0: this atlas has t"),
    cli("edit", "a red circle", "--concept", "SELECT concept_id FROM concepts; DELETE FROM concepts", *A,
        expect="one statement at a time, got 2"),
    cli("edit", "a red circle", "--concept", "WITH x AS (SELECT 1) DELETE FROM concepts", *A,
        expect="DELETE statements are refused"),
    cli("edit", "a red circle", "--concept", "red circle", "--region", "../../etc/passwd", *A,
        expect="bad region '../../etc/passwd': use one of"),
    cli("edit", "a red circle", "--concept", "red circle", "--region", "{tmp}/../../no/such/mask.png", *A,
        expect="region mask .* does not exist"),
    cli("edit", "a red circle", "--concept", "red circle", "--region", "top-left", "--region", "left", *A,
        expect="got 2 regions for 1 concepts"),
    cli("edit", "a red circle", "--concept", "red circle", "--when", "sometimes", *A, expect="bad window 'sometimes'"),
    cli("edit", "a red circle", "--concept", "red circle", "--block", "nope", *A, expect="no SAE of block 'nope'"),
    cli("edit", "a red circle", "--concept", "red circle", "--branch", "uncond", *A,
        expect="'uncond' is not one of 'cond', 'both'"),
    cli("edit", "a red circle", "--concept", "red circle", "--max-concepts", "0", *A, expect="not in the range x>=1"),
    cli("edit", "a red circle", "--concept", "red circle", "--seed", "-1", *A, expect="not in the range x>=0"),
    cli("edit", "a red circle", *A, expect="Missing option '--concept'"),
    # eval-edits
    cli("eval-edits", "--kind", "colour", *A, expect="'colour' is not one of 'spatial', 'style'"),
    cli("eval-edits", "--n", "0", *A, expect="not in the range x>=1"),
    cli("eval-edits", "--strengths", "2,-5", *A, expect=r"-5 is outside \[0, inf\]"),
    cli("eval-edits", "--strengths", "lots", *A, expect="'lots' is not a number"),
    cli("eval-edits", "--windows", "0.2-0.4", *A, expect="measures the named windows"),
    cli("eval-edits", "--block", "nope", *A, expect="no cond SAE of block 'nope'"),
    cli("eval-edits", "--batch-size", "0", *A, expect="not in the range x>=1"),
    cli("eval-edits", "--kind", "style", "--style", "plaid background", *A,
        expect="--style 'plaid background' is no label of"),
    # predict-layout
    cli("predict-layout", "", "--label", "red circle", *A, expect="is empty: give the text of the image"),
    cli("predict-layout", HUGE, "--label", "red circle", *A, expect="give at most 1000"),
    cli("predict-layout", "a red circle", "--label", "nope", *A, expect="unknown label 'nope'"),
    cli("predict-layout", "a red circle", "--label", "red circle", "--t", "7", *A,
        expect="no SAE of block 'up' at t=7.0 on the cond branch; this atlas has"),
    cli("predict-layout", "a red circle", "--label", "red circle", "--block", "nope", *A,
        expect="no SAE of block 'nope' at t=1.0 on the cond branch"),
    cli("predict-layout", "a red circle", "--label", "red circle", "--branch", "both", *A,
        expect="'both' is not one of 'cond', 'uncond'"),
    cli("predict-layout", "a red circle", "--label", "red circle", "--threshold", "5", *A,
        expect="not in the range -1<=x<=1"),
    cli("predict-layout", "a red circle", "--label", "red circle", "--method", "best", *A,
        expect="'best' is not one of 'weighted', 'top-concept'"),
    # generate and capture: refused before the model loads
    cli("generate", "", expect="is empty: give the text of the image"),
    cli("generate", HUGE, expect="give at most 1000"),
    cli("generate", expect="give prompts as arguments or with --prompts FILE"),
    cli("generate", "a red circle", "--n-per-prompt", "-1", expect="not in the range x>=1"),
    cli("generate", "a red circle", "--steps", "many", expect="'many' is not a valid integer"),
    cli("generate", "a red circle", "--seed", "-5", expect="not in the range x>=0"),
    cli("generate", "a red circle", "--guidance", "nan", expect="is not a finite number"),
    cli("generate", "a red circle", "--batch-size", "0", expect="not in the range x>=1"),
    cli("generate", "a red circle", "--device", "gpu9", expect="unknown device 'gpu9': use auto, cpu, cuda"),
    cli("generate", "a red circle", "--prompts", "../../no/such/prompts.txt", expect="does not exist"),
    cli("capture", "--out", "{tmp}/acts", expect="give exactly one of --prompts FILE or --n-prompts N"),
    cli("capture", "--n-prompts", "-5", "--out", "{tmp}/acts", expect="not in the range x>=0"),
    cli("capture", "--n-prompts", "3", "--t", "2.0", "--out", "{tmp}/acts", expect=r"2.0 is outside \[0, 1\]"),
    cli("capture", "--n-prompts", "3", "--t", "first", "--out", "{tmp}/acts", expect="'first' is not a number"),
    cli("capture", "--n-prompts", "3", "--branches", "cond,x", "--out", "{tmp}/acts",
        expect="'x' is not one of cond, uncond, both"),
    cli("train-online", "--activations", "{tmp}/held", expect=r"give --prompts FILE or --n-images N"),
    cli("train-online", "--n-images", "8", "--keep", "train", "--activations", "{tmp}/held",
        expect="'train' is not one of dictionary, test"),
    cli("train-online", "--n-images", "8", "--buffer-gb", "-1", "--activations", "{tmp}/held",
        expect="--buffer-gb must be a positive number of GB"),
    # shapes
    cli("shapes", "train", "--minutes", "-1", expect="not in the range x>0"),
    cli("shapes", "train", "--batch-size", "0", expect="not in the range x>=1"),
    cli("shapes", "train", "--lr", "nan", expect="is not a finite number"),
    cli("shapes", "train", "--schedule", "cosine", expect="'cosine' is not one of 'zero-snr', 'sd'"),
    cli("shapes", "train", "--object-count-weights", "0,0", expect="give one weight per object count, e.g. 0.4"),
    cli("shapes", "train", "--object-count-weights", "few", expect="'few' is not a number"),
    cli("shapes", "train", "--object-count-weights", "0,0,0,0,1", expect="a scene holds at most 4 objects"),
    cli("shapes", "train", "--attention-depth", "0", expect="not in the range x>=1"),
    cli("shapes", "train", "--shared-colour-fraction", "2", expect="2.0 is not in the range 0<=x<=1"),
    cli("shapes", "export", "--run-dir", "../../etc", expect="no checkpoint in ../../etc: run `atlas shapes train"),
    cli("shapes", "export", "--guidance", "0", expect="0.0 is not in the range x>0"),
    cli("shapes", "eval", "--n", "0", expect="not in the range x>=1"),
    cli("shapes", "eval", "--seed", "-1", expect="not in the range x>=0"),
    cli("shapes", "eval", "--model", "../../etc/passwd", expect="no model '../../etc/passwd'"),
    cli("shapes", "draw", expect="No such command 'draw'"),
    # train, encode, annotate, link: unknown blocks, timesteps, branches, sizes
    cli("train", "--activations", "{tmp}/no-acts", "--all", expect="is not an activation directory"),
    cli("train", "--activations", "{atlas}/activations", "--block", "../../x", "--t", "1.0", "--out", "{tmp}/saes",
        expect="block '../../x' was not captured"),
    cli("train", "--activations", "{atlas}/activations", "--block", "mid", "--t", "7", "--out", "{tmp}/saes",
        expect="t=7.0 was not captured"),
    cli("train", "--activations", "{atlas}/activations", "--block", "mid", "--out", "{tmp}/saes",
        expect=r"give --block and --t \(or --all\)"),
    cli("train", "--activations", "{atlas}/activations", "--all", "--k", "0", "--out", "{tmp}/saes",
        expect=r"0 is outside \[1, inf\]"),
    cli("train", "--activations", "{atlas}/activations", "--all", "--k", "10,x", "--out", "{tmp}/saes",
        expect="'x' is not an integer: give comma-separated numbers, e.g. 10,20"),
    cli("train", "--activations", "{atlas}/activations", "--all", "--k", "4,4", "--out", "{tmp}/saes",
        expect=r"k: give distinct positive numbers, e.g. 10 or 10,20 \(got \[4, 4\]\)"),
    cli("train", "--activations", "{atlas}/activations", "--all", "--latents", "0x", "--out", "{tmp}/saes",
        expect="give a positive count"),
    cli("train", "--activations", "{atlas}/activations", "--all", "--branch", "nope", "--out", "{tmp}/saes",
        expect="no captured activations of branch 'nope'"),
    cli("encode", "--activations", "{tmp}/no-acts", "--saes", "{atlas}/saes", *A, expect="is not an activation dir"),
    cli("encode", "--activations", "{atlas}/activations", "--saes", "{tmp}/no-saes", *A, expect="does not exist"),
    cli("encode", "--activations", "{atlas}/activations", "--saes", "{atlas}/saes", "--branch", "both", *A,
        expect="'both' is not one of 'cond', 'uncond'"),
    cli("annotate", "--annotator", "nope", *A, expect="'nope' is not one of 'shapes', 'grounded-sam'"),
    cli("annotate", "--annotator", "grounded-sam", "--tagger", "nope", *A, expect="'nope' is not one of"),
    cli("annotate", "--batch-size", "0", *A, expect="not in the range x>=1"),
    cli("evolve", "--links", "0", *A, expect="not in the range x>=1"),
    cli("evolve", "--active-fraction", "1.5", *A, expect="not in the range 0<=x<=1"),
    cli("evolve", "--max-images", "-1", *A, expect="not in the range x>=0"),
    cli("evolve", "--atlas", "{tmp}/no-atlas", expect="no atlas at"),
    cli("search", "--like", "mid/1.0/0", "--follow", "ancestry", *A, expect="'ancestry' is not one of"),
    cli("link", "--iou", "2", *A, expect="not in the range 0<=x<=1"),
    cli("link", "--threshold", "-1", *A, expect="not in the range 0<=x<=1"),
    cli("link", "--min-hits", "-1", *A, expect="not in the range x>=1"),
    cli("link", "--source", "nope", *A, expect="has no annotations from 'nope'"),
    # build and demo: refused before the first stage starts
    cli("build", "--preset", "sd15", *A, expect="'sd15' is not one of 'shapes', 'sd14'"),
    cli("build", "--preset", "sd14", *A, expect="--preset sd14 needs --prompts FILE"),
    cli("build", "--n-images", "0", *A, expect="not in the range x>=1"),
    cli("build", "--k", "0", *A, expect=r"0 is outside \[1, inf\]"),
    cli("build", "--latents", "lots", *A, expect="give a positive count"),
    cli("build", "--branches", "x", *A, expect="'x' is not one of cond, uncond, both"),
    cli("build", "--prompts", "{tmp}/no-prompts.txt", *A, expect="does not exist"),
    cli("build", "--device", "gpu", *A, expect="unknown device 'gpu'"),
    cli("build", "--annotator", "nope", *A, expect="'nope' is not one of"),
    cli("build", "--annotator", "grounded-sam", "--grounding-dino", "{tmp}/no-dino", *A,
        expect="Grounding DINO weights .*no-dino are not on this machine"),
    cli("build", "--sae-batch-size", "0", *A, expect="not in the range x>=1"),
    cli("build", "--atlas", "{atlas}/catalog.duckdb", expect="'.*catalog.duckdb' is a file"),
    cli("build", "--atlas", "{atlas}/..", expect="holds 3 entries no atlas has .*pass --any-directory"),
    cli("build", "--model", "/nonexistent", "--atlas", "{tmp}/new-atlas", expect="not in the local Hugging Face"),
    cli("capture", "--n-prompts", "3", "--out", "{atlas}/catalog.duckdb", expect="'.*catalog.duckdb' is a file"),
    cli("edit", "a red circle", "--concept", "red circle", "--region", "/etc/passwd", *A,
        expect="region mask /etc/passwd is not a readable image"),
    cli("demo", "--n-images", "-1", *A, expect="not in the range x>=1"),
    cli("demo", "--device", "tpu", *A, expect="unknown device 'tpu'"),
    # report, check, serve, upgrade
    cli("report", "--atlas", "{tmp}/no-atlas", expect="no atlas at"),
    cli("check", "--max-lines", "-1", *A, expect="not in the range x>=0"),
    cli("check", "--atlas", "{atlas}/tables", expect="no atlas at"),
    cli("serve", "--port", "70000", *A, expect=r"not in the range 0<=x<=65535"),
    cli("serve", "--threads", "-1", *A, expect="not in the range x>=0"),
    cli("serve", "--host", "no such host", *A, expect="cannot listen on no such host:8000: .*; choose another --host"),
    cli("serve", "--atlas", "{tmp}/no-atlas", expect="no atlas at"),
    cli("upgrade", "--atlas", "{tmp}/no-atlas", expect="no atlas at"),
    cli("export", "--atlas", "{tmp}/no-atlas", "--out", "{tmp}/export", expect="no atlas at"),
    cli("export", *A, "--out", "{tmp}/export", "--top-images", "0", expect="--top-images must be at least 1"),
    cli("bench-saes", "--atlas", "{tmp}/no-atlas", expect="no atlas at"),
    cli("bench-saes", *A, "--sweep-k", "0", expect="0 is outside"),
    cli("bench-saes", *A, "--sweep-types", "gated", expect="'gated' is not one of topk, batchtopk"),
    cli("bench-saes", *A, "--sweep-k", "4", "--sweep-key", "up/9.0/cond", expect="no SAE 'up/9.0/cond' in .*; name"),
    cli("upgrade", "--atlas", "{atlas}/codes", expect="no atlas at"),
    cli("sketch", expect="No such command 'sketch'"),
    # outputs that could not be written (under a file, or a file where a directory goes): refused while parsing
    cli("generate", "a red circle", "--out", "{tmp}/../outside.txt/out",
        expect="cannot write .*/outside.txt/out: .*/outside.txt is not a writable directory"),
    cli("capture", "--n-prompts", "3", "--out", "{tmp}/../outside.txt", expect="Directory .*outside.txt' is a file"),
    cli("train", "--activations", "{atlas}/activations", "--all", "--out", "{tmp}/../outside.txt/saes",
        expect="outside.txt is not a writable directory"),
    cli("predict-layout", "a red circle", "--label", "red circle", "--out", "{tmp}", *A,
        expect="File .* is a directory"),
    cli("report", "--out", "{tmp}/../outside.txt/report", *A, expect="outside.txt is not a writable directory"),
    cli("edit", "a red circle", "--concept", "red circle", "--out", "{tmp}/../outside.txt/edit.png", *A,
        expect="outside.txt is not a writable directory"),
    cli("eval-edits", "--out", "{tmp}/../outside.txt/edits", *A, expect="outside.txt is not a writable directory"),
    cli("build", "--atlas", "{tmp}/../outside.txt/atlas", expect="outside.txt is not a writable directory"),
    cli("demo", "--atlas", "{tmp}/../outside.txt", expect="Directory .*outside.txt' is a file"),
    cli("shapes", "train", "--run-dir", "{tmp}/../outside.txt/run", expect="outside.txt is not a writable directory"),
    cli("shapes", "export", "--out", "{tmp}/../outside.txt/model", expect="outside.txt is not a writable directory"),
    cli("shapes", "eval", "--out", "{tmp}/../outside.txt/eval", expect="outside.txt is not a writable directory"),
    # argv bytes that are not UTF-8, as Python hands them over (surrogates); the script itself is run below
    cli("sql", "SELECT '\udcff'", *A, expect="Invalid value for 'QUERY': is not valid UTF-8 text"),
    cli("search", "red \udcfe circle", *A, expect=r"Invalid value for '\[LABEL\]': is not valid UTF-8"),
    cli("edit", "a red circle", "--concept", "red \udcff", *A, expect="Invalid value for '--concept': is not valid"),
    cli("edit", "a \udcc3 circle", "--concept", "red circle", *A, expect="Invalid value for 'PROMPT': is not valid"),
    cli("generate", "a red \udcff", expect=r"Invalid value for '\[PROMPT\]...': is not valid UTF-8"),
]


def filled(args: list[str], sweep: Sweep) -> list[str]:
    """The arguments with `{atlas}` and `{tmp}` replaced by the sweep's directories."""
    return [a.replace("{atlas}", str(sweep.root)).replace("{tmp}", str(sweep.tmp)) for a in args]


def assert_one_line_error(code: int, stderr: str, expect: str) -> None:
    assert code != 0, "bad input was accepted"
    assert "Traceback" not in stderr, stderr[-2000:]
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    assert last.startswith("Error: "), stderr[-2000:]
    assert re.search(expect, last), last


@pytest.mark.parametrize("args, expect", CLI_CASES)
def test_command_refuses_bad_input(args: list[str], expect: str, sweep: Sweep) -> None:
    run_refused(sweep.root, args, expect, sweep)
    assert not (sweep.tmp / "new-atlas").exists(), "a failed command left a half-made atlas"


def run_refused(root: Path, args: list[str], expect: str, sweep: Sweep) -> None:
    """`atlas ARGS` in this process (Click's runner: the same parsing, exit code and stderr as the script)."""
    with tempfile.TemporaryDirectory(dir=sweep.tmp) as cwd, chdir(cwd), refused_quickly(root, sweep.errors):
        result = CliRunner().invoke(main, filled(args, sweep), prog_name="atlas")
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"unhandled {type(result.exception).__name__}: {result.exception}"
    assert_one_line_error(result.exit_code, result.stderr, expect)


def test_encode_refuses_a_branch_without_saes_before_writing(sweep: Sweep, tmp_path: Path) -> None:
    """On a copy of its own: this case still writes, and the sweep's atlas must stay as it was."""
    copy = shutil.copytree(sweep.root, tmp_path / "atlas")
    run_refused(copy, ["encode", "--activations", str(copy / "activations"), "--saes", str(copy / "saes"),
                       "--branch", "uncond", "--atlas", str(copy)], "no trained SAEs under", sweep)


def console_script() -> list[str]:
    script = Path(sys.executable).with_name("atlas")
    return [str(script)] if script.exists() else [sys.executable, "-m", "atlas.cli.main"]


@pytest.mark.parametrize("args, expect", [
    ([b"sql", b"SELECT '\xff'", b"--atlas", b"{atlas}"], r"Invalid value for 'QUERY': is not valid UTF-8 text"),
    ([b"sql", b"DELETE FROM images", b"--atlas", b"{atlas}"], "DELETE statements are refused"),
], ids=["not-utf8", "write"])
def test_console_script_refuses_bad_bytes(args: list[bytes], expect: str, sweep: Sweep) -> None:
    """The installed `atlas` script, as a user runs it: argv bytes that are not UTF-8, and an exit code of 1."""
    argv = [a.replace(b"{atlas}", bytes(sweep.root)) for a in args]
    before = stat_fingerprint(sweep.root)
    done = subprocess.run([*map(str.encode, console_script()), *argv], cwd=sweep.tmp, capture_output=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1", "LC_ALL": "C.UTF-8"})
    assert_one_line_error(done.returncode, done.stderr.decode("utf-8", "replace"), expect)
    assert stat_fingerprint(sweep.root) == before, "the atlas changed"


def command_names(group: click.Group = main, prefix: str = "") -> set[str]:
    names = set()
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            names |= command_names(command, f"{prefix}{name} ")
        else:
            names.add(prefix + name)
    return names


def test_every_command_is_in_the_sweep() -> None:
    swept = {" ".join(c.values[0][:2]) if c.values[0][0] == "shapes" else c.values[0][0] for c in CLI_CASES}
    missing = command_names() - swept
    assert not missing, f"add bad-input cases for: {', '.join(sorted(missing))}"


# -- routes --------------------------------------------------------------------------------------------------

@dataclass
class Http:
    route: str
    """METHOD and path template, as /openapi.json names it (HTML pages by their own path)."""
    url: str
    """What is sent: already percent-encoded (or not, to test raw bytes)."""
    status: int
    expect: str
    body: bytes | None = None
    form: bool = False
    headers: dict[str, str] | None = None
    """Extra headers; a write is sent with its session's cookie and CSRF token unless these set the token."""


def web(route: str, url: str, status: int, expect: str, body: bytes | None = None, form: bool = False,
        headers: dict[str, str] | None = None) -> pytest.param:
    return pytest.param(Http(route, url, status, expect, body, form, headers), id=f"{route.split()[0]} {url[:70]}")


NAME = "/concept/mid/1.0/1/name"
EVIL = {"Origin": "http://evil.example"}
NO_TOKEN = {"X-CSRF-Token": ""}
MANY_CONCEPTS = json.dumps({"prompt": "a", "concept": "SELECT concept_id FROM concepts LIMIT 100"}).encode()


HTTP_CASES = [
    web("GET /.json", "/.json?x=%ff", 400, "query string is not valid UTF-8"),
    web("GET /.csv", "/.csv?%c3%28", 400, "query string is not valid UTF-8"),
    web("GET /concepts.json", "/concepts.json?t=abc", 400, "bad t: Input should be a valid number"),
    web("GET /concepts.json", "/concepts.json?t=7", 404, "unknown t 7.0: this atlas has t 1.0, 0.5, 0.0"),
    web("GET /concepts.json", "/concepts.json?block=nope", 404, "unknown block 'nope': this atlas has block"),
    web("GET /concepts.json", "/concepts.json?branch=nope", 404, "unknown branch 'nope'"),
    web("GET /concepts.json", "/concepts.json?limit=-1", 400, "bad limit: Input should be greater than or equal"),
    web("GET /concepts.json", "/concepts.json?after=nan:1:1", 400, "bad page token 'nan:1:1': use the `next`"),
    web("GET /concepts.json", "/concepts.json?label=%ff", 400, "query string is not valid UTF-8"),
    web("GET /concepts.json", "/concepts.json?label=" + "x" * 600, 400, "bad label: String should have at most"),
    web("GET /concepts.csv", "/concepts.csv?block=%ff%fe", 400, "query string is not valid UTF-8"),
    web("GET /concept/{concept_id}.json", "/concept/nope.json", 400, "bad concept id 'nope'"),
    web("GET /concept/{concept_id}.json", "/concept/mid/1.0/99999.json", 404, r"has latents 0\.\.\d+"),
    web("GET /concept/{concept_id}.json", "/concept/mid/7.0/1.json", 404, "unknown t 7.0"),
    web("GET /concept/{concept_id}.json", "/concept/mid/1.0/cond@k9/1.json", 404, "unknown variant 'k9'"),
    web("GET /concept/{concept_id}.json", "/concept/mid/1.0/cond%40%2F1.json", 400, "followed by a variant name"),
    web("GET /concepts.json", "/concepts.json?variant=k9", 404, "unknown variant 'k9'"),
    web("GET /concept/{concept_id}.json", "/concept/mid/1.0/-1.json", 400, "is not a non-negative integer"),
    web("GET /concept/{concept_id}.json", "/concept/..%2f..%2fetc%2fpasswd.json", 400, "bad concept id '../../etc"),
    web("GET /concept/{concept_id}.json", "/concept/../../etc/passwd.json", 400, "bad concept id '../../etc"),
    web("GET /concept/{concept_id}.json", "/concept/%2e%2e/%2e%2e/1.json", 400, "bad concept id '../../1'"),
    web("GET /concept/{concept_id}.json", "/concept/%ff/1.0/1.json", 400, "URL path is not valid UTF-8"),
    web("GET /concept/{concept_id}.json", "/concept/mid/1.0/1.json?n=0", 400, "bad n"),
    web("GET /concept/{concept_id}.json", "/concept/" + "m" * 100_000 + "/1.0/1.json", 404, "unknown block"),
    web("GET /concept/{concept_id}.csv", "/concept/mid/nan/1.csv", 404, "unknown t nan"),
    web("GET /concept/{concept_id}/histogram.png", "/concept/mid/1e308/1/histogram.png", 404,
        r"unknown t 1e\+308: this atlas has t"),
    web("GET /concept/{concept_id}/words.json", "/concept/mid/9.0/1/words.json", 404, "unknown t 9"),
    web("GET /concept/{concept_id}/words.json", "/concept/mid/1.0/1/words.json?image_id=-1", 400, "bad image_id"),
    web("POST /concept/{concept_id}/name.json", "/concept/mid/1.0/1/name.json", 400, "bad name: Input should be a "
        "valid string", body=b'{"name": 5}'),
    web("POST /concept/{concept_id}/name.json", "/concept/mid/1.0/1/name.json", 400, "bad name: String should have"
        " at most 200", body=json.dumps({"name": HUGE}).encode()),
    web("POST /concept/{concept_id}/name.json", "/concept/mid/1.0/1/name.json", 400,
        "request body is not valid UTF-8", body=b'{"name": "\xff"}'),
    web("POST /concept/{concept_id}/name.json", "/concept/mid/1.0/1/name.json", 400,
        "request body is not valid JSON .*: send a JSON object", body=b'{"name": '),
    web("POST /concept/{concept_id}/name.json", "/concept/mid/1.0/1/name.json", 413, "over 1 MiB",
        body=b"{" + b" " * (1 << 20) + b"}"),
    web("POST /concept/{concept_id}/name.json", "/concept/nope/name.json", 400, "bad concept id 'nope'",
        body=b'{"name": "x"}'),
    web("POST /concept/{concept_id}/name.json", "/concept/mid/1.0/99999/name.json", 404, "does not exist",
        body=b'{"name": "x"}'),
    web("GET /labels.json", "/labels.json?limit=0", 400, "bad limit"),
    web("GET /labels.csv", "/labels.csv?after=%ff", 400, "query string is not valid UTF-8"),
    web("GET /label/{name}.json", "/label/nope.json", 404, "unknown label 'nope'"),
    web("GET /label/{name}.json", "/label/..%2f..%2fetc%2fpasswd.json", 404, "unknown label '../../etc/passwd'"),
    web("GET /label/{name}.json", "/label/%ff.json", 400, "URL path is not valid UTF-8"),
    web("GET /label/{name}.csv", "/label/red%20circle.csv?per_sae=-1", 400, "bad per_sae"),
    web("GET /image/{image_id}.png", "/image/abc.png", 400, "bad image_id: Input should be a valid integer"),
    web("GET /image/{image_id}.png", "/image/-1.png", 404, "unknown image -1: browse the images at /images"),
    web("GET /image/{image_id}.png", "/image/99999999999999999999999.png", 404, "unknown image"),
    web("GET /image/{image_id}.png", "/image/0.png?size=5", 400, "bad size"),
    web("GET /image/{image_id}/heatmap.png", "/image/0/heatmap.png", 400, "bad concept: Field required"),
    web("GET /image/{image_id}/heatmap.png", "/image/0/heatmap.png?concept=mid/9.0/1", 404, "unknown t 9.0"),
    web("GET /image/{image_id}/heatmap.png", "/image/0/heatmap.png?concept=mid/1.0/1&vmax=-1", 400, "bad vmax"),
    web("GET /image/{image_id}/heatmap.png", "/image/99999/heatmap.png?concept=mid/1.0/1", 400, "unknown image"),
    web("GET /object/{object_id}.png", "/object/abc.png", 400, "bad object_id"),
    web("GET /object/{object_id}.png", "/object/99999.png", 404, "unknown object 99999"),
    web("GET /images.json", "/images.json?after=abc", 400, "bad after"),
    web("GET /images.json", "/images.json?q=%ff", 400, "query string is not valid UTF-8"),
    web("GET /images.csv", "/images.csv?limit=100000", 400, "bad limit: Input should be less than or equal"),
    web("GET /image/{image_id}.json", "/image/0.json?block=nope", 404, "unknown block 'nope'"),
    web("GET /image/{image_id}.json", "/image/0.json?t=5", 404, "unknown t 5.0"),
    web("GET /image/{image_id}.csv", "/image/99999.csv", 404, "unknown image 99999"),
    web("GET /search.json", "/search.json?q=%ff", 400, "query string is not valid UTF-8"),
    web("GET /search.json", "/search.json?k=0", 400, "bad k"),
    web("GET /search.json", "/search.json?q=" + "x" * 600, 400, "bad q: String should have at most 500"),
    web("GET /sql.json", "/sql.json?q=DELETE%20FROM%20images", 400, "DELETE statements are refused"),
    web("GET /sql.json", "/sql.json?q=INSERT%20INTO%20images%20VALUES%20(1)", 400, "INSERT statements are refused"),
    web("GET /sql.json", "/sql.json?q=UPDATE%20concepts%20SET%20name%3D'x'", 400, "UPDATE statements are refused"),
    web("GET /sql.json", "/sql.json?q=CREATE%20TABLE%20x%20(a%20INT)", 400, "CREATE statements are refused"),
    web("GET /sql.json", "/sql.json?q=select%201%3B%20drop%20table%20x", 400, "one statement at a time, got 2"),
    web("GET /sql.json", "/sql.json?q=COPY%20(select%201)%20TO%20'%2Ftmp%2Fx.csv'", 400, "COPY statements are"),
    web("GET /sql.json", "/sql.json?q=EXPLAIN%20ANALYZE%20COPY%20(select%201)%20TO%20'x.csv'", 400,
        "EXPLAIN only runs on a SELECT"),
    web("GET /sql.json", "/sql.json?q=ATTACH%20'x.duckdb'", 400, "ATTACH statements are refused"),
    web("GET /sql.json", "/sql.json?q=SELECT%20*%20FROM%20read_csv('%2Fetc%2Fpasswd')", 400,
        "may only read the atlas' own views and files"),
    web("GET /sql.json", "/sql.json?q=%ff", 400, "query string is not valid UTF-8"),
    web("GET /sql.json", "/sql.json?q=select%201&timeout=0", 400, "bad timeout"),
    web("GET /sql.json", "/sql.json?q=select%201&max_rows=many", 400, "bad max_rows"),
    web("GET /sql.json", "/sql.json?q=" + "x" * 30_000, 400, "bad q: String should have at most 20000"),
    web("GET /sql.csv", "/sql.csv?q=INSTALL%20httpfs", 400, "INSTALL statements are refused"),
    web("GET /sql.csv", "/sql.csv?q=LOAD%20httpfs", 400, "LOAD statements are refused"),
    web("POST /edit.json", "/edit.json", 400, "bad prompt: Field required", body=b"{}"),
    web("POST /edit.json", "/edit.json", 400, "bad prompt: String should have at least 1",
        body=b'{"prompt": "", "concept": "red circle"}'),
    web("POST /edit.json", "/edit.json", 400, "empty prompt", body=b'{"prompt": "   ", "concept": "red circle"}'),
    web("POST /edit.json", "/edit.json", 400, "bad prompt: String should have at most 500",
        body=json.dumps({"prompt": HUGE, "concept": "red circle"}).encode()),
    web("POST /edit.json", "/edit.json", 400, r"bad strength -5.0: give a number >= 0",
        body=b'{"prompt": "a red circle", "concept": "red circle", "strength": -5}'),
    web("POST /edit.json", "/edit.json", 404, "unknown label 'nope'", body=b'{"prompt": "a", "concept": "nope"}'),
    web("POST /edit.json", "/edit.json", 400, "one statement at a time", body=json.dumps(
        {"prompt": "a", "concept": "SELECT concept_id FROM concepts; DELETE FROM concepts"}).encode()),
    web("POST /edit.json", "/edit.json", 400, r"bad region '../../etc/passwd.png': draw it on the grid",
        body=b'{"prompt": "a", "concept": "red circle", "region": "../../etc/passwd.png"}'),
    web("POST /edit.json", "/edit.json", 400, "bad window 'bogus'",
        body=b'{"prompt": "a", "concept": "red circle", "when": "bogus"}'),
    web("POST /edit.json", "/edit.json", 404, "no SAE of block 'nope'",
        body=b'{"prompt": "a", "concept": "red circle", "block": "nope"}'),
    web("POST /edit.json", "/edit.json", 400, "bad seed", body=b'{"prompt": "a", "concept": "x", "seed": "one"}'),
    web("POST /edit.json", "/edit.json", 400, "request body is not valid UTF-8",
        body=b'{"prompt": "a \xff", "concept": "red circle"}'),
    web("GET /edit/picture/{name}.png", "/edit/picture/..%2f..%2fetc%2fpasswd.png", 404, "no page at"),
    web("GET /edit/picture/{name}.png", "/edit/picture/nope.png", 404, "no edit picture 'nope'"),
    web("GET /static", "/static/../../../etc/passwd", 404, "no page at"),
    web("GET /static", "/static/..%2f..%2f..%2fetc%2fpasswd", 404, "no page at"),
    web("GET /static", "/static/%2e%2e/%2e%2e/server/app.py", 404, "no page at"),
    web("GET /", "/%ff", 400, "URL path is not valid UTF-8"),
    web("GET /", "/nowhere.json", 404, "no page at /nowhere.json: start from the home page"),
    web("GET /concepts", "/concepts?t=abc", 400, "bad t"),
    web("GET /concept/{concept_id}", "/concept/nope", 400, "bad concept id 'nope'"),
    web("GET /label/{name}", "/label/nope", 404, "unknown label 'nope'"),
    web("GET /image/{image_id}", "/image/abc", 400, "bad image_id"),
    web("GET /sql", "/sql?q=DELETE%20FROM%20x", 400, "DELETE statements are refused"),
    web("GET /search", "/search?q=%ff", 400, "query string is not valid UTF-8"),
    web("GET /edit", "/edit?seed=-1", 400, "bad seed"),
    web("POST /concept/{concept_id}/name", "/concept/nope/name", 400, "bad concept id 'nope'", body=b"name=x",
        form=True),
    web("POST /edit", "/edit", 400, "bad prompt: Field required", body=b"concept=x", form=True),
    web("POST /edit", "/edit", 400, "bad strength 'abc'", body=b"prompt=a&concept=red+circle&strength=abc",
        form=True),
    web("POST /edit", "/edit", 400, "bad strength -1.0", body=b"prompt=a&concept=red+circle&strength=-1", form=True),
    web("POST /edit", "/edit", 400, "request body is not valid UTF-8", body=b"prompt=%ff&concept=red+circle",
        form=True),
    # issue 20: writes from other sites, unbounded results and edits, inputs the schema did not describe
    web("GET /session.json", "/session.json?x=%ff", 400, "query string is not valid UTF-8"),
    web("POST /concept/{concept_id}/name.json", NAME + ".json", 403, "refused a write from another site "
        r"\(http://evil.example\)", body=b'{"name": "x"}', headers=EVIL),
    web("POST /concept/{concept_id}/name.json", NAME + ".json", 403, "needs this session's CSRF token",
        body=b'{"name": "x"}', headers=NO_TOKEN),
    web("POST /concept/{concept_id}/name.json", NAME + ".json", 403, r"Sec-Fetch-Site: cross-site",
        body=b'{"name": "x"}', headers={"Sec-Fetch-Site": "cross-site"}),
    web("POST /concept/{concept_id}/name.json", NAME + ".json", 403, "refused a write from another site",
        body=b'{"name": "x"}', headers={"Referer": "http://localhost:1/page"}),
    web("POST /concept/{concept_id}/name", NAME, 403, "refused a write from another site", body=b"name=x",
        form=True, headers=EVIL),
    web("POST /concept/{concept_id}/name", NAME, 403, "needs this session's CSRF token", body=b"name=x", form=True,
        headers=NO_TOKEN),
    web("POST /edit.json", "/edit.json", 403, "refused a write from another site",
        body=b'{"prompt": "a", "concept": "red circle"}', headers=EVIL),
    web("POST /edit", "/edit", 403, "needs this session's CSRF token", body=b"prompt=a&concept=red+circle",
        form=True, headers=NO_TOKEN),
    web("POST /edit.json", "/edit.json", 400, "names more than 16 concepts", body=MANY_CONCEPTS),
    web("GET /sql.json", "/sql.json?q=SELECT%20list(i)%20FROM%20range(50000000)%20t(i)", 400,
        "needed more than the .* of memory user SQL may use"),
    web("GET /sql.json", "/sql.json?q=SELECT%20repeat('x'%2C%201000000)%20FROM%20range(40)", 400,
        "passed the 16 MiB limit on query results"),
    web("GET /sql.json", "/sql.json?q=select%201&timeout=nan", 400, "bad timeout"),
    web("GET /sql.json", "/sql.json?q=select%201&timeout=inf", 400, "bad timeout"),
    web("GET /sql.json", "/sql.json?q=select%201&_shape=bogus", 400, "bad _shape"),
    web("GET /sql.csv", "/sql.csv?q=select%201&timeout=1e308", 400, "bad timeout"),
    web("GET /sql.csv", "/sql.csv?q=select%201&max_rows=0", 400, "bad max_rows"),
    web("GET /sql", "/sql?q=SELEC%201", 400, 'syntax error at or near "SELEC"'),
    web("GET /concepts.json", "/concepts.json?after=%EF%BC%91:1:1", 400, "bad page token"),
    web("GET /concepts.json", "/concepts.json?after=1:%2B1:1", 400, "bad page token"),
    web("GET /concept/{concept_id}.json", "/concept/mid/1.0/%EF%BC%91.json", 400, "is not a non-negative integer"),
    web("GET /concept/{concept_id}.json", "/concept/mid/%EF%BC%91.0/1.json", 400, "is not a number"),
    web("GET /labels.json", "/labels.json", 421, "does not answer for host 'evil.example'",
        headers={"Host": "evil.example"}),
]


def session(base: str) -> dict[str, str]:
    """The cookie and CSRF token header of a new session of the server (every write needs them)."""
    connection = http.client.HTTPConnection(*base.split(":"), timeout=60)
    connection.request("GET", "/session.json")
    response = connection.getresponse()
    token = json.loads(response.read())["csrf_token"]
    cookie = response.getheader("set-cookie").split(";")[0]
    connection.close()
    return {"Cookie": cookie, "X-CSRF-Token": token}


def request(base: str, case: Http) -> tuple[int, str, str]:
    """(status, content type, body) of the case sent byte for byte as written (no client-side normalising); a
    write goes with a session's cookie and token unless the case's headers say otherwise."""
    host, port = base.split(":")
    headers = {"Content-Type": "application/x-www-form-urlencoded" if case.form else "application/json"} \
        if case.body is not None else {}
    if case.route.startswith("POST"):
        headers.update(session(base))
    headers.update(case.headers or {})
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request(case.route.split()[0], case.url, body=case.body, headers=headers)
    response = connection.getresponse()
    text = response.read().decode("utf-8", "replace")
    connection.close()
    return response.status, response.getheader("content-type", ""), text


@pytest.mark.parametrize("case", HTTP_CASES)
def test_route_refuses_bad_input(case: Http, sweep: Sweep) -> None:
    with refused_quickly(sweep.root, sweep.errors):
        status, kind, text = request(sweep.url, case)
    assert status == case.status, (status, text[:500])
    if kind.startswith("application/json"):
        body = json.loads(text)
        assert body.keys() == {"ok", "error", "status"} and body["ok"] is False and body["status"] == status
        message = body["error"]
    else:
        assert kind.startswith("text/html") and (f"<h1>Error {status}</h1>" in text or 'id="sql-error"' in text), \
            text[:500]
        message = html.unescape(re.search(r'<p class="error"[^>]*>(.*?)</p>', text, re.S).group(1))
    assert "\n" not in message and "Traceback" not in message
    assert re.search(case.expect, message), message


def test_raw_bytes_in_the_request_line_are_a_400(sweep: Sweep) -> None:
    """Bytes that are not even ASCII never reach a view: the server's HTTP parser answers 400 itself."""
    host, port = sweep.url.split(":")
    with refused_quickly(sweep.root, sweep.errors), socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET /label/\xff.json?q=\xfe HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]


def test_a_long_url_sent_in_pieces_gets_the_views_answer(sweep: Sweep) -> None:
    """However the network splits a 100 kB request line, the server reads it whole and the view answers it (h11's
    default 16 kB limit on an unfinished head made this a 400 and a reset connection when it came in pieces)."""
    host, port = sweep.url.split(":")
    head = f"GET /concept/{'m' * 100_000}/1.0/1.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    with refused_quickly(sweep.root, sweep.errors), socket.create_connection((host, int(port)), timeout=30) as sock:
        for start in range(0, len(head), 8192):
            sock.sendall(head[start:start + 8192])
            time.sleep(0.01)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 404 "), answer[:200]
    assert b"unknown block" in answer


def test_every_route_is_in_the_sweep(sweep: Sweep) -> None:
    connection = http.client.HTTPConnection(*sweep.url.split(":"), timeout=60)
    connection.request("GET", "/openapi.json")
    schema = json.loads(connection.getresponse().read())
    routes = {f"{method.upper()} {path}" for path, methods in schema["paths"].items() for method in methods}
    swept = {case.values[0].route for case in HTTP_CASES}
    assert not routes - swept, f"add bad-input cases for: {', '.join(sorted(routes - swept))}"


# -- SQL surfaces cannot reach files outside the atlas (issue 8, "SQL surfaces") -----------------------------

ESCAPES = [
    ("SELECT * FROM read_csv('/etc/passwd')", "may only read the atlas' own views and files"),
    ("SELECT * FROM read_parquet('../other.parquet')", "may only read the atlas' own views and files"),
    ("SELECT content FROM read_text('{atlas}/../outside.txt')", "may only read the atlas' own views and files"),
    ("COPY (SELECT 1) TO '{tmp}/x.csv'", "COPY statements are refused"),
    ("EXPLAIN ANALYZE COPY (SELECT 1) TO '{atlas}/x.csv'", "EXPLAIN only runs on a SELECT"),
    ("ATTACH '{tmp}/x.duckdb' AS other", "ATTACH statements are refused"),
    ("INSTALL httpfs", "INSTALL statements are refused"),
    ("SET enable_external_access = true", "SET statements are refused"),
    ("SELECT 1; COPY (SELECT 1) TO '{tmp}/x.csv'", "one statement at a time"),
]


def refusal(surface: str, query: str, sweep: Sweep) -> str:
    """The one-line error of `query` through the Python API, the `atlas sql` command or the /sql.json route."""
    if surface == "python":
        with atlas.open(sweep.root) as store, pytest.raises(atlas.AtlasError) as info:
            store.sql(query)
        return str(info.value)
    if surface == "cli":
        result = CliRunner().invoke(main, ["sql", query, "--atlas", str(sweep.root)])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        return result.stderr.strip().splitlines()[-1]
    from urllib.parse import quote

    status, _, text = request(sweep.url, Http("GET /sql.json", f"/sql.json?q={quote(query)}", 400, ""))
    assert status == 400, text
    return json.loads(text)["error"]


@pytest.mark.parametrize("surface", ["python", "cli", "http"])
@pytest.mark.parametrize("query, why", ESCAPES, ids=[q.split("(")[0].split("'")[0].strip() for q, _ in ESCAPES])
def test_sql_surfaces_stay_inside_the_atlas(surface: str, query: str, why: str, sweep: Sweep) -> None:
    scratch = sorted(sweep.tmp.rglob("*"))
    with refused_quickly(sweep.root, sweep.errors):
        message = refusal(surface, filled([query], sweep)[0], sweep)
    assert why in message and "\n" not in message, message
    assert sorted(sweep.tmp.rglob("*")) == scratch, "the query wrote a file"


def test_sql_is_locked_down_and_the_atlas_views_still_read(sweep: Sweep) -> None:
    """External access is off and locked, yet every view, codes included (they read the atlas's Parquet
    files at query time), answers; a later snapshot generation is picked up under the same lock."""
    with atlas.open(sweep.root) as store:
        settings = dict(store.sql("SELECT name, value FROM duckdb_settings() WHERE name IN "
                                  "('enable_external_access', 'lock_configuration')").rows)
        assert settings == {"enable_external_access": "false", "lock_configuration": "true"}
        counts = store.sql("SELECT (SELECT count(*) FROM codes) AS codes, (SELECT count(*) FROM codes_by_image) "
                           "AS by_image, (SELECT count(*) FROM images) AS images, (SELECT count(*) FROM "
                           "concept_labels) AS links").to_dicts()[0]
        assert counts["codes"] == counts["by_image"] > 0 and counts["images"] == 48 and counts["links"] > 0
        concept = store.sql("SELECT concept_id FROM concept_labels ORDER BY mean_iou DESC LIMIT 1").rows[0][0]
        assert store.top_images(concept, n=3)


# -- the whole sweep -----------------------------------------------------------------------------------------

def test_atlas_is_unchanged_after_the_sweep(sweep: Sweep) -> None:
    """Runs last in this module: every byte of every file of the atlas is as it was before the first case."""
    assert sha256_tree(sweep.root) == sweep.digest
    assert not sweep.errors, [r.getMessage() for r in sweep.errors]
