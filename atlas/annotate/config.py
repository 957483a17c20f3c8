"""Options of the annotate stage (`atlas annotate`, and the annotate stage of `atlas build`).

Kept free of heavy imports: the CLI builds its options from it at startup."""

from __future__ import annotations

from dataclasses import dataclass

TAGGER_NAMES = ("prompt-nouns", "open-clip", "ram")
"""The taggers of atlas.annotate.taggers, by name."""


@dataclass
class AnnotateConfig:
    """Checkpoints of the grounded-sam annotator (the shapes annotator needs none)."""

    grounding_dino: str = "IDEA-Research/grounding-dino-tiny"
    """grounded-sam: Grounding DINO checkpoint (a directory saved by save_pretrained, a Hugging Face cache id, or the
    original groundingdino_swint_ogc.pth, converted once into <name>-transformers/ beside it)."""
    sam: str = "facebook/sam-vit-base"
    """grounded-sam: SAM checkpoint (a directory saved by save_pretrained, or a Hugging Face cache id)."""
    tagger: str = "prompt-nouns"
    """grounded-sam: where object names come from: prompt-nouns (the prompt's noun phrases, no weights), open-clip
    (zero-shot over the COCO classes) or ram (the paper's Recognize Anything Model)."""
    tagger_weights: str | None = None
    """open-clip or ram: the tagger's weights file (.pt/.bin/.safetensors for open-clip, .pth for ram)."""
    box_threshold: float = 0.35
    """grounded-sam: keep a detected box whose best object-name score reaches this (Grounding DINO's own default)."""
    text_threshold: float = 0.25
    """grounded-sam: a word of the object names counts for a box when its score reaches this."""
