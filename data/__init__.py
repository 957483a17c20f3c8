"""Data shipped with Concept Atlas (installed as atlas.data): the shapes model in shapes/."""
