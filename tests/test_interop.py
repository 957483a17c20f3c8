"""Other tools read what Concept Atlas writes: diffusers loads the shapes model as a pipeline directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from atlas.models import generate, load_model
from atlas.models.loader import shapes_model_dir


def _diffusers_pipeline(path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(path), trust_remote_code=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_an_exported_pixel_model_is_a_diffusers_pipeline_giving_atlas_images(tiny_shapes_dir):
    """`save_pretrained` (what `atlas shapes export` calls) writes model_index.json and the pipeline's code: diffusers
    loads the directory and, seed for seed, draws the images `atlas generate` draws."""
    index = json.loads((tiny_shapes_dir / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_shapes", "ShapesPipeline"]
    pipe = _diffusers_pipeline(tiny_shapes_dir)
    prompts, seeds = ["a red circle", "a blue square on the left"], [3, 4]
    ours = pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in seeds], num_inference_steps=3,
                guidance_scale=2.0, output_type="np").images
    theirs = generate(load_model(str(tiny_shapes_dir), device="cpu"), prompts, seeds, steps=3, guidance=2.0)
    assert ours.shape == theirs.shape == (2, 32, 32, 3)
    assert np.abs((ours * 255).round().astype(int) - theirs.astype(int)).max() <= 1


@pytest.mark.slow
def test_the_shipped_shapes_model_loads_in_diffusers_and_draws_an_image():
    """The README's line, on data/shapes as shipped (its own steps and guidance)."""
    image = _diffusers_pipeline(shapes_model_dir())("a red circle",
                                                    generator=torch.Generator().manual_seed(0)).images[0]
    pixels = np.asarray(image)
    assert image.size == (32, 32) and pixels.std() > 10  # an image with content, not a flat or black square
