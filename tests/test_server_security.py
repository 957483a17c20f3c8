"""Issue 20 against a real server: writes from other sites refused, results and requests bounded, the memory
probe answered in one line while other pages keep answering, exports whole or visibly cut, the API's shapes."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from test_bad_input import serving
from test_server import writer

import atlas
from atlas.cli.main import main


@pytest.fixture(scope="module")
def site(shapes_atlas: Path, tmp_path_factory: pytest.TempPathFactory):
    from atlas.server import create_app

    root = tmp_path_factory.mktemp("security") / "atlas"
    shutil.copytree(shapes_atlas, root)
    records: list = []
    with serving(create_app(root, threads=1), records) as url:
        yield f"http://{url}", root


def concept_name(root: Path, cid: str) -> str | None:
    with atlas.open(root) as store:
        return store.concept(cid).name


def test_cross_site_writes_are_refused_and_change_nothing(site):
    base, root = site
    cid = "mid/1.0/7"
    url = f"{base}/concept/{cid}/name"
    evil = requests.post(url, data={"name": "pwned"}, headers={"Origin": "http://evil.example"}, timeout=60,
                         allow_redirects=False)
    assert evil.status_code == 403 and "another site" in evil.text
    assert requests.post(url + ".json", json={"name": "pwned"}, timeout=60).status_code == 403
    own = writer(base)
    stolen = requests.post(url + ".json", json={"name": "pwned"}, headers={"X-CSRF-Token": own.headers[
        "X-CSRF-Token"]}, timeout=60)  # the token without its session's cookie
    assert stolen.status_code == 403 and "CSRF token" in stolen.json()["error"]
    assert concept_name(root, cid) is None
    page = own.get(f"{base}/concept/{cid}", timeout=60).text
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page).group(1)
    saved = own.post(url, data={"name": "round thing", "csrf_token": token}, headers={"Origin": base},
                     allow_redirects=False, timeout=60)
    assert saved.status_code == 303
    assert concept_name(root, cid) == "round thing"
    assert own.post(url + ".json", json={"name": None}, timeout=60).json()["ok"]


def memory_mb(field: str = "VmRSS") -> float:
    """This process's (the server's: it runs in a thread here) resident memory, or its peak since the last reset."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field}")


def test_memory_probe_is_one_line_while_other_pages_answer(site):
    base, _ = site
    waits: list[float] = []
    stop = threading.Event()

    def read_pages() -> None:
        while not stop.is_set():
            start = time.monotonic()
            requests.get(f"{base}/labels.json", timeout=60).raise_for_status()
            waits.append(time.monotonic() - start)

    before = memory_mb()
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from here: other tests' models stay out
    reader = threading.Thread(target=read_pages)
    reader.start()
    start = time.monotonic()
    probe = requests.get(f"{base}/sql.json", params={"q": "SELECT list(i) FROM range(50000000) t(i)"}, timeout=60)
    took = time.monotonic() - start
    time.sleep(0.5)
    stop.set()
    reader.join()
    assert probe.status_code == 400 and "memory" in probe.json()["error"], probe.text[:300]
    grew = memory_mb("VmHWM") - before
    assert took < 30 and grew < 1024, (took, grew)  # unbounded, the probe's answer alone is 4+ GB
    assert waits and max(waits) < 2.0, waits


def test_csv_export_streams_every_row_and_a_cut_is_visible(site):
    base, _ = site
    whole = requests.get(f"{base}/sql.csv", params={"q": "SELECT i FROM range(25000) t(i)"}, timeout=60)
    lines = whole.text.splitlines()
    assert whole.status_code == 200 and len(lines) == 25001 and lines[-1] == "24999"
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(f"{base}/sql.csv", params={"q": "SELECT i, repeat('x', 50) FROM range(10000000000) t(i)",
                                                 "timeout": 1}, timeout=60)
    bad = requests.get(f"{base}/sql.csv", params={"q": "SELEC 1"}, timeout=60)
    assert bad.status_code == 400 and "syntax error" in bad.json()["error"]


def test_json_shapes_and_rows_once(site):
    base, _ = site
    q = {"q": "SELECT concept_id, latent FROM concepts ORDER BY concept_id LIMIT 3"}
    arrays = requests.get(f"{base}/sql.json", params=q, timeout=60).json()
    objects = requests.get(f"{base}/sql.json", params={**q, "_shape": "objects"}, timeout=60).json()
    array = requests.get(f"{base}/sql.json", params={**q, "_shape": "array"}, timeout=60).json()
    assert arrays["table"]["columns"] == ["concept_id", "latent"] and len(arrays["table"]["rows"]) == 3
    assert objects["table"]["rows"] == array == [dict(zip(["concept_id", "latent"], r))
                                                 for r in arrays["table"]["rows"]]
    concepts = requests.get(f"{base}/concepts.json", params={"limit": 4}, timeout=60).json()
    assert "table" not in concepts and len(concepts["concepts"]) == 4
    as_arrays = requests.get(f"{base}/concepts.json", params={"limit": 4, "_shape": "arrays"}, timeout=60).json()
    assert "concepts" not in as_arrays and [r[0] for r in as_arrays["table"]["rows"]] == \
        [c["concept_id"] for c in concepts["concepts"]]
    html = requests.get(f"{base}/sql", params=q, timeout=60).text
    assert f'href="/concept/{arrays["table"]["rows"][0][0]}"' in html and 'class="sortable"' in html


