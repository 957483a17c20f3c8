"""The `grounded-sam` backend, as in the paper: tagger -> Grounding DINO boxes for the tags -> SAM masks.

Both models come through transformers from a directory or a Hugging Face cache id, local files only.
Each box is labelled with the tag whose tokens Grounding DINO scores highest for it (tag spans are found
from the tokenizer's character offsets), so labels are always whole tags, never stray word pieces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torchvision.ops import nms

from atlas.annotate.base import ObjectAnnotation, check_batch
from atlas.annotate.checkpoints import check_pretrained, load_pretrained
from atlas.annotate.config import AnnotateConfig
from atlas.annotate.original import check_grounding_dino_file, check_sam_file, grounding_dino_directory, sam_directory
from atlas.annotate.taggers import Tagger, get_tagger
from atlas.models.device import pick_device

if TYPE_CHECKING:
    from transformers import PreTrainedModel

PROCESSOR_FILES = ("config.json", "*processor_config.json")
"""What a saved Grounding DINO or SAM holds besides its weights: the model's config and the processor's (hub
checkpoints name it preprocessor_config.json, newer save_pretrained processor_config.json)."""


def check_checkpoints(grounding_dino: str, sam: str, cache_dir: str | None = None) -> None:
    """Raise AnnotatorNotAvailable for the first of Grounding DINO and SAM that is not on this machine (files only)."""
    if Path(grounding_dino).is_file():  # Grounding DINO's original .pth: converted when the annotator loads
        check_grounding_dino_file(Path(grounding_dino))
    else:
        check_pretrained(grounding_dino, "Grounding DINO weights", "--grounding-dino", PROCESSOR_FILES, cache_dir)
    if Path(sam).is_file():  # SAM's original sam_vit_*.pth: converted when the annotator loads
        check_sam_file(Path(sam))
    else:
        check_pretrained(sam, "SAM weights", "--sam", PROCESSOR_FILES, cache_dir)


class GroundedSamAnnotator:
    """A box is kept when its best tag scores above both thresholds (defaults: Grounding DINO's demo values, see
    AnnotateConfig); of boxes of one image that overlap by more than `nms_iou`, only the best is kept
    (non-maximum suppression, as Grounded-SAM's RAM demo does; None: off).
    """

    name = "grounded-sam"

    def __init__(self, grounding_dino: str = AnnotateConfig.grounding_dino, sam: str = AnnotateConfig.sam,
                 tagger: str | Tagger = AnnotateConfig.tagger, tagger_options: Mapping[str, object] | None = None,
                 box_threshold: float = AnnotateConfig.box_threshold,
                 text_threshold: float = AnnotateConfig.text_threshold, nms_iou: float | None = 0.5,
                 mask_threshold: float = 0.0, batch_size: int = 4, device: str | None = None,
                 cache_dir: str | None = None) -> None:
        from transformers import AutoProcessor, GroundingDinoForObjectDetection, SamModel

        check_checkpoints(str(grounding_dino), str(sam), cache_dir)  # both, before either loads
        grounding_dino, sam = grounding_dino_directory(str(grounding_dino)), sam_directory(str(sam))
        self.tagger = get_tagger(tagger, **(tagger_options or {})) if isinstance(tagger, str) else tagger
        self.box_threshold, self.text_threshold, self.nms_iou = box_threshold, text_threshold, nms_iou
        self.mask_threshold, self.batch_size = mask_threshold, batch_size
        self.device = pick_device(device)

        def load(cls: type[PreTrainedModel], name: str, what: str, flag: str) -> PreTrainedModel:
            return load_pretrained(cls.from_pretrained, str(name), what, flag, cache_dir)

        self.detector = load(GroundingDinoForObjectDetection, grounding_dino, "Grounding DINO weights",
                             "--grounding-dino").eval().to(self.device)
        self.detector_processor = load(AutoProcessor, grounding_dino, "Grounding DINO processor", "--grounding-dino")
        self.segmenter = load(SamModel, sam, "SAM weights", "--sam").eval().to(self.device)
        self.segmenter_processor = load(AutoProcessor, sam, "SAM processor", "--sam")

    def annotate(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> list[list[ObjectAnnotation]]:
        check_batch(images, prompts)
        out: list[list[ObjectAnnotation]] = []
        for start in range(0, len(images), self.batch_size):
            out += self._batch(images[start:start + self.batch_size], prompts[start:start + self.batch_size])
        return out

    def _batch(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> list[list[ObjectAnnotation]]:
        tags = [_clean_tags(t) for t in self.tagger.tag(images, prompts)]
        out: list[list[ObjectAnnotation]] = [[] for _ in images]
        todo = [i for i, t in enumerate(tags) if t]
        if not todo:
            return out
        detections = self._detect([images[i] for i in todo], [tags[i] for i in todo])
        found = [(i, d) for i, d in zip(todo, detections) if d[0]]
        if not found:
            return out
        masks = self._segment([images[i] for i, _ in found], [d[2] for _, d in found])
        for (i, (labels, scores, boxes)), image_masks in zip(found, masks):
            out[i] = [ObjectAnnotation(label, score, tuple(box), mask)
                      for label, score, box, mask in zip(labels, scores, boxes.tolist(), image_masks)]
        return out

    @torch.no_grad()
    def _detect(self, images: Sequence[np.ndarray], tags: Sequence[list[str]]
                ) -> list[tuple[list[str], list[float], np.ndarray]]:
        """Per image: labels, scores and (n, 4) xyxy pixel boxes of the kept detections, best first."""
        texts = [". ".join(t) + "." for t in tags]
        pixels = self.detector_processor.image_processor([Image.fromarray(im) for im in images], return_tensors="pt")
        text = self.detector_processor.tokenizer(
            texts, padding="longest", truncation=True, max_length=self.detector.config.max_text_len,
            return_offsets_mapping=True, return_token_type_ids=True, return_tensors="pt")
        offsets = text.pop("offset_mapping")
        inputs = {k: v.to(self.device) for k, v in {**pixels, **text}.items()}
        output = self.detector(**inputs)
        probs = output.logits.sigmoid()[..., : offsets.shape[1]].float().cpu()
        results = []
        for b, image in enumerate(images):
            spans = _tag_token_masks(texts[b], tags[b], offsets[b])  # (n_tags, T)
            per_tag = (probs[b][:, None, :] * spans[None]).amax(-1)  # (Q, n_tags)
            score, best = per_tag.max(-1)
            keep = (score > self.box_threshold) & (score > self.text_threshold)
            h, w = image.shape[:2]
            boxes = _cxcywh_to_xyxy(output.pred_boxes[b].float().cpu()) * torch.tensor([w, h, w, h])
            boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                                 boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], -1)[keep]
            score, best = score[keep], best[keep]
            order = nms(boxes, score, self.nms_iou) if self.nms_iou is not None else score.argsort(descending=True)
            results.append(([tags[b][j] for j in best[order].tolist()], score[order].tolist(), boxes[order].numpy()))
        return results

    @torch.no_grad()
    def _segment(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per image: (n, H, W) bool SAM masks for its n boxes; the image encoder runs once per batch."""
        enc = self.segmenter_processor(images=[Image.fromarray(im) for im in images], return_tensors="pt")
        embeddings = self.segmenter.get_image_embeddings(enc["pixel_values"].to(self.device))
        out = []
        for i, image_boxes in enumerate(boxes):
            (old_h, old_w), (new_h, new_w) = enc["original_sizes"][i].tolist(), enc["reshaped_input_sizes"][i].tolist()
            scaled = torch.as_tensor(image_boxes, dtype=torch.float32) * torch.tensor(
                [new_w / old_w, new_h / old_h, new_w / old_w, new_h / old_h])
            pred = self.segmenter(image_embeddings=embeddings[i:i + 1], input_boxes=scaled[None].to(self.device),
                                  multimask_output=False).pred_masks
            masks = self.segmenter_processor.post_process_masks(
                pred.float().cpu(), enc["original_sizes"][i:i + 1], enc["reshaped_input_sizes"][i:i + 1],
                mask_threshold=self.mask_threshold, binarize=True)[0]
            out.append(masks[:, 0].numpy().astype(bool))
        return out


def _clean_tags(tags: Sequence[str]) -> list[str]:
    """Lower-case, without the '.' that separates tags in Grounding DINO's text, without repeats."""
    out: list[str] = []
    for tag in tags:
        tag = " ".join(tag.lower().replace(".", " ").split())
        if tag and tag not in out:
            out.append(tag)
    return out


def _tag_token_masks(text: str, tags: Sequence[str], offsets: torch.Tensor) -> torch.Tensor:
    """(n_tags, T) float: 1 where token t lies inside tag j's characters in `text` ("tag. tag. ...")."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    real = ends > starts  # special and padding tokens have empty spans
    masks, pos = [], 0
    for tag in tags:
        s = text.index(tag, pos)
        pos = s + len(tag)
        masks.append(real & (starts >= s) & (ends <= pos))
    return torch.stack(masks).float()


def _cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
