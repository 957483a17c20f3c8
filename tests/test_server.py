"""The web atlas over HTTP: a real `atlas serve` process on a loopback port, over a small real shapes atlas.

Every answer is checked against the Python API on the same atlas; the JSON API is fuzzed from its own
OpenAPI schema (no 5xx, every error in the envelope); the server log must stay free of tracebacks.
"""

from __future__ import annotations

import atexit
import csv
import io
import os
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import requests
from PIL import Image

from atlas.store import open_atlas

REPO = Path(__file__).resolve().parents[1]
STARTUP_SECONDS = 120


@contextmanager
def serve_atlas(atlas_dir: Path, *flags: str, log: Path) -> Iterator[str]:
    """Run `atlas serve --port 0` (the Click command itself) and yield its base URL; stderr goes to `log`."""
    command = [sys.executable, "-c", "from atlas.cli.serve import serve; serve()", "--atlas", str(atlas_dir),
               "--port", "0", "--threads", "1", *flags]
    with open(log, "w") as err:
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            ready, _, _ = select.select([proc.stdout], [], [], STARTUP_SECONDS)
            line = proc.stdout.readline() if ready else ""
            if " at http://" not in line:
                proc.kill()
                raise RuntimeError(f"atlas serve did not start: {line!r} {log.read_text()[-2000:]}")
            url = line.split(" at ")[1].split()[0].rstrip("/")
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=20)


_SERVERS: dict[tuple[str, ...], tuple[str, Path]] = {}
_STOP = ExitStack()
atexit.register(_STOP.close)


def shared_server(shapes_atlas: Path, tmp_path_factory: pytest.TempPathFactory, *flags: str) -> tuple[str, Path]:
    """(URL, atlas copy) of the session's server started with `flags`; the HTTP and browser tests share one,
    since each start costs ~10 s (importing torch). The copy keeps the shared shapes atlas unchanged."""
    if flags not in _SERVERS:
        where = tmp_path_factory.mktemp("served")
        shutil.copytree(shapes_atlas, where / "atlas")
        url = _STOP.enter_context(serve_atlas(where / "atlas", *flags, log=where / "server.log"))
        _SERVERS[flags] = url, where / "atlas"
    return _SERVERS[flags]


def assert_clean_log(root: Path) -> None:
    """Expected errors are answered quietly; a traceback in the server's log is a bug."""
    log = (root.parent / "server.log").read_text()
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture(scope="module")
def served(shapes_atlas, tmp_path_factory):
    url, root = shared_server(shapes_atlas, tmp_path_factory)
    yield url, root
    assert_clean_log(root)


@pytest.fixture(scope="module")
def base(served):
    return served[0]


@pytest.fixture(scope="module")
def atlas(served):
    with open_atlas(served[1], threads=1) as opened:
        yield opened


def get(base: str, path: str, status: int = 200, **params) -> requests.Response:
    response = requests.get(base + path, params=params or None, timeout=60)
    assert response.status_code == status, (path, response.status_code, response.text[:500])
    return response


def ok(base: str, path: str, **params) -> dict:
    body = get(base, path, **params).json()
    assert body["ok"] is True
    return body


def failure(base: str, path: str, status: int, **params) -> str:
    body = get(base, path, status, **params).json()
    assert body.keys() == {"ok", "error", "status"} and body["ok"] is False and body["status"] == status
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    return body["error"]


def best_concept(atlas) -> str:
    return atlas.sql("SELECT concept_id FROM concept_labels ORDER BY mean_iou DESC, concept_id LIMIT 1").rows[0][0]


def png(response: requests.Response) -> Image.Image:
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


# -- pages and their twins ------------------------------------------------------------------------------------