def test_small_leaks_and_methods(site):
    base, root = site
    for path in ("/.json", "/"):
        assert str(root) not in requests.get(base + path, timeout=60).text
    trace = requests.request("TRACE", base + "/", timeout=60)
    assert trace.status_code == 405 and "GET" in trace.headers["allow"]
    schema = requests.get(base + "/openapi.json", timeout=60).json()
    concept = schema["paths"]["/concept/{concept_id}.json"]["get"]["parameters"][0]["schema"]["pattern"]
    after = next(p for p in schema["paths"]["/concepts.json"]["get"]["parameters"] if p["name"] == "after")
    for text in ("mid/1.0/1", "mid/1.0/cond@k20/412"):
        assert re.fullmatch(concept, text)
    assert not re.fullmatch(concept, "mid/1.0/１") and not re.fullmatch(after["schema"]["pattern"], "１:1:1")
    when = schema["components"]["schemas"]["EditRequest"]["properties"]["when"]["pattern"]
    assert re.fullmatch(when, "0.6-1.0") and not re.fullmatch(when, "bogus")


def test_corrupt_sae_checkpoint_in_an_edit_is_one_line(site):
    base, root = site
    with atlas.open(root) as store:
        cid = store.sql("SELECT concept_id FROM concepts WHERE block = 'down' LIMIT 1").rows[0][0]
        path = store.sql(f"SELECT path FROM saes WHERE id = (SELECT sae_id FROM concepts WHERE concept_id = '{cid}')"
                         ).rows[0][0]
    weights = next((root / path).glob("*.safetensors"))
    weights.write_bytes(b"\0" * 64)
    response = writer(base).post(f"{base}/edit.json", json={"prompt": "a red circle", "concept": cid}, timeout=300)
    assert response.status_code == 503 and "checkpoint" in response.json()["error"], response.text[:300]
    assert "\n" not in response.json()["error"]


def test_python_api_and_cli_limits(site, tmp_path):
    _, root = site
    with atlas.open(root) as store:
        for call in (lambda: store.nearest("mid/1.0/1", k=-1), lambda: store.top_images("mid/1.0/1", n=-5),
                     lambda: store.sql("SELECT 1", max_rows=-1), lambda: store.sql("SELECT 1", timeout=0),
                     lambda: store.sql("SELECT 1", timeout=float("inf")), lambda: store.concept("mid/1.0/１")):
            with pytest.raises(atlas.AtlasError) as info:
                call()
            assert "\n" not in str(info.value)
    out = tmp_path / "codes.csv"
    result = CliRunner().invoke(main, ["sql", "SELECT * FROM codes", "--atlas", str(root), "-o", str(out)])
    assert result.exit_code == 0, result.output
    with atlas.open(root) as store:
        total = store.sql("SELECT count(*) FROM codes").rows[0][0]
    assert total > 1000 and len(out.read_text().splitlines()) == total + 1
    cut = tmp_path / "cut.csv"
    result = CliRunner().invoke(main, ["sql", "SELECT i FROM range(10000000000) t(i)", "--atlas", str(root),
                                       "-o", str(cut), "--timeout", "1"])
    assert result.exit_code == 1 and "time limit" in result.output and not cut.exists()
    assert not list(tmp_path.glob(".*partial"))


def _get(base: str, path: str, host: str | None) -> tuple[int, str]:
    """GET with the Host header as given (None: none at all), byte for byte."""
    import http.client

    address, port = base.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(address, int(port), timeout=60)
    connection.putrequest("GET", path, skip_host=True)
    if host is not None:
        connection.putheader("Host", host)
    connection.endheaders()
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    return response.status, text


