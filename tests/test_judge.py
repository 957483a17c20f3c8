"""Golden tests of every judge that decides a success of Tables 4 and 5: hand-drawn 32 x 32 images (an object that
moved into the target quadrant, one that did not move, one split in two, a striped and a plain background, an
image ruined by noise) with the verdicts and the centres and pixel changes worked out by hand."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from atlas.edit import judge as rules
from atlas.edit.core import NAMED_REGIONS, box_mask
from atlas.edit.judge import AtlasJudge, JudgeUnavailable, Verdict, centre_of_mass, in_region, locality
from atlas.pipeline.judges import ShapesJudge
from atlas.shapes import judge as shapes
from atlas.shapes.annotator import annotate
from atlas.shapes.world import COLORS, background

SIZE = 32
RED, BLUE = COLORS["red"], COLORS["blue"]
PLAIN = 25  # the shapes world's plain background, (25, 25, 25)
STRIPES = (60, 115)  # its stripes: rows 0-1 at 60, rows 2-3 at 115, and so on
RED_OFF_PLAIN = (200 + 15 + 15) / 3 / 255  # mean absolute change of a pixel turning from plain background to red


def quadrant(name: str) -> np.ndarray:
    return box_mask(NAMED_REGIONS[name], SIZE)


def scene(*squares: tuple[tuple[int, int, int], slice, slice], style: str = "plain") -> np.ndarray:
    """A shapes-world background with filled rectangles (colour, rows, cols) drawn on it."""
    image = background(style, SIZE)
    for colour, rows, cols in squares:
        image[rows, cols] = colour
    return image


def confetti(image: np.ndarray) -> np.ndarray:
    """The top half covered by 32 blocks of 4 x 4 pixels in the four colours, no two touching blocks alike: an
    image ruined by noise, with exactly 32 more objects."""
    ruined = image.copy()
    colours = list(COLORS.values())
    for r in range(4):
        for c in range(8):
            ruined[4 * r:4 * r + 4, 4 * c:4 * c + 4] = colours[(c + 2 * r) % 4]
    return ruined


TOP_LEFT_RED = (RED, slice(4, 12), slice(4, 12))  # 8 x 8 pixels, centre (8.0, 8.0)
BOTTOM_RIGHT_RED = (RED, slice(20, 28), slice(20, 28))  # centre (24.0, 24.0)
TOP_RIGHT_BLUE = (BLUE, slice(4, 12), slice(20, 28))  # centre (24.0, 8.0)
# one red square cut in two: 6 x 8 pixels at centre (22.0, 22.0) and 3 x 8 at centre (11.5, 22.0)
SPLIT_RED = ((RED, slice(18, 26), slice(19, 25)), (RED, slice(18, 26), slice(10, 13)))


# -- the shapes world's judge (atlas/shapes/judge.py, behind the protocol by atlas.pipeline.judges.ShapesJudge) ----

def test_the_annotator_reads_the_hand_drawn_scenes():
    found = annotate(scene(TOP_LEFT_RED, TOP_RIGHT_BLUE))
    assert [(o.label, o.cx, o.cy, int(o.mask.sum())) for o in found.objects] == [
        ("red square", 8.0, 8.0, 64), ("blue square", 24.0, 8.0, 64)]
    assert found.style == "plain" and annotate(scene(TOP_LEFT_RED, style="striped")).style == "striped"
    split = annotate(scene(*SPLIT_RED))
    assert sorted((o.cx, o.cy, int(o.mask.sum())) for o in split.objects) == [(11.5, 22.0, 24), (22.0, 22.0, 48)]
    assert len(annotate(confetti(scene(BOTTOM_RIGHT_RED))).objects) == 33


@pytest.fixture
def shapes_judge() -> ShapesJudge:
    return ShapesJudge()


def test_shapes_spatial_moved_and_not_moved(shapes_judge):
    original = scene(TOP_LEFT_RED, TOP_RIGHT_BLUE)
    target = quadrant("bottom right")
    v = shapes_judge(original, scene(BOTTOM_RIGHT_RED, TOP_RIGHT_BLUE), "spatial", "red square", target, "")
    assert (v.success, v.reached, v.before, v.intact, v.others_stay) == (True, True, False, True, True)
    assert v.values == {"centre_x": 24.0, "centre_y": 24.0}
    # 64 of the quadrant's 256 pixels turned red; outside, 64 of 768 turned back to the background
    assert v.change_in == pytest.approx(64 / 256 * RED_OFF_PLAIN)
    assert v.change_out == pytest.approx(64 / 768 * RED_OFF_PLAIN)
    still = shapes_judge(original, original, "spatial", "red square", target, "")
    assert (still.success, still.reached, still.before, still.others_stay) == (False, False, False, True)
    assert (still.change_in, still.change_out) == (0.0, 0.0) and still.values == {"centre_x": 8.0, "centre_y": 8.0}
    there = shapes_judge(original, original, "spatial", "red square", quadrant("top left"), "")
    assert (there.success, there.before) == (True, True)  # the unedited image is the baseline's success
    assert shapes_judge(original, original, "spatial", "red square", None, "") is None
    gone = shapes_judge(original, scene(TOP_RIGHT_BLUE), "spatial", "red square", target, "")
    assert (gone.success, gone.reached) == (False, False) and gone.values == {}


def test_shapes_spatial_split_ruined_and_found_by_colour(shapes_judge):
    original = scene(TOP_LEFT_RED, TOP_RIGHT_BLUE)
    target = quadrant("bottom right")
    # split in two: the larger piece (centre 22, 22) lands, but three objects where there were two is no success
    split = shapes_judge(original, scene(*SPLIT_RED, TOP_RIGHT_BLUE), "spatial", "red square", target, "")
    assert split.values == {"centre_x": 22.0, "centre_y": 22.0}
    assert (split.reached, split.intact, split.others_stay, split.success) == (True, False, True, False)
    assert not shapes.no_new_objects(annotate(original), annotate(scene(*SPLIT_RED, TOP_RIGHT_BLUE)))
    # ruined by noise: the square's centre is in the quadrant, but 32 new objects make it a failure
    ruined = shapes_judge(original, confetti(scene(BOTTOM_RIGHT_RED)), "spatial", "red square", target, "")
    assert ruined.values == {"centre_x": 24.0, "centre_y": 24.0}
    assert (ruined.reached, ruined.intact, ruined.success) == (True, False, False)
    # the target is found by its colour when the edit blurred the shape into another
    moved = annotate(scene(BOTTOM_RIGHT_RED))
    assert shapes.main_object(moved, "red circle").label == "red square"
    assert shapes.centre_in(moved, "red circle", target) and not shapes.centre_in(moved, "blue circle", target)
    blurred = shapes_judge(original, scene(BOTTOM_RIGHT_RED, TOP_RIGHT_BLUE), "spatial", "red circle", target, "")
    assert blurred.success and blurred.values == {"centre_x": 24.0, "centre_y": 24.0}


def test_shapes_style_verdicts(shapes_judge):
    plain = scene(TOP_LEFT_RED, TOP_RIGHT_BLUE)
    striped = scene(TOP_LEFT_RED, TOP_RIGHT_BLUE, style="striped")
    assert shapes.style_of("striped background") == "striped" and shapes.style_of("red circle") is None
    v = shapes_judge(plain, striped, "global", "striped background", None, "")
    assert (v.success, v.reached, v.before, v.intact, v.others_stay) == (True, True, False, True, True)
    # the background (every pixel but the squares) turned from 25 to stripes of 60 and 115 in equal shares (the
    # squares cover rows 4-11: two rows of each colour twice); the squares, outside the region, did not change
    assert v.change_in == pytest.approx(((60 - PLAIN) + (115 - PLAIN)) / 2 / 255) and v.change_out == 0.0
    same = shapes_judge(plain, plain, "global", "striped background", None, "")
    assert (same.success, same.reached, same.before) == (False, False, False)
    already = shapes_judge(striped, striped, "global", "striped background", None, "")
    assert (already.success, already.before) == (True, True)
    assert shapes_judge(plain, striped, "global", "red circle", None, "") is None  # no style to judge
    # striped, but the blue square moved 4 px (more than STAY_PX): the objects must stay
    drifted = scene(TOP_LEFT_RED, (BLUE, slice(4, 12), slice(16, 24)), style="striped")
    assert 4 > shapes.STAY_PX
    d = shapes_judge(plain, drifted, "global", "striped background", None, "")
    assert (d.reached, d.intact, d.others_stay, d.success) == (True, False, False, False)
    assert not shapes.objects_stay(annotate(plain).objects, annotate(drifted))
    assert shapes.objects_stay(annotate(plain).objects, annotate(striped))
    ruined = shapes_judge(plain, confetti(striped), "global", "striped background", None, "")
    assert (ruined.intact, ruined.success) == (False, False)  # the red square lies under the noise


YELLOW = COLORS["yellow"]
TOP_LEFT_YELLOW = (YELLOW, slice(4, 12), slice(4, 12))  # 8 x 8 pixels, centre (8.0, 8.0)
BOTTOM_LEFT_GREEN = (COLORS["green"], slice(20, 28), slice(4, 12))
YELLOW_OFF_PLAIN = ((235 - 25) + (215 - 25) + (40 - 25)) / 3 / 255  # a pixel turning from plain background to yellow


def add_verdicts(judge, target: str, prompt: str) -> dict:
    """An add edit of `target` into the top left of an image holding the blue square at the top right, every way
    it can go; the same hand-drawn images for both judges."""
    original, region = scene(TOP_RIGHT_BLUE), quadrant("top left")
    drifted_blue = (BLUE, slice(4, 12), slice(16, 24))  # the blue square 4 px to the left
    edits = {"added": scene(TOP_LEFT_YELLOW, TOP_RIGHT_BLUE), "elsewhere": scene(BOTTOM_RIGHT_RED, TOP_RIGHT_BLUE),
             "wrong quadrant": scene((YELLOW, slice(20, 28), slice(20, 28)), TOP_RIGHT_BLUE),
             "moved the blue": scene(TOP_LEFT_YELLOW, drifted_blue),
             "with noise": scene(TOP_LEFT_YELLOW, TOP_RIGHT_BLUE, BOTTOM_LEFT_GREEN), "nothing": original}
    found = {name: judge(original, edited, "add", target, region, prompt) for name, edited in edits.items()}
    found["anywhere"] = judge(original, edits["wrong quadrant"], "add", target, None, prompt)
    was_there = scene(TOP_LEFT_YELLOW, TOP_RIGHT_BLUE)
    found["already there"] = judge(was_there, was_there, "add", target, region, prompt)
    return found


def check_add_verdicts(found: dict) -> None:
    def flags(v):
        return v.success, v.reached, v.before, v.intact, v.others_stay

    v = found["added"]
    assert flags(v) == (True, True, False, True, True) and v.values == {"centre_x": 8.0, "centre_y": 8.0}
    # 64 of the quadrant's 256 pixels turned yellow, nothing changed outside it
    assert v.change_in == pytest.approx(64 / 256 * YELLOW_OFF_PLAIN) and v.change_out == 0.0
    assert flags(found["wrong quadrant"]) == (False, False, False, True, True)
    assert found["wrong quadrant"].values == {"centre_x": 24.0, "centre_y": 24.0}
    assert flags(found["elsewhere"])[:2] == (False, False) and found["elsewhere"].values == {}  # not the label asked
    assert flags(found["moved the blue"]) == (False, True, False, False, False)  # 4 px > the 3.2 px it may drift
    assert flags(found["with noise"]) == (False, True, False, False, True)  # two new objects, one asked for
    assert flags(found["nothing"])[:2] == (False, False) and found["nothing"].change_in == 0.0
    assert flags(found["anywhere"])[:2] == (True, True)  # no region: anywhere will do
    # a yellow object that was there before is nothing added, however well placed
    assert flags(found["already there"])[:3] == (False, False, True)


def test_shapes_add_verdicts(shapes_judge):
    check_add_verdicts(add_verdicts(shapes_judge, "yellow square", "a blue square"))


def test_atlas_judge_add_verdicts(judge):
    check_add_verdicts(add_verdicts(judge, "yellow blob", "a blue blob"))


# -- the judge of any atlas (atlas/edit/judge.py) with a hand-made annotator -----------------------------------------

def colour_blobs(image: np.ndarray, prompt: str) -> list[tuple[str, np.ndarray]]:
    """A tiny annotator: every connected region of one palette colour is an object named '<colour> blob'."""
    found = []
    for name, rgb in COLORS.items():
        labels, n = ndimage.label((image == np.array(rgb, np.uint8)).all(-1))
        found += [(f"{name} blob", labels == k) for k in range(1, n + 1)]
    return found


class StripeScore:
    """A stand-in for CLIP: an image's similarity to any text is the spread of its row means (stripes score high)."""

    def similarity(self, images, text):
        return np.array([image.astype(np.float64).mean((1, 2)).std() / 255 for image in images])