def test_home_lists_model_saes_counts(base, atlas):
    body = ok(base, "/.json")
    saes = atlas.saes()
    assert [(s["block"], s["t"], s["branch"]) for s in body["saes"]] == [(s.block, s.t, s.branch) for s in saes]
    assert body["saes"][0]["metrics"] == saes[0].metrics
    assert body["counts"]["images"] == atlas.sql("SELECT count(*) FROM images").rows[0][0]
    assert body["models"][0]["name"] == "shapes" and body["labels"] == atlas.labels()
    rows = list(csv.reader(io.StringIO(get(base, "/.csv").text)))
    assert rows[0][:4] == ["sae", "block", "t", "branch"] and len(rows) == len(saes) + 1
    html = get(base, "/").text
    assert "Concept Atlas" in html and f'href="/concept/{body["top_links"][0]["concept_id"]}"' in html


def test_concept_page_matches_the_store(base, atlas):
    cid = best_concept(atlas)
    body = ok(base, f"/concept/{cid}.json", n=6)
    hits = atlas.top_images(cid, 6)
    assert [h["image_id"] for h in body["images"]] == [h.image_id for h in hits]
    for hit, shown in zip(hits, body["images"]):
        amap = np.array(shown["map"])
        np.testing.assert_allclose(amap, atlas.activation_map(hit.image_id, cid), rtol=1e-6)
        assert amap[hit.row, hit.col] == pytest.approx(hit.activation, rel=1e-6)
    info = atlas.concept(cid)
    assert body["concept"]["concept_id"] == cid and body["concept"]["frequency"] == info.frequency
    ts = [s.t for s in atlas.saes() if s.block == info.block and s.branch == info.branch]
    assert sorted(t["t"] for t in body["timesteps"]) == sorted(ts)
    other = next(t for t in body["timesteps"] if not t["own"])
    assert other["concept_id"] == atlas.nearest(cid, k=1, t=other["t"])[0].concept_id
    assert len(other["maps"]) == len(hits)
    positions = atlas.sql(f"SELECT count(*) FROM codes WHERE concept_id = '{cid}'").rows[0][0]
    assert sum(body["histogram"]["counts"]) == body["histogram"]["positions"] == positions
    labels = atlas.sql(f"SELECT label FROM concept_labels WHERE concept_id = '{cid}' ORDER BY mean_iou DESC").rows
    assert [r[0] for r in body["labels"]["rows"]] == [r[0] for r in labels]
    assert list(csv.reader(io.StringIO(get(base, f"/concept/{cid}.csv").text)))[0][0] == "label"
    html = get(base, f"/concept/{cid}").text
    assert f'/image/{hits[0].image_id}/heatmap.png?concept={quote(cid, safe="")}' in html


def test_pngs(base, atlas):
    cid = best_concept(atlas)
    hit = atlas.top_images(cid, 1)[0]
    image = png(get(base, f"/image/{hit.image_id}/heatmap.png", concept=cid))
    assert image.size == (128, 128) and image.mode == "RGB"
    plain = png(get(base, f"/image/{hit.image_id}.png", size=64))
    assert plain.size == (64, 64)
    assert np.abs(np.asarray(image.resize((64, 64)), float) - np.asarray(plain, float)).mean() > 1  # a heatmap is drawn
    assert png(get(base, f"/concept/{cid}/histogram.png")).size[0] > 100
    object_id = atlas.sql("SELECT min(id) FROM objects WHERE mask_path IS NOT NULL").rows[0][0]
    assert png(get(base, f"/object/{object_id}.png")).size == (128, 128)
    failure(base, f"/image/{hit.image_id}/heatmap.png", 400, concept="nope")
    failure(base, "/image/999999.png", 404)
    failure(base, "/object/999999.png", 404)


def test_concepts_keyset_pages_cover_the_ranking_once(base, atlas):
    sae = atlas.saes()[3]
    expected = [c.concept_id for c in atlas.concepts(block=sae.block, t=sae.t, limit=100_000)]
    seen, after = [], None
    for _ in range(200):
        body = ok(base, "/concepts.json", block=sae.block, t=sae.t, limit=97, **({"after": after} if after else {}))
        seen += [c["concept_id"] for c in body["concepts"]]
        after = body["next"]
        if after is None:
            break
    assert seen == expected
    rows = list(csv.reader(io.StringIO(get(base, "/concepts.csv", block=sae.block, t=sae.t, limit=5).text)))
    assert [r[0] for r in rows[1:]] == expected[:5]
    assert "unknown block 'nope'" in failure(base, "/concepts.json", 404, block="nope")
    assert "bad page token" in failure(base, "/concepts.json", 400, after="x")


