"""Click options made from typed config dataclasses: the attribute docstrings become the `--help` text.

A field name means one range in every command (FIELD_TYPES), so a bad value stops in option parsing,
before a model loads or a long job starts.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
import typing
from collections.abc import Callable
from typing import Any

import click

from atlas.cli.common import DEVICE_NAME, FiniteFloat
from atlas.pipeline.presets import ANNOTATOR_NAMES


class FloatList(click.ParamType):
    """Comma-separated numbers in [lo, hi], kept as the text the config field holds (empty: the field's default)."""

    name = "numbers"

    def __init__(self, lo: float, hi: float = math.inf) -> None:
        self.lo, self.hi = lo, hi

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        for item in filter(str.strip, str(value).split(",")):
            try:
                number = float(item)
            except ValueError:
                self.fail(f"{item.strip()!r} is not a number: give comma-separated numbers, e.g. 1.0,0.5,0.0", param,
                          ctx)
            if not self.lo <= number <= self.hi:
                self.fail(f"{item.strip()} is outside [{self.lo:g}, {self.hi:g}]", param, ctx)
        return str(value)


class ChoiceList(click.ParamType):
    """Comma-separated names, each one of `choices`, kept as the text the config field holds."""

    name = "names"

    def __init__(self, *choices: str) -> None:
        self.choices = choices

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        for item in str(value).split(","):
            if item.strip() not in self.choices:
                self.fail(f"{item.strip()!r} is not one of {', '.join(self.choices)} (comma-separated)", param, ctx)
        return str(value)


class OptionalFile(click.Path):
    """An existing file, or empty for none."""

    def __init__(self) -> None:
        super().__init__(exists=True, dir_okay=False)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return value if value == "" else super().convert(value, param, ctx)


class LatentCount(click.ParamType):
    name = "count|Nx"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        try:
            number = float(text[:-1]) if text.endswith("x") else int(text)
        except ValueError:
            number = 0
        if not (number > 0 and math.isfinite(number)):
            self.fail(f"{value!r}: give a positive count (512) or a multiple of the width (4x)", param, ctx)
        return text


POSITIVE = click.IntRange(min=1)
COUNT = click.IntRange(min=0)
FRACTION = FiniteFloat(0, 1)
FIELD_TYPES: dict[str, click.ParamType] = {
    **dict.fromkeys(("seed", "steps", "n_images", "threads", "max_steps", "warmup_steps", "min_tokens"), COUNT),
    **dict.fromkeys(("batch_size", "n_per_prompt", "k", "attention_depth", "sae_tokens", "dead_tokens",
                     "max_concepts", "n", "min_hits"), POSITIVE),
    **dict.fromkeys(("minutes", "checkpoint_minutes", "lr", "epochs", "grad_clip"), FiniteFloat(min=0, min_open=True)),
    **dict.fromkeys(("caption_dropout", "threshold", "iou", "shared_colour_fraction"), FRACTION),
    "ema_decay": FiniteFloat(0, 1, max_open=True),
    "guidance": FiniteFloat(),
    "device": DEVICE_NAME,
    "latents": LatentCount(),
    "t": FloatList(0, 1),
    "concepts_t": FloatList(0, 1),
    "strengths": FloatList(0),
    "object_count_weights": FloatList(0),
    "preset": click.Choice(("shapes", "sd14")),
    "schedule": click.Choice(("zero-snr", "sd")),
    "text_encoder": click.Choice(("trained", "frozen")),
    "kind": click.Choice(("spatial", "style")),
    "branches": ChoiceList("cond", "uncond", "both"),
    "prompts": OptionalFile(),
    "branch": click.Choice(("cond", "both")),
    "annotator": click.Choice(("", *ANNOTATOR_NAMES)),
}
"""Option types by config field name; a field not named here takes its annotation (int, float, str)."""


def field_docs(cls: type) -> dict[str, str]:
    """The string literal written under each field of a dataclass (PEP 257 attribute docstrings)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def config_options(cls: type, exclude: tuple[str, ...] = ()) -> Callable:
    """Decorator adding one `--field-name` option per dataclass field, defaulting to the field's default."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)

    def decorate(func: Callable) -> Callable:
        for field in reversed(dataclasses.fields(cls)):
            if field.name in exclude:
                continue
            kind = hints[field.name]
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            name = "--" + field.name.replace("_", "-")
            if kind is bool:
                func = click.option(f"{name}/--no-{field.name.replace('_', '-')}", default=default,
                                    show_default=True, help=docs.get(field.name, ""))(func)
            else:
                func = click.option(name, field.name,
                                    type=FIELD_TYPES.get(field.name, kind if kind in (int, float, str) else str),
                                    default=default, show_default=True, help=docs.get(field.name, ""))(func)
        return func

    return decorate


def build_config(cls: type, values: dict) -> object:
    """Instantiate `cls` from the parsed options that belong to it; the rest stay in `values`."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: values.pop(k) for k in list(values) if k in names})