@pytest.fixture
def judge() -> AtlasJudge:
    return AtlasJudge(colour_blobs, "colour blobs", clip=StripeScore)


def test_centre_of_mass_and_region_by_hand():
    assert centre_of_mass(scene(TOP_LEFT_RED)[..., 0] == RED[0]) == (8.0, 8.0)
    assert centre_of_mass(np.zeros((4, 4), bool)) is None
    region = quadrant("bottom right")
    assert in_region((16.0, 16.0), region) and not in_region((15.99, 16.0), region) and not in_region(None, region)
    assert in_region((32.0, 32.0), region)  # the far edge belongs to the last pixel
    inside, outside = locality(np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 51, np.uint8),
                               np.array([[True, False], [False, False]]))
    assert (inside, outside) == (pytest.approx(0.2), pytest.approx(0.2))
    assert locality(scene(), scene(), np.ones((SIZE, SIZE), bool)) == (0.0, None)


def test_label_mask_joins_the_pieces_of_one_label_and_head_noun_names_what_a_style_restyles():
    left, right = np.zeros((SIZE, SIZE), bool), np.zeros((SIZE, SIZE), bool)
    left[18:26, 10:13], right[18:26, 19:25] = True, True  # SPLIT_RED's two pieces
    blue = scene(TOP_RIGHT_BLUE)[..., 2] == BLUE[2]
    found = [("red blob", right), ("Red Blob ", left), ("blue blob", blue)]
    mask = rules.label_mask(found, "red blob", (SIZE, SIZE))
    assert (mask == (left | right)).all() and centre_of_mass(mask) == (18.5, 22.0)  # 24 px at x 11.5, 48 at 22
    assert not rules.label_mask(found, "green blob", (SIZE, SIZE)).any()
    assert rules.head_noun("Striped  Background") == "background" and rules.head_noun("dog") == "dog"
    assert rules.head_noun(" ") == ""