def test_label_page_ranks_concepts_like_the_api(base, atlas):
    label = atlas.sql("SELECT label FROM concept_labels GROUP BY label ORDER BY count(*) DESC, label LIMIT 1"
                      ).rows[0][0]
    body = ok(base, f"/label/{quote(label)}.json", per_sae=3)
    columns = body["concepts"]["columns"]
    rows = [dict(zip(columns, r)) for r in body["concepts"]["rows"]]
    for sae in atlas.saes():
        mine = [r["concept_id"] for r in rows if r["block"] == sae.block and r["t"] == sae.t]
        expected = [c.concept_id for c in atlas.concepts(label=label, block=sae.block, t=sae.t, limit=3)]
        assert mine == expected
    objects = atlas.sql(f"SELECT count(*) FROM objects WHERE label = '{label}'").rows[0][0]
    seen, after = 0, -1
    while after is not None:
        page = ok(base, f"/label/{quote(label)}.json", limit=4, after=after)
        seen += len(page["examples"])
        after = page["next"]
    assert seen == objects
    assert "did you mean 'red circle'" in failure(base, "/label/red%20circel.json", 404)
    assert get(base, f"/label/{quote(label)}").text.count("/object/") >= 1


def test_image_page_grid_holds_the_strongest_concept_per_cell(base, atlas):
    image_id = atlas.top_images(best_concept(atlas), 1)[0].image_id
    sae = atlas.saes()[-1]
    body = ok(base, f"/image/{image_id}.json", block=sae.block, t=sae.t)
    assert (body["grid_h"], body["grid_w"]) == (sae.grid_h, sae.grid_w) and body["block"] == sae.block
    codes = atlas.image_codes(image_id, sae.block, sae.t, sae.branch).to_pylist()
    for row in body["grid"]:
        for cell in row:
            here = [c for c in codes if c["row"] == cell["row"] and c["col"] == cell["col"]]
            if here:
                assert cell["top"][0]["value"] == pytest.approx(max(c["value"] for c in here))
    assert body["image"]["prompt"] == atlas.sql(f"SELECT prompt FROM images WHERE id = {image_id}").rows[0][0]
    assert len(body["objects"]) == atlas.sql(f"SELECT count(*) FROM objects WHERE image_id = {image_id}").rows[0][0]
    html = get(base, f"/image/{image_id}", block=sae.block, t=sae.t).text
    assert html.count('href="/concept/') >= sae.grid_h  # clickable cells
    assert "unknown t 0.25" in failure(base, f"/image/{image_id}.json", 404, block=sae.block, t=0.25)
    failure(base, "/image/123456.json", 404)


def test_images_keyset_and_filter(base, atlas):
    ids = [r[0] for r in atlas.sql("SELECT id FROM images ORDER BY id").rows]
    seen, after = [], -1
    while after is not None:
        body = ok(base, "/images.json", limit=10, after=after)
        seen += [i["id"] for i in body["images"]]
        after = body["next"]
    assert seen == ids
    body = ok(base, "/images.json", q="RED CIRCLE")
    assert body["images"] and all("red circle" in i["prompt"] for i in body["images"])


def test_search_by_id_and_by_meaning(base, atlas):
    cid = best_concept(atlas)
    assert ok(base, "/search.json", q=cid)["concept"] == cid
    bad = ok(base, "/search.json", q="mid/1.0/x")
    assert bad["concept"] is None and "bad concept id" in bad["concept_error"]
    assert ok(base, "/search.json", q="red circle")["labels"][0]["label"] == "red circle"
    assert ok(base, "/search.json", q="stripes")["labels"][0]["label"] == "striped background"
    assert ok(base, "/search.json", q="")["labels"] == []
    assert 'id="label-results"' in get(base, "/search", q="circle").text