def test_host_header_must_name_the_server(tmp_path):
    """DNS rebinding: a page of evil.example whose name resolves to 127.0.0.1 reaches the server with Host
    evil.example; only the bound host, loopback names and --allowed-host names are answered."""
    from test_server import serve_atlas

    from atlas.store import synthetic

    root = tmp_path / "atlas"
    synthetic.build(root, n_images=4, blocks=("mid",), times=(1.0,), threads=1)[0].close()
    with serve_atlas(root, "--allowed-host", "atlas.lab.example", log=tmp_path / "server.log") as base:
        port = base.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST.", f"[::1]:{port}", "atlas.lab.example"):
            status, text = _get(base, "/labels.json", host)
            assert status == 200 and json.loads(text)["ok"] is not False, (host, status, text[:200])
        for host in (f"evil.example:{port}", "127.0.0.1.evil.example", "10.0.0.1", "", "a b"):
            status, text = _get(base, "/labels.json", host)
            body = json.loads(text)
            assert status == 421 and body["status"] == 421 and "\n" not in body["error"], (host, status, text[:200])
        assert _get(base, "/labels.json", None)[0] == 400  # HTTP/1.1 without Host: the HTTP parser refuses it
        status, text = _get(base, "/", "evil.example")
        assert status == 421 and "does not answer for host" in text and "--allowed-host" in text
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_a_server_on_every_address_answers_its_addresses_but_only_allowed_names():
    from atlas.server.errors import WrongHostError
    from atlas.server.guard import Hosts

    def answers(hosts: Hosts, host: str) -> bool:
        try:
            hosts.check({"headers": [(b"host", host.encode())]})
        except WrongHostError:
            return False
        return True

    everywhere = Hosts("0.0.0.0", ["atlas.lab.example"])
    assert all(answers(everywhere, h) for h in ("192.168.1.20:8000", "[fe80::1]", "localhost", "atlas.lab.example"))
    assert not any(answers(everywhere, h) for h in ("evil.example", "192.168.1.20.evil.example", "[::1"))
    loopback = Hosts("::1")
    assert answers(loopback, "[::1]:8000") and not answers(loopback, "192.168.1.20")


@pytest.fixture(scope="module")
def small_atlas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from atlas.store import synthetic

    root = tmp_path_factory.mktemp("sql-workers") / "atlas"
    synthetic.build(root, n_images=4, blocks=("mid",), times=(1.0,), threads=1)[0].close()
    return root


def test_user_sql_runs_in_a_worker_process_that_takes_the_blows(small_atlas, monkeypatch):
    """The memory probe and a huge single value cost the worker, not this (the server's) process; a worker that
    hangs past its deadline or grows past WORKER_RSS is killed, the request gets one line, the next query a new
    worker."""
    import os
    import signal

    from atlas.server import sql_worker
    from atlas.store.errors import QueryMemoryError, QueryTimeoutError

    workers = sql_worker.SqlWorkers(small_atlas, threads=1)
    try:
        assert workers.sql("SELECT count(*) FROM images").rows == [(4,)]
        first = workers._idle[0].proc.pid
        assert first != os.getpid()
        Path("/proc/self/clear_refs").write_text("5")
        before = memory_mb("VmHWM")
        for probe in ("SELECT list(i) FROM range(50000000) t(i)", "SELECT repeat('x', 100000000) FROM range(50)"):
            with pytest.raises(QueryMemoryError, match="memory user SQL may use"):
                workers.sql(probe)
        assert memory_mb("VmHWM") - before < 100  # the worker held the probes' memory

        stopped = workers._idle[0]
        os.kill(stopped.proc.pid, signal.SIGSTOP)  # the warm worker will never answer
        start = time.monotonic()
        with pytest.raises(QueryTimeoutError, match="0.5 s time limit"):
            workers.sql("SELECT 1", timeout=0.5)
        assert time.monotonic() - start < 0.5 + sql_worker.GRACE_SECONDS + 1 and stopped.proc.poll() is not None
        assert workers.sql("SELECT 1 AS one").rows == [(1,)]

        monkeypatch.setattr(sql_worker, "WORKER_RSS", 1 << 20)  # every worker is past it
        with pytest.raises(QueryMemoryError, match="1 MiB"):
            workers.sql("SELECT 1")
        monkeypatch.undo()
        answer = workers.sql("SELECT i FROM range(5000) t(i)", max_rows=3000)
        assert answer.truncated and answer.table.num_rows == 3000
    finally:
        workers.close()


def test_an_export_stopped_early_kills_its_worker_and_the_pool_goes_on(small_atlas):
    from atlas.server.sql_worker import SqlWorkers

    workers = SqlWorkers(small_atlas, threads=1, size=1)
    try:
        stream = workers.stream("SELECT i FROM range(10000000) t(i)", max_rows=None)
        worker = stream._worker
        next(iter(stream))
        stream.close()
        assert worker.proc.poll() is not None  # it was still sending: killed, not handed on mid-result
        assert "".join(workers.stream("SELECT i FROM range(3) t(i)").csv()) == "i\n0\n1\n2\n"
    finally:
        workers.close()