def test_verdict_needs_the_target_reached_and_the_image_intact():
    original, edited = scene(), scene(TOP_LEFT_RED)
    region = quadrant("top left")
    v = rules.verdict(original, edited, True, False, True, None, region, centre_x=8)
    assert (v.success, v.reached, v.before, v.intact, v.others_stay) == (True, True, False, True, None)
    assert v.values == {"centre_x": 8.0} and v.change_out == 0.0
    assert v.change_in == pytest.approx(64 / 256 * RED_OFF_PLAIN)
    assert not rules.verdict(original, edited, True, False, False, True, region).success  # reached, but ruined
    assert not rules.verdict(original, edited, False, True, True, True, region).success


def test_spatial_success_with_hand_computed_centre_and_locality(judge):
    original, moved = scene(TOP_LEFT_RED, TOP_RIGHT_BLUE), scene(BOTTOM_RIGHT_RED, TOP_RIGHT_BLUE)
    v = judge(original, moved, "spatial", "red blob", quadrant("bottom right"), "a red blob")
    assert (v.success, v.reached, v.before, v.intact, v.others_stay) == (True, True, False, True, True)
    assert v.values == {"centre_x": 24.0, "centre_y": 24.0}
    # 64 of the quadrant's 256 pixels turned red; outside, 64 of 768 turned back to the background
    assert v.change_in == pytest.approx(64 / 256 * RED_OFF_PLAIN)
    assert v.change_out == pytest.approx(64 / 768 * RED_OFF_PLAIN)


