"""Concept names rolled up from the dictionary (atlas.dictionary.names): what a concept's labels share."""

from __future__ import annotations

import pytest

from atlas.dictionary.names import CLOSE, Link, concept_name, rollup_name

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
