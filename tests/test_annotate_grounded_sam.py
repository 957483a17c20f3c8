"""grounded-sam plumbing on tiny randomly initialised Grounding DINO and SAM, saved and loaded like real checkpoints.

Only the weights are random: configs, processors, tokenizer, saving, loading and the backend's code are real.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from atlas.annotate.base import Annotator, AnnotatorNotAvailable, ObjectAnnotation
from atlas.annotate.config import AnnotateConfig
from atlas.annotate.grounded_sam import _tag_token_masks
from atlas.annotate.random import write_random_grounding_dino, write_random_sam
from atlas.annotate.taggers import check_tagger, get_tagger
from atlas.cli.main import main
from atlas.errors import BadInputError
from atlas.grids import mask_to_grid
from atlas.pipeline.presets import check_annotator, get_annotator

WORDS = ["a", "and", "dog", "red", "car", "cat", "on", "the"]
PROMPTS = ["a dog and a red car", "a cat on the car"]
TAGS = [{"dog", "red car"}, {"cat", "car"}]


@pytest.fixture(scope="module")
def tiny_grounding_dino(tmp_path_factory):
    return write_random_grounding_dino(tmp_path_factory.mktemp("tiny-grounding-dino"), WORDS)


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory):
    return write_random_sam(tmp_path_factory.mktemp("tiny-sam"))


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (128, 160, 3), dtype=np.uint8), rng.integers(0, 256, (144, 128, 3), dtype=np.uint8)]


def _add_to_hub_cache(cache, repo_id: str, files_from) -> None:
    """Put `files_from` into a Hugging Face cache as the main snapshot of `repo_id`, laid out as the hub client does."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(files_from, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_grounded_sam_runs_end_to_end_on_tiny_models(tiny_grounding_dino, tiny_sam):
    annotator = get_annotator("grounded-sam", grounding_dino=str(tiny_grounding_dino), sam=str(tiny_sam),
                              box_threshold=0.0, text_threshold=0.0, device="cpu")
    assert isinstance(annotator, Annotator) and annotator.name == "grounded-sam"
    images = _images()
    results = annotator.annotate(images, PROMPTS)
    assert len(results) == 2
    for image, tags, objects in zip(images, TAGS, results):
        h, w = image.shape[:2]
        assert objects, "threshold 0 keeps every query that survives NMS"
        assert [o.score for o in objects] == sorted((o.score for o in objects), reverse=True)
        for o in objects:
            assert isinstance(o, ObjectAnnotation) and o.label in tags
            assert 0.0 <= o.score <= 1.0
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h
            assert o.mask.dtype == bool and o.mask.shape == (h, w)
            assert mask_to_grid(o.mask, (8, 8)).shape == (8, 8)


def test_tags_map_to_their_own_tokens(tiny_grounding_dino):
    from transformers import AutoProcessor

    tokenizer = AutoProcessor.from_pretrained(tiny_grounding_dino, local_files_only=True).tokenizer
    text = "dog. red car. car."
    enc = tokenizer([text, "cat."], padding="longest", return_offsets_mapping=True, return_tensors="pt")
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"][0]) == \
        ["[CLS]", "dog", ".", "red", "car", ".", "car", ".", "[SEP]"]
    masks = _tag_token_masks(text, ["dog", "red car", "car"], enc["offset_mapping"][0])
    assert masks.tolist() == [[0, 1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 0, 0]]
    assert _tag_token_masks("cat.", ["cat"], enc["offset_mapping"][1]).tolist() == [[0, 1, 0, 0, 0, 0, 0, 0, 0]]


def test_grounded_sam_thresholds_and_batching_are_honoured(tiny_grounding_dino, tiny_sam):
    # One size: images of different sizes are padded in a batch, which moves a detector's outputs a little.
    images = [_images()[0], _images()[0][::-1].copy()]
    strict = get_annotator("grounded-sam", grounding_dino=str(tiny_grounding_dino), sam=str(tiny_sam),
                           box_threshold=1.0, device="cpu")
    assert strict.annotate(images, PROMPTS) == [[], []]
    loose = dict(grounding_dino=str(tiny_grounding_dino), sam=str(tiny_sam), box_threshold=0.0, text_threshold=0.0,
                 nms_iou=None, device="cpu")
    one_by_one = get_annotator("grounded-sam", batch_size=1, **loose).annotate(images, PROMPTS)
    batched = get_annotator("grounded-sam", batch_size=2, **loose).annotate(images, PROMPTS)
    assert [len(r) for r in one_by_one] == [20, 20]  # every query, without NMS
    for a, b in zip(one_by_one, batched):
        assert [o.label for o in a] == [o.label for o in b]
        np.testing.assert_allclose([o.box for o in a], [o.box for o in b], atol=1e-2)
    # A prompt without nouns has no tags, so nothing to look for.
    assert get_annotator("grounded-sam", **loose).annotate(images[:1], ["the left"]) == [[]]


def test_grounded_sam_loads_hugging_face_cache_ids(tiny_grounding_dino, tiny_sam, tmp_path):
    _add_to_hub_cache(tmp_path, "atlas-test/tiny-grounding-dino", tiny_grounding_dino)
    _add_to_hub_cache(tmp_path, "atlas-test/tiny-sam", tiny_sam)
    annotator = get_annotator("grounded-sam", grounding_dino="atlas-test/tiny-grounding-dino",
                              sam="atlas-test/tiny-sam", cache_dir=str(tmp_path), box_threshold=0.0, device="cpu")
    assert all(o.label in {"dog", "red car"} for o in annotator.annotate(_images()[:1], PROMPTS[:1])[0])