def test_spatial_no_move_already_there_and_no_region(judge):
    original = scene(TOP_LEFT_RED, TOP_RIGHT_BLUE)
    still = judge(original, original, "spatial", "red blob", quadrant("bottom right"), "a red blob")
    assert (still.success, still.reached, still.before, still.others_stay) == (False, False, False, True)
    assert (still.change_in, still.change_out) == (0.0, 0.0) and still.values == {"centre_x": 8.0, "centre_y": 8.0}
    there = judge(original, original, "spatial", "red blob", quadrant("top left"), "a red blob")
    assert (there.success, there.before) == (True, True)  # the unedited image is the baseline's success
    assert judge(original, original, "spatial", "red blob", None, "a red blob") is None
    gone = judge(original, scene(TOP_RIGHT_BLUE), "spatial", "red blob", quadrant("bottom right"), "a red blob")
    assert (gone.success, gone.reached) == (False, False) and gone.values == {}


def test_spatial_split_object_keeps_one_centre_and_is_no_success(judge):
    """Both pieces count (the object's pixel mass): centre x = (48 * 22 + 24 * 11.5) / 72 = 18.5, in the bottom
    right; but three objects where there were two is not intact."""
    original = scene(TOP_LEFT_RED, TOP_RIGHT_BLUE)
    v = judge(original, scene(*SPLIT_RED, TOP_RIGHT_BLUE), "spatial", "red blob", quadrant("bottom right"), "")
    assert v.values == {"centre_x": 18.5, "centre_y": 22.0}
    assert (v.reached, v.intact, v.others_stay, v.success) == (True, False, True, False)


