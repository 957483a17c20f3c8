"""Pipelines that string the rooms together (generation jobs, and later capture / build stages)."""