def test_sql_same_limits_as_the_cli(base, atlas):
    query = "SELECT block, t, count(*) AS n FROM codes GROUP BY ALL ORDER BY block, t DESC"
    body = ok(base, "/sql.json", q=query)
    assert body["table"]["rows"] == [list(r) for r in atlas.sql(query).rows] and not body["truncated"]
    capped = ok(base, "/sql.json", q="SELECT * FROM images", max_rows=5)
    assert len(capped["table"]["rows"]) == 5 and capped["truncated"]
    assert (body["timeout"], body["max_rows"]) == (5.0, 1000)
    assert "read-only" in failure(base, "/sql.json", 400, q="DROP TABLE images")
    assert "one statement" in failure(base, "/sql.json", 400, q="SELECT 1; SELECT 2")
    failure(base, "/sql.json", 400, q="SELECT * FROM read_csv('/etc/passwd')")
    failure(base, "/sql.json", 400, q="SELECT 1", timeout=60)
    failure(base, "/sql.json", 400, q="SELEC 1")
    text = get(base, "/sql.csv", q="SELECT 1 AS one, 'a,b' AS two").text
    assert text == 'one,two\n1,"a,b"\n'
    html = get(base, "/sql", q="DROP TABLE images", status=400).text
    assert "read-only" in html and "Traceback" not in html


def test_rename_concept_then_find_it_by_name(base, atlas):
    cid = best_concept(atlas)
    response = requests.post(f"{base}/concept/{cid}/name.json", json={"name": "round red thing", "note": "fires"},
                             timeout=60)
    assert response.status_code == 200 and response.json() == {"ok": True, "concept_id": cid,
                                                               "name": "round red thing", "note": "fires"}
    assert ok(base, f"/concept/{cid}.json")["concept"]["name"] == "round red thing"
    names = ok(base, "/search.json", q="a crimson disc")["names"]
    assert names and names[0]["concept_id"] == cid
    form = requests.post(f"{base}/concept/{cid}/name", data={"name": "", "note": ""}, allow_redirects=False,
                         timeout=60)
    assert form.status_code == 303 and form.headers["location"] == f"/concept/{cid}"
    assert ok(base, f"/concept/{cid}.json")["concept"]["name"] is None
    bad = requests.post(f"{base}/concept/{cid}/name.json", json={"name": "x" * 500}, timeout=60)
    assert bad.status_code == 400 and bad.json()["ok"] is False


def test_errors_are_one_line_everywhere(base):
    assert "bad concept id" in failure(base, "/concept/mid/one/3.json", 400)
    assert "does not exist" in failure(base, "/concept/mid/1.0/99999.json", 400)
    assert "unknown block" in failure(base, "/concept/nope/1.0/3.json", 404)
    assert "no page at" in failure(base, "/nowhere.json", 404)
    assert "bad n" in failure(base, "/concept/mid/1.0/3.json", 400, n="many")
    html = get(base, "/concept/mid/one/3", 400).text
    assert "bad concept id" in html and "Traceback" not in html and "<h1>Error 400</h1>" in html
    assert "no page at" in get(base, "/nowhere", 404).text


def test_openapi_lists_every_json_route(base):
    schema = ok_schema = get(base, "/openapi.json").json()
    paths = set(ok_schema["paths"])
    for path in ("/.json", "/concepts.json", "/concept/{concept_id}.json", "/label/{name}.json", "/labels.json",
                 "/image/{image_id}.json", "/images.json", "/search.json", "/sql.json", "/sql.csv",
                 "/concept/{concept_id}/name.json", "/image/{image_id}/heatmap.png"):
        assert path in paths, path
    assert not any(p in paths for p in ("/", "/concept/{concept_id}")), "HTML pages stay out of the API schema"
    assert schema["components"]["schemas"]["ErrorBody"]["properties"].keys() == {"ok", "error", "status"}