def test_spatial_ruined_or_moving_others_is_a_failure(judge):
    original = scene(TOP_LEFT_RED, TOP_RIGHT_BLUE)
    ruined = judge(original, confetti(scene(BOTTOM_RIGHT_RED)), "spatial", "red blob", quadrant("bottom right"), "")
    # the noise's 8 red blocks (128 px, centre 14, 8) pull the red pixels' centre out of the quadrant:
    # x = (128 * 14 + 64 * 24) / 192, y = (128 * 8 + 64 * 24) / 192
    assert ruined.values == {"centre_x": pytest.approx(52 / 3), "centre_y": pytest.approx(40 / 3)}
    assert (ruined.reached, ruined.intact, ruined.success) == (False, False, False)
    assert ruined.others_stay is False  # the blue blob lies under the noise
    # green and yellow noise in the bottom left: the centre stays in the quadrant, 16 new objects make it a failure
    noisy = scene(BOTTOM_RIGHT_RED, TOP_RIGHT_BLUE)
    for r in range(4):
        for c in range(4):
            noisy[16 + 4 * r:20 + 4 * r, 4 * c:4 * c + 4] = COLORS["green" if (r + c) % 2 else "yellow"]
    v = judge(original, noisy, "spatial", "red blob", quadrant("bottom right"), "")
    assert (v.reached, v.intact, v.others_stay, v.success) == (True, False, True, False)
    # the blue blob drifted 4 px, more than STAY_FRACTION (3.2 px) of the side: reached, but no success
    drifted = judge(original, scene(BOTTOM_RIGHT_RED, (BLUE, slice(4, 12), slice(16, 24))), "spatial", "red blob",
                    quadrant("bottom right"), "")
    assert (drifted.reached, drifted.others_stay, drifted.success) == (True, False, False)
    alone = judge(scene(TOP_LEFT_RED), scene(BOTTOM_RIGHT_RED), "spatial", "red blob", quadrant("bottom right"), "")
    assert alone.others_stay is None and alone.success  # no other object to keep


def test_style_verdicts_with_a_stand_in_scorer(judge):
    plain = scene(TOP_LEFT_RED, TOP_RIGHT_BLUE)
    striped = scene(TOP_LEFT_RED, TOP_RIGHT_BLUE, style="striped")
    v = judge(plain, striped, "global", "striped background", None, "a red blob")
    assert (v.success, v.reached, v.before, v.intact, v.others_stay) == (True, True, None, True, True)
    assert v.values["clip_after"] > v.values["clip_before"]
    # the background (every pixel but the blobs) turned from 25 to stripes of 60 and 115 in equal shares; the
    # blobs, outside the edit's region, did not change
    assert v.change_in == pytest.approx(((60 - PLAIN) + (115 - PLAIN)) / 2 / 255) and v.change_out == 0.0
    same = judge(plain, plain, "global", "striped background", None, "")
    assert (same.reached, same.success) == (False, False)  # a similarity must rise, not stay
    back = judge(striped, plain, "global", "striped background", None, "")
    assert back.reached is False and back.values == {"clip_before": v.values["clip_after"],
                                                     "clip_after": v.values["clip_before"]}
    drifted = judge(plain, scene(TOP_LEFT_RED, (BLUE, slice(4, 12), slice(16, 24)), style="striped"), "global",
                    "striped background", None, "")
    assert (drifted.reached, drifted.others_stay, drifted.success) == (True, False, False)


def test_unedited_images_are_annotated_once():
    calls = []
    judge = AtlasJudge(lambda image, prompt: calls.append(prompt) or colour_blobs(image, prompt), "counted")
    original = scene(TOP_LEFT_RED)
    for edited in (scene(BOTTOM_RIGHT_RED), scene(TOP_RIGHT_BLUE), scene(BOTTOM_RIGHT_RED)):
        judge(original, edited, "spatial", "red blob", quadrant("bottom right"), "p")
    assert len(calls) == 4  # the original once, each edited image every time


