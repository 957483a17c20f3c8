"""The web atlas in a real headless Chromium (Debian's `chromium`, driven by Playwright; no browser is ever
downloaded): home -> concept (heatmaps load) -> label -> image -> grid cell, a search, an SQL query, and an
edit with a region drawn with the mouse. Screenshots go to $ATLAS_TEST_ARTEFACTS (default: a pytest temp dir).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from test_server import assert_clean_log, shared_server

from atlas.store import open_atlas

CHROMIUM = Path(os.environ.get("ATLAS_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 120_000  # the concept page renders ~50 heatmaps in one worker; 60 s was missed once on a busy machine

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: apt-get install chromium")]


@pytest.fixture(scope="module")
def site(shapes_atlas, tmp_path_factory):
    url, root = shared_server(shapes_atlas, tmp_path_factory)  # the HTTP tests' server when they ran first
    yield url
    assert_clean_log(root)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    where = Path(os.environ.get("ATLAS_TEST_ARTEFACTS") or tmp_path_factory.mktemp("artefacts")) / "browser"
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, site):
    context = browser.new_context(base_url=site, viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    opened.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    opened.on("pageerror", lambda err: problems.append(f"script error: {err}"))
    opened.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    opened.problems = problems
    yield opened
    context.close()


def images_loaded(page, selector: str) -> int:
    """Wait until every image matching `selector` has loaded with real pixels; returns how many there are. Lazy
    images load once on screen, so the first one is scrolled into view first (a row of them loads together)."""
    page.locator(selector).first.scroll_into_view_if_needed()
    page.wait_for_function(f"""() => {{
        const imgs = [...document.querySelectorAll({selector!r})];
        return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
    }}""")
    return page.locator(selector).count()


def test_home_concept_label_image_walk(page, shots):
    page.goto("/")
    assert page.locator("h1").inner_text() == "Concept Atlas"
    page.screenshot(path=shots / "1-home.png", full_page=True)

    page.locator("a.concept").first.click()
    page.wait_for_url(re.compile(r"/concept/"))
    assert images_loaded(page, "img.heatmap") >= 1
    images_loaded(page, "img.hist")
    images_loaded(page, "table.timesteps img")
    concept_id = page.locator("h1 .concept").inner_text()
    page.screenshot(path=shots / "2-concept.png", full_page=True)

    page.locator("#description + p a[href^='/label/']").click()  # the best label, below the description
    page.wait_for_url(re.compile(r"/label/"))
    assert page.locator("table a.concept").count() >= 1
    images_loaded(page, ".gallery img")
    page.screenshot(path=shots / "3-label.png", full_page=True)

    page.locator(".gallery a").first.click()
    page.wait_for_url(re.compile(r"/image/\d+$"))
    images_loaded(page, ".grid-wrap img")
    cells = page.locator("#cells a")
    assert cells.count() >= 4
    page.screenshot(path=shots / "4-image.png", full_page=True)
    cells.first.click()
    page.wait_for_url(re.compile(r"/concept/"))
    assert page.locator("h1 .concept").inner_text() != ""
    assert images_loaded(page, "img.heatmap") >= 1
    assert concept_id and not page.problems, page.problems


def test_search_and_sql(page, shots):
    page.goto("/")
    page.fill("header input[name=q]", "red circle")
    page.press("header input[name=q]", "Enter")
    page.wait_for_url(re.compile(r"/search\?q=red"))
    assert page.locator("#label-results td a").first.inner_text() == "red circle"
    page.screenshot(path=shots / "5-search.png", full_page=True)

    page.goto("/sql")
    page.fill("textarea[name=q]", "SELECT label, count(*) AS objects FROM objects GROUP BY label ORDER BY label")
    page.click("#sql-form button[type=submit]")
    page.wait_for_selector("#sql-result table")
    assert page.locator("#sql-result tbody tr").count() >= 2
    assert "rows in" in page.locator("#sql-status").inner_text()
    page.screenshot(path=shots / "6-sql.png", full_page=True)
    assert not page.problems, page.problems


def linked_at_first_step(root: Path) -> tuple[str, str]:
    """A label with a concept at t = 1.0 of the down or up block: the edit page's default window reads t = 1.0,
    and which labels the test atlas links there depends on the shipped weights."""
    with open_atlas(root) as atlas:
        rows = atlas.sql("SELECT label, block FROM concept_labels WHERE t = 1.0 AND block IN ('down', 'up') "
                         "ORDER BY mean_iou DESC, label, block LIMIT 1").to_dicts()
    assert rows, "the test atlas links no label at t = 1.0 of down or up"
    return rows[0]["label"], rows[0]["block"]


def test_draw_a_region_and_edit(page, shots, site, shapes_atlas):
    label, block = linked_at_first_step(shapes_atlas)
    page.goto("/image/0")
    page.click("#edit-link")
    page.wait_for_url(re.compile(r"/edit\?prompt="))
    assert page.input_value("input[name=prompt]") != ""
    page.fill("input[name=concept]", label)
    page.select_option("select[name=block]", block)
    grid = page.locator("#region-grid")
    side = int(grid.get_attribute("data-side"))
    first = page.locator(f"#region-grid div[data-row='0'][data-col='{side // 2}']").bounding_box()
    last = page.locator(f"#region-grid div[data-row='{side // 2 - 1}'][data-col='{side - 1}']").bounding_box()
    page.mouse.move(first["x"] + 5, first["y"] + 5)
    page.mouse.down()
    page.mouse.move(last["x"] + 5, last["y"] + 5, steps=8)
    page.mouse.up()
    half = "0" * (side // 2) + "1" * (side // 2)
    assert page.input_value("#region") == "/".join([half] * (side // 2) + ["0" * side] * (side // 2))
    page.screenshot(path=shots / "7-edit-form.png", full_page=True)
    page.click("#run-edit")
    page.wait_for_selector("#edit-result")
    assert images_loaded(page, "#edit-result img") == 3
    assert "0.5,0,1,0.5" in page.locator("main").inner_text()  # the drawn rectangle became a box
    page.screenshot(path=shots / "8-edit-result.png", full_page=True)
    assert not page.problems, page.problems


def test_concept_page_describes_samples_attributes_and_fades_the_heatmap(page, shots, shapes_atlas):
    """A concept page as Neuronpedia users expect: a description with the dictionary's name, examples across the
    activation range and at random, the caption words that drive it (measured by the server), and a heatmap whose
    opacity a slider sets, beside the raw image."""
    with open_atlas(shapes_atlas) as atlas:
        cid = atlas.sql("SELECT concept_id FROM concept_labels ORDER BY mean_iou DESC LIMIT 1").rows[0][0]
        top = atlas.top_images(cid, 1)[0]
    page.goto(f"/concept/{cid}")
    description = page.locator("#description").inner_text()
    assert "Linked to '" in description and "mean IoU" in description and "emerges" in description
    assert images_loaded(page, "#quantile-examples img.heatmap") == 5
    assert images_loaded(page, "#random-examples img.heatmap") >= 1
    assert images_loaded(page, "#top-images img.raw") >= 1
    words = page.locator("#words tr.word")
    words.first.wait_for()
    assert words.count() == len(top.prompt.split())
    first = page.locator("#top-images img.heatmap").first
    before = first.get_attribute("src")
    page.locator("#opacity").fill("0")
    page.wait_for_function("() => document.querySelector('#top-images img.heatmap').src.includes('opacity=0')")
    assert first.get_attribute("src") != before
    images_loaded(page, "#top-images img.heatmap")
    page.screenshot(path=shots / "concept-described.png", full_page=True)
    assert not page.problems, page.problems


def test_sql_error_keeps_the_query_and_columns_sort(page, shots):
    """Datasette's conventions (issue 22): an error above the editor with the query kept, concept ids linked,
    columns sorted by a click on their header."""
    page.goto("/sql")
    broken = "SELEC concept_id FROM concepts"
    page.fill("textarea[name=q]", broken)
    page.click("#sql-form button[type=submit]")
    page.wait_for_selector("#sql-error")
    assert "syntax error" in page.locator("#sql-error").inner_text()
    assert page.input_value("textarea[name=q]") == broken
    assert page.locator("#sql-error").bounding_box()["y"] < page.locator("textarea[name=q]").bounding_box()["y"]
    page.problems.clear()  # the error page is a 400, as it should be

    page.fill("textarea[name=q]", "SELECT concept_id, latent FROM concepts ORDER BY concept_id LIMIT 30")
    page.click("#sql-form button[type=submit]")
    page.wait_for_selector("#sql-result table")
    links = page.locator("#sql-result tbody td a")
    assert links.count() == 30 and links.first.get_attribute("href").startswith("/concept/")
    latents = "#sql-result tbody tr td:nth-child(2)"
    page.click("#sql-result th:nth-child(2)")
    up = [int(v.replace(",", "")) for v in page.locator(latents).all_inner_texts()]
    page.click("#sql-result th:nth-child(2)")
    down = [int(v.replace(",", "")) for v in page.locator(latents).all_inner_texts()]
    assert up == sorted(up) and down == sorted(up, reverse=True) and up != down
    assert page.locator("#sql-result th:nth-child(2)").get_attribute("aria-sort") == "descending"
    page.screenshot(path=shots / "9-sql-sorted.png", full_page=True)
    assert not page.problems, page.problems


def test_paint_a_region_and_add_a_concept(page, shots, shapes_atlas):
    """The paint brush marks every cell the pointer passes (an L, no rectangle); a label the prompt does not name is
    added there from a donor text."""
    with open_atlas(shapes_atlas) as atlas:
        labels = atlas.labels()
    added = next(label for label in labels if "circle" in label)
    prompt = f"a {next(label for label in labels if 'square' in label and not set(label.split()) & set(added.split()))}"
    page.goto("/edit")
    page.fill("input[name=prompt]", prompt)
    page.fill("input[name=concept]", added)
    page.select_option("#brush", "paint")

    def centre(row: int, col: int) -> tuple[float, float]:
        box = page.locator(f"#region-grid div[data-row='{row}'][data-col='{col}']").bounding_box()
        return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    page.mouse.move(*centre(0, 0))
    page.mouse.down()
    page.mouse.move(*centre(0, 2), steps=6)
    page.mouse.move(*centre(2, 2), steps=6)
    page.mouse.up()
    side = int(page.locator("#region-grid").get_attribute("data-side"))
    rows = ["111", "001", "001"] + ["000"] * (side - 3)
    assert page.input_value("#region") == "/".join(row + "0" * (side - 3) for row in rows)
    assert page.locator("#region-grid div.on").count() == 5
    page.screenshot(path=shots / "9-paint-form.png", full_page=True)
    page.set_default_timeout(3 * TIMEOUT_MS)  # the edit reads the donor text beside the prompt: five rows a step
    page.click("#run-edit")
    page.wait_for_selector("#edit-result")
    assert images_loaded(page, "#edit-result img") == 3
    said = page.locator("main").inner_text()
    assert f"add edit of '{added}'" in said and "from a donor text" in said, said
    page.screenshot(path=shots / "10-paint-result.png", full_page=True)
    assert not page.problems, page.problems
