"""The shapes world: synthetic captions with ground truth, its tiny diffusion model, and its classical annotator.

One stage among others: nothing outside it imports it except the pipeline (its preset, and the jobs that
train and score the shapes model).
"""