def test_edit_gives_before_and_after_and_logs_it(base, atlas):
    cid = atlas.sql("SELECT concept_id FROM concept_labels WHERE block = 'down' ORDER BY mean_iou DESC LIMIT 1"
                    ).rows[0][0]
    stored = atlas.sql("SELECT id, prompt, seed, path FROM images ORDER BY id LIMIT 1").to_dicts()[0]
    response = requests.post(f"{base}/edit.json", timeout=300, json={
        "prompt": stored["prompt"], "concept": cid, "region": "0011/0011/0000/0000", "seed": stored["seed"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ok"] and body["edits"][0]["concepts"] == [cid] and body["edits"][0]["region"] == "0.5,0,1,0.5"
    assert body["said"] and "pixel change" in body["said"][-1] and body["intervention_ids"]
    before = png(get(base, body["before"]))
    after = png(get(base, body["after"]))
    assert before.size == after.size == (128, 128)
    with Image.open(atlas.root / stored["path"]) as original:  # same prompt and seed: the stored image again
        same = np.asarray(original.convert("RGB").resize((128, 128), Image.NEAREST), float)
    assert np.abs(np.asarray(before, float) - same).mean() < 2.0
    assert png(get(base, body["maps"][0])).size == (128, 128)
    logged = atlas.sql("SELECT concept_id FROM interventions").rows
    assert (cid,) in logged
    assert "--region 0.5,0,1,0.5" in body["command"]


def test_edit_refuses_bad_input_before_generating(base):
    def refused(status: int, **fields) -> str:
        response = requests.post(f"{base}/edit.json", json={"prompt": "a red circle", "concept": "red circle",
                                                            **fields}, timeout=120)
        assert response.status_code == status, response.text
        assert response.json()["ok"] is False and "\n" not in response.json()["error"]
        return response.json()["error"]

    assert "same length" in refused(400, region="01/1")
    assert "empty" in refused(400, region="00/00")
    assert "unknown label" in refused(404, concept="no such thing")
    assert "bad window" in refused(400, when="sometimes")
    assert "bad prompt" in refused(400, prompt="")
    failure(base, "/edit/picture/nothing.png", 404)
    html = requests.post(f"{base}/edit", data={"prompt": "a red circle", "concept": "red circle", "strength": "lots"},
                         timeout=60)
    assert html.status_code == 400 and "bad strength" in html.text


HOSTILE = "o'brien'; DROP TABLE objects; --"


def test_views_take_hostile_values_as_values(tmp_path):
    """Values reach the views' SQL only as parameters: a label, a filter and a keyset token full of quotes and SQL
    match exactly what they say, and nothing is dropped."""
    from atlas.store import synthetic

    root = tmp_path / "atlas"
    atlas, _ = synthetic.build(root, n_images=6, blocks=("mid",), times=(1.0,), threads=1)
    with atlas, atlas.writer() as writer:
        writer.objects.add([dict(image_id=2, label=HOSTILE, box=(0, 0, 1, 1)), dict(image_id=3, label="plain")],
                           source="test")
        writer.catalog.set_concept_labels([dict(concept="mid/1.0/3", label=HOSTILE, mean_iou=0.5, hit_rate=0.5,
                                                precision=0.5, recall=0.5, support=2)])
    with serve_atlas(root, log=tmp_path / "server.log") as url:
        page = ok(url, f"/label/{quote(HOSTILE, safe='')}.json")
        assert [e["image_id"] for e in page["examples"]] == [2]
        column = page["concepts"]["columns"].index("concept_id")
        assert [row[column] for row in page["concepts"]["rows"]] == ["mid/1.0/3"]
        assert [c["concept_id"] for c in ok(url, "/concepts.json", label=HOSTILE)["concepts"]] == ["mid/1.0/3"]
        assert ok(url, "/concepts.json", label="x' OR '1' = '1")["concepts"] == []
        assert ok(url, "/images.json", q="' OR '1' = '1")["images"] == []
        assert [i["id"] for i in ok(url, "/images.json", q="PROMPT 3")["images"]] == [3]
        assert [row[0] for row in ok(url, "/labels.json", after="o'")["table"]["rows"]] == [HOSTILE, "plain"]
        assert [o["label"] for o in ok(url, "/image/2.json")["objects"]] == [HOSTILE]
    with open_atlas(root) as after:
        assert after.query("SELECT count(*) AS n FROM objects")["n"][0].as_py() == 2
    assert "Traceback" not in (tmp_path / "server.log").read_text()