def test_a_judge_without_a_style_scorer_says_so():
    judge = AtlasJudge(colour_blobs, "colour blobs")
    judge.ready("spatial")
    with pytest.raises(JudgeUnavailable, match="no style scorer"):
        judge.ready("global")


def test_a_verdict_is_plain_json():
    judge = AtlasJudge(colour_blobs, "colour blobs", clip=StripeScore)
    v = judge(scene(TOP_LEFT_RED), scene(TOP_LEFT_RED, style="striped"), "global", "striped background", None, "")
    assert isinstance(v, Verdict)
    assert json.loads(json.dumps(asdict(v))) == asdict(v)


# -- CLIP and LPIPS on tiny random models ----------------------------------------------------------------------------

def test_clip_similarity_is_the_cosine_of_the_two_embeddings(tiny_clip):
    images = [scene(TOP_LEFT_RED), scene(TOP_LEFT_RED, style="striped")]
    sims = tiny_clip.similarity(images, "striped background")
    assert sims.shape == (2,) and np.all(np.abs(sims) <= 1.0)
    with torch.no_grad():
        image = tiny_clip.model.encode_image(tiny_clip.preprocess(Image.fromarray(images[1]))[None])
        text = tiny_clip.model.encode_text(tiny_clip.tokenizer(["striped background"]))
    by_hand = float((image @ text.T) / (image.norm() * text.norm()))
    assert sims[1] == pytest.approx(by_hand, abs=1e-5)


def test_clip_style_judge_structure_and_antisymmetry(tiny_clip):
    judge = AtlasJudge(colour_blobs, "colour blobs and CLIP", clip=lambda: tiny_clip)
    plain, striped = scene(TOP_LEFT_RED), scene(TOP_LEFT_RED, style="striped")
    forth = judge(plain, striped, "global", "striped background", None, "a red blob")
    back = judge(striped, plain, "global", "striped background", None, "a red blob")
    assert set(forth.values) == {"clip_before", "clip_after"} and forth.before is None
    assert forth.values["clip_before"] != forth.values["clip_after"]
    assert forth.reached != back.reached  # exactly one direction raises the similarity
    assert judge(plain, plain, "global", "striped background", None, "").reached is False


def test_clip_without_weights_is_one_line_saying_what_to_download(tmp_path, monkeypatch):
    pytest.importorskip("open_clip")
    from huggingface_hub import constants

    from atlas.edit.scores import load_clip

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache, whatever this machine holds
    with pytest.raises(JudgeUnavailable) as err:
        load_clip("ViT-B-32", "laion2b_s34b_b79k")
    message = str(err.value)
    assert "\n" not in message and "hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in message
    assert "--clip-weights PATH" in message


def test_clip_loads_a_local_checkpoint_file(tmp_path, tiny_clip_config):
    open_clip = pytest.importorskip("open_clip")
    from atlas.edit.scores import load_clip

    config = tmp_path / "atlas-judge-tiny-clip.json"
    config.write_text(json.dumps(tiny_clip_config))
    open_clip.add_model_config(config)
    weights = tmp_path / "tiny.pt"
    torch.save(open_clip.create_model("atlas-judge-tiny-clip").state_dict(), weights)
    scorer = load_clip("atlas-judge-tiny-clip", str(weights), device="cpu")
    assert scorer.similarity([scene(TOP_LEFT_RED)], "red").shape == (1,)


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")
def test_lpips_is_zero_for_the_same_image_and_symmetric():
    lpips = pytest.importorskip("lpips")
    from atlas.edit.scores import LpipsScorer

    torch.manual_seed(0)
    scorer = LpipsScorer(lpips.LPIPS(net="alex", pnet_rand=True, verbose=False))  # random AlexNet, shipped heads
    a, b = scene(TOP_LEFT_RED), confetti(scene(TOP_LEFT_RED))
    assert scorer.distance(a, a) == 0.0
    assert scorer.distance(a, b) > 0 and scorer.distance(a, b) == pytest.approx(scorer.distance(b, a))


def test_lpips_without_weights_says_where_to_put_them(tmp_path, monkeypatch):
    pytest.importorskip("lpips")
    from atlas.edit.scores import load_lpips

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(JudgeUnavailable) as err:
        load_lpips()
    assert "\n" not in str(err.value) and f"into {tmp_path}/checkpoints/" in str(err.value)
    assert "alexnet-owt-7be5be79.pth" in str(err.value)
