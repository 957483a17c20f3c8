"""Concept names rolled up from the dictionary (atlas.dictionary.names): what a concept's labels share."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pytest

from atlas.dictionary.link import LinkConfig, link
from atlas.dictionary.names import CLOSE, Guess, Link, concept_name, guess_name, rollup_name
from atlas.dictionary.run import attribute_grid_cells, guesses, word_cells
from atlas.store import SaeInfo

SHAPES = [f"{c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle")]
KNOWN = [*SHAPES, "striped background"]


@pytest.mark.parametrize("labels, name", [
    (["red circle"], "red circle"),
    (["red circle", "red square", "red triangle"], "red (any shape)"),
    (["red square", "red circle"], "red (circle or square)"),
    (["blue circle", "red circle", "green circle", "yellow circle"], "circle (any colour)"),
    (["dog", "black dog"], "dog"),  # tagger labels: one label is the shared word itself
    (["red circle", "striped background"], "red circle or striped background"),
    ([], None),
])
def test_rollup_names_what_the_labels_share(labels, name):
    assert rollup_name(labels, KNOWN) == name


def test_only_labels_close_to_the_best_one_widen_the_name():
    links = [Link("red circle", 0.7, 0.8, 90), Link("red square", 0.6, 0.7, 80), Link("red triangle", 0.6, 0.7, 85)]
    assert concept_name(links, KNOWN) == "red (any shape)"
    weak = [links[0], Link("striped background", 0.7 * CLOSE * 0.9, 0.05, 200)]
    assert concept_name(weak, KNOWN) == "red circle"


@pytest.mark.parametrize("links, known, name", [
    # 'red' predicts the maps better than any object label: the attribute names it, whichever red objects it matched
    ([Link("red circle", 0.45, 0.4, 90), Link("red square", 0.4, 0.4, 80), Link("red", 0.7, 0.8, 200, "colour")],
     KNOWN, "red (any shape)"),
    # a red-circle concept matches 'red' worse than 'red circle' (it stays dark on red squares)
    ([Link("red circle", 0.7, 0.8, 90), Link("red", 0.3, 0.3, 200, "colour")], KNOWN, "red circle"),
    # a weak attribute link (it matches 1 % of the plain images) does not outrank the object label it ties with
    ([Link("plain background", 0.24, 0.01, 465), Link("plain", 0.24, 0.01, 465, "style")], KNOWN,
     "plain background"),
    ([Link("circle", 0.5, 0.6, 300, "shape")], KNOWN, "circle (any colour)"),
    ([Link("top left", 0.3, 0.3, 40, "position")], KNOWN, "top left (position)"),
    ([Link("striped", 0.4, 0.4, 20, "style"), Link("striped background", 0.3, 0.2, 20)], KNOWN, "striped (style)"),
    # an SD atlas: the tagger's words are the attributes
    ([Link("black dog", 0.3, 0.2, 10), Link("dog", 0.5, 0.5, 30, "word")], ["dog", "black dog", "white dog"],
     "dog (any colour)"),
    ([Link("cat", 0.5, 0.5, 30, "word")], ["cat"], "cat"),
    ([Link("red dog", 0.3, 0.2, 10), Link("red", 0.6, 0.5, 30, "colour")], ["dog", "red dog", "red car", "car"],
     "red (any object)"),
])
def test_attribute_links_name_a_concept_they_predict_best(links, known, name):
    assert concept_name(links, known) == name


def _cells(rows: list[tuple[int, int, str, list[tuple[int, int]]]]) -> pa.Table:
    """(object_id, image_id, label, cells) -> the object_cells table `link` reads (one 4 x 4 grid)."""
    flat = [(o, i, label, r, c) for o, i, label, cells in rows for r, c in cells]
    return pa.table({name: [row[k] for row in flat] for k, name in
                     enumerate(("object_id", "image_id", "label", "row", "col"))})


def _links(result: pa.Table, latent: int, kind: str) -> list[Link]:
    return [Link(r["label"], r["mean_iou"], r["hit_rate"], r["support"], kind)
            for r in result.filter(result["passes"]).to_pylist() if r["latent"] == latent]


def test_link_and_rollup_on_hand_made_maps():
    """Golden: latent 0 fires on every red object, latent 1 on the red circles only, latent 2 on half a red circle
    of image 0. Hand-computed IoUs; 0 is named from the attribute, 1 from its object, 2 only guessed."""
    circle0, square0, circle1, triangle1 = [(0, 0), (0, 1)], [(3, 2), (3, 3)], [(1, 1)], [(2, 2), (2, 3)]
    objects = _cells([(0, 0, "red circle", circle0), (1, 0, "red square", square0),
                      (2, 1, "red circle", circle1), (3, 1, "red triangle", triangle1)])
    attributes = pa.table({"image_id": [0] * 4 + [1] * 3, "label": ["red"] * 7, "kind": ["colour"] * 7,
                           "row": [r for r, _ in circle0 + square0 + circle1 + triangle1],
                           "col": [c for _, c in circle0 + square0 + circle1 + triangle1],
                           "grid_h": [4] * 7, "grid_w": [4] * 7})
    fires = [(0, 0, circle0 + square0), (0, 1, circle1 + triangle1), (1, 0, circle0), (1, 1, circle1),
             (2, 0, circle0[:1])]
    codes = pa.table({"image_id": [i for _, i, cells in fires for _ in cells],
                      "row": [r for *_, cells in fires for r, _ in cells],
                      "col": [c for *_, cells in fires for _, c in cells],
                      "latent": [latent for latent, _, cells in fires for _ in cells],
                      "value": [1.0 for *_, cells in fires for _ in cells]})
    config = LinkConfig(min_hits=2)
    by_object = link(codes, objects, config)
    by_attribute = link(codes, attribute_grid_cells(attributes, (4, 4)), config)
    iou = {(r["latent"], r["label"]): r["mean_iou"] for t in (by_object, by_attribute) for r in t.to_pylist()}
    assert iou[0, "red"] == 1.0 and iou[1, "red circle"] == 1.0
    half_and_third = pytest.approx((2 / 4 + 1 / 3) / 2)
    assert iou[0, "red circle"] == half_and_third and iou[1, "red"] == half_and_third
    assert iou[2, "red circle"] == pytest.approx(1 / 2 / 2) and iou[2, "red"] == pytest.approx(1 / 4 / 2)
    assert concept_name(_links(by_object, 0, "object") + _links(by_attribute, 0, "colour"), KNOWN) == "red (any shape)"
    assert concept_name(_links(by_object, 1, "object") + _links(by_attribute, 1, "colour"), KNOWN) == "red circle"
    sae = SaeInfo(id=3, block="mid", t=1.0, branch="cond", k=2, n_latents=3, d_in=4, grid_h=4, grid_w=4,
                  value_qbase=None, n_codes=codes.num_rows, path=None)
    found = guesses(sae, codes, [(by_object, {}), (by_attribute, {"red": "colour"})], images_total=2)
    assert [(g["sae_id"], g["latent"], g["label"], g["kind"], g["images"]) for g in found] == [
        (3, 2, "red circle", "object", 1)]
    assert found[0]["mean_iou"] == pytest.approx(0.25)
    guess = Guess(found[0]["images"], found[0]["images_total"], found[0]["label"], found[0]["kind"],
                  found[0]["mean_iou"], found[0]["hits"], found[0]["support"])
    assert guess_name(guess, 1.0) == ("red circle? (a guess from its best label, below the dictionary's rule: mean "
                                      "IoU 0.25, IoU > 0.5 on 0 of 2 objects)")


@pytest.mark.parametrize("guess, name", [
    (None, "unnamed: never fires on the dictionary images at t = 0.5"),
    (Guess(95, 100, "striped background", "object", 0.3, 4, 40),
     "context-free? fires on 95% of the dictionary images at t = 0.5 (a guess from its density, no label)"),
    (Guess(30, 100, "striped", "style", 0.12, 1, 40),
     "striped? (a guess from its best style label, below the dictionary's rule: mean IoU 0.12, IoU > 0.5 on 1 of 40 "
     "images)"),
    (Guess(30, 100, "red circle", "object", 0.01, 0, 40),
     "unnamed: fires on 30% of the dictionary images at t = 0.5 (no label comes close)"),
])
def test_a_concept_without_links_gets_a_guess_that_says_so(guess, name):
    assert guess_name(guess, 0.5) == name


def test_a_small_build_links_attributes_apart_and_names_every_concept(two_k_atlas, tmp_path):
    """End to end on a 32-image build: the attributes' cells are stored with their kinds, their links stay out of
    the object-level dictionary (relinking without them, from the labels' words as for an atlas annotated before
    attributes were recorded, gives the same concept_labels and best labels), and every concept has a name: from
    its links, or a guess only where it has none."""
    import pyarrow.parquet as pq

    from atlas.dictionary.names import attribute_links, display_names
    from atlas.dictionary.run import link_atlas
    from atlas.store import open_atlas, open_writer

    cells = pq.read_table(two_k_atlas / "annotations" / "shapes" / "attributes")
    kinds = dict(zip(cells["label"].to_pylist(), cells["kind"].to_pylist()))
    assert kinds["red"] == "colour" and kinds["circle"] == "shape" and kinds["top left"] == "position"
    assert set(kinds.values()) == {"colour", "shape", "position", "style"}
    stored = pq.read_table(two_k_atlas / "dictionary" / "attribute_links.parquet").to_pylist()
    assert stored and all(kinds[r["label"]] == r["kind"] and r["hits"] >= 2 for r in stored)

    def dictionary(root):
        with open_atlas(root) as atlas:
            return (atlas.query("SELECT * EXCLUDE (label_id) FROM concept_labels ORDER BY concept_id, label"),
                    atlas.query("SELECT concept_id, best_label FROM concepts ORDER BY concept_id"))

    copy = tmp_path / "atlas"
    shutil.copytree(two_k_atlas, copy)
    shutil.rmtree(copy / "annotations" / "shapes" / "attributes")
    with open_writer(copy) as writer:
        link_atlas(writer, progress=False)
    assert dictionary(copy) == dictionary(two_k_atlas)
    words = pq.read_table(copy / "dictionary" / "attribute_links.parquet")  # from the object labels' words instead
    assert words.num_rows and set(words["kind"].to_pylist()) <= {"colour", "shape", "style", "word"}

    with open_atlas(two_k_atlas) as atlas:
        ids = atlas.query("SELECT concept_id FROM concepts WHERE frequency > 0 ORDER BY concept_id")["concept_id"]
        names = display_names(atlas, ids.to_pylist())
        linked = set(atlas.query("SELECT concept_id FROM concept_labels")["concept_id"].to_pylist())
        attributes = {cid: found for cid, found in attribute_links(atlas, ids.to_pylist()).items() if found}
    assert attributes and all(names.values())
    for cid, name in names.items():
        guessed = "? (a guess" in name or name.startswith(("unnamed:", "context-free?"))
        assert guessed == (cid not in linked | set(attributes)), (cid, name)
    for cid in set(attributes) - linked:  # named from its best attribute: "circle (any colour)", "top left (position)"
        best = attributes[cid][0]
        assert names[cid] in (f"{best.label} ({best.kind})", f"{best.label} (any colour)", f"{best.label} (any shape)")
    (copy / "dictionary" / "guesses.parquet").unlink()  # as linked before guesses were measured: no guess is made up
    unlinked = sorted(set(names) - linked - set(attributes))[:3]
    with open_atlas(copy) as atlas:
        assert unlinked and set(display_names(atlas, unlinked).values()) == {
            "unnamed: no dictionary link (run `atlas link` again for a guess)"}


def test_the_concept_pages_and_lists_show_the_name(two_k_atlas, tmp_path):
    import requests
    from markupsafe import escape
    from test_server import serve_atlas

    from atlas.dictionary.names import display_names
    from atlas.store import open_atlas

    with open_atlas(two_k_atlas) as atlas:
        ids = atlas.query("SELECT concept_id FROM concepts WHERE frequency > 0 AND variant = 'k4' "
                          "ORDER BY frequency DESC, latent LIMIT 5")["concept_id"].to_pylist()
        names = display_names(atlas, ids)
        attribute_named = next(cid for cid in atlas.query(
            "SELECT concept_id FROM concepts WHERE variant = 'k4' ORDER BY concept_id")["concept_id"].to_pylist()
            if "(a guess" not in display_names(atlas, [cid])[cid] and not atlas.query(
                "SELECT 1 FROM concept_labels WHERE concept_id = ?", [cid]).num_rows)
        names[attribute_named] = display_names(atlas, [attribute_named])[attribute_named]
    with serve_atlas(two_k_atlas, log=tmp_path / "server.log") as url:
        for cid, name in names.items():
            page = requests.get(f"{url}/concept/{cid}.json", timeout=60).json()
            assert (page["dictionary_name"] or page["name_guess"]) == name
            assert str(escape(name)) in requests.get(f"{url}/concept/{cid}", timeout=60).text
        listed = requests.get(f"{url}/concepts.json", params={"variant": "k4", "limit": 5}, timeout=60).json()
        assert {c["concept_id"]: c["dictionary_name"] for c in listed["concepts"]} == {cid: names[cid] for cid in ids}
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_word_cells_stand_in_for_attributes_an_old_annotation_lacks():
    """Golden: from the object cells alone, each word of a label covers the cells of the objects that have it."""
    cells = _cells([(0, 0, "red circle", [(0, 0), (0, 1)]), (1, 0, "blue circle", [(0, 1), (1, 1)]),
                    (2, 1, "dog", [(2, 2)])])
    cells = cells.append_column("grid_h", pa.array([4] * cells.num_rows)).append_column(
        "grid_w", pa.array([4] * cells.num_rows))
    got = sorted((r["image_id"], r["kind"], r["label"], r["row"], r["col"]) for r in word_cells(cells).to_pylist())
    assert got == [(0, "colour", "blue", 0, 1), (0, "colour", "blue", 1, 1), (0, "colour", "red", 0, 0),
                   (0, "colour", "red", 0, 1), (0, "shape", "circle", 0, 0), (0, "shape", "circle", 0, 1),
                   (0, "shape", "circle", 1, 1), (1, "word", "dog", 2, 2)]