def test_missing_checkpoints_give_one_line_errors(tiny_sam, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty_cache = tmp_path / "empty-cache"
    empty_cache.mkdir()
    with pytest.raises(AnnotatorNotAvailable) as err:
        get_annotator("grounded-sam", grounding_dino="IDEA-Research/grounding-dino-tiny", sam=str(tiny_sam),
                      cache_dir=str(empty_cache))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("Grounding DINO weights IDEA-Research/grounding-dino-tiny are not on this machine")
    assert "hf download IDEA-Research/grounding-dino-tiny" in message and "--grounding-dino PATH" in message

    empty_dir = tmp_path / "nothing-here"
    empty_dir.mkdir()
    with pytest.raises(AnnotatorNotAvailable, match=r"^Grounding DINO weights .*nothing-here are not on this machine"):
        get_annotator("grounded-sam", grounding_dino=str(empty_dir), cache_dir=str(empty_cache))


def test_missing_sam_names_its_own_flag(tiny_grounding_dino, tmp_path):
    with pytest.raises(AnnotatorNotAvailable, match=r"^SAM weights atlas-test/no-such-sam .*--sam PATH$"):
        get_annotator("grounded-sam", grounding_dino=str(tiny_grounding_dino), sam="atlas-test/no-such-sam",
                      cache_dir=str(tmp_path))


def test_checkpoints_are_checked_from_files_alone(tiny_grounding_dino, tiny_sam, tmp_path, monkeypatch):
    """What `atlas build` and `atlas annotate` check before any stage: present checkpoints pass without loading,
    an incomplete one (no weights) or a missing tagger file is one line naming the option that fixes it."""
    from transformers import GroundingDinoForObjectDetection, SamModel

    def no_loading(*args, **kwargs):
        raise AssertionError("a check must not load weights")

    monkeypatch.setattr(GroundingDinoForObjectDetection, "from_pretrained", no_loading)
    monkeypatch.setattr(SamModel, "from_pretrained", no_loading)
    present = AnnotateConfig(grounding_dino=str(tiny_grounding_dino), sam=str(tiny_sam))
    check_annotator("grounded-sam", present)
    check_annotator("shapes", AnnotateConfig(grounding_dino="missing", sam="missing"))
    no_weights = tmp_path / "sam-without-weights"
    shutil.copytree(tiny_sam, no_weights, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    with pytest.raises(AnnotatorNotAvailable, match=r"^SAM weights .*sam-without-weights are not on this machine.*"
                                                    r"pass --sam PATH"):
        check_annotator("grounded-sam", AnnotateConfig(grounding_dino=str(tiny_grounding_dino), sam=str(no_weights)))
    with pytest.raises(AnnotatorNotAvailable, match="--tagger-weights|pip install"):
        check_annotator("grounded-sam", AnnotateConfig(grounding_dino=str(tiny_grounding_dino), sam=str(tiny_sam),
                                                       tagger="open-clip", tagger_weights=str(tmp_path / "no.pt")))
    with pytest.raises(BadInputError, match="prompt-nouns tagger takes no weights"):
        check_tagger("prompt-nouns", str(tmp_path / "no.pt"))


def test_annotate_cli_checks_checkpoints_before_opening_the_atlas(tiny_grounding_dino, tmp_path):
    result = CliRunner().invoke(main, ["annotate", "--annotator", "grounded-sam", "--grounding-dino",
                                       str(tiny_grounding_dino), "--sam", str(tmp_path / "no-sam"),
                                       "--atlas", str(tmp_path / "atlas")])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith("Error: SAM weights ") and "pass --sam PATH" in result.output


def test_unknown_tagger_lists_valid_names():
    with pytest.raises(BadInputError, match="prompt-nouns, open-clip, ram"):
        get_tagger("blip")


def test_ram_tagger_says_how_to_get_it(tmp_path):
    with pytest.raises(AnnotatorNotAvailable) as err:
        get_tagger("ram", weights=str(tmp_path / "ram_plus_swin_large_14m.pth"))
    if importlib.util.find_spec("ram") is None:
        assert "pip install" in str(err.value) and "recognize-anything" in str(err.value)
    else:
        assert "RAM weights" in str(err.value) and "--tagger-weights" in str(err.value)


def test_open_clip_tagger_without_weights_is_a_one_line_error(tmp_path):
    with pytest.raises(AnnotatorNotAvailable) as err:
        get_tagger("open-clip", weights=str(tmp_path / "missing.bin"))
    assert "\n" not in str(err.value)
    assert ("pip install open_clip_torch" in str(err.value)) or ("--tagger-weights" in str(err.value))


def test_open_clip_tagger_tags_from_its_vocabulary(tmp_path, tiny_clip_config):
    open_clip = pytest.importorskip("open_clip")
    config_file = tmp_path / "atlas-tiny-clip.json"
    config_file.write_text(json.dumps(tiny_clip_config))
    open_clip.add_model_config(config_file)
    torch.manual_seed(0)
    weights = tmp_path / "tiny-clip.pt"
    torch.save(open_clip.create_model("atlas-tiny-clip").state_dict(), weights)
    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("dog\nred car\ncat\n")
    tagger = get_tagger("open-clip", model="atlas-tiny-clip", weights=str(weights), vocabulary=str(vocabulary),
                        top_k=2, min_prob=0.0, device="cpu")
    tags = tagger.tag(_images(), PROMPTS)
    assert len(tags) == 2 and all(len(t) == 2 and set(t) <= {"dog", "red car", "cat"} for t in tags)
    assert get_tagger("open-clip", model="atlas-tiny-clip", weights=str(weights), vocabulary=["dog", "cat"],
                      min_prob=1.0, device="cpu").tag(_images(), PROMPTS) == [[], []]
