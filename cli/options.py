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

from atlas.annotate.config import TAGGER_NAMES
from atlas.capture.config import DTYPE_BYTES, parse_key
from atlas.cli.common import DEVICE_NAME, OUTPUT_DIR, FiniteFloat
from atlas.edit.config import EVAL_KINDS
from atlas.errors import BadInputError
from atlas.pipeline.presets import ANNOTATOR_NAMES
from atlas.sae.config import SAE_TYPES, parse_latents


class FloatList(click.ParamType):
    """Comma-separated numbers in [lo, hi] -> list[float]. With `as_text`, kept as the text the config field holds
    (for fields still typed str)."""

    name = "numbers"
    number = float
    example = "1.0,0.5,0.0"

    def __init__(self, lo: float, hi: float = math.inf, as_text: bool = False) -> None:
        self.lo, self.hi, self.as_text = lo, hi, as_text

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[float] | str:
        if isinstance(value, (list, tuple)):  # a field's default
            return list(value)
        numbers = []
        for item in filter(str.strip, str(value).split(",")):
            try:
                number = self.number(item)
            except ValueError:
                self.fail(f"{item.strip()!r} is not {'an integer' if self.number is int else 'a number'}: give "
                          f"comma-separated numbers, e.g. {self.example}", param, ctx)
            if not self.lo <= number <= self.hi:
                self.fail(f"{item.strip()} is outside [{self.lo:g}, {self.hi:g}]", param, ctx)
            numbers.append(number)
        if not numbers and not self.as_text:
            self.fail(f"give at least one number (comma-separated, e.g. {self.example})", param, ctx)
        return str(value) if self.as_text else numbers


class IntList(FloatList):
    """Comma-separated integers in [lo, hi] -> list[int]."""

    name = "integers"
    number = int
    example = "10,20"


class ChoiceList(click.ParamType):
    """Comma-separated names, each one of `choices` (or an alias of `aliases` standing for several) -> list[str]."""

    name = "names"

    def __init__(self, *choices: str, aliases: dict[str, tuple[str, ...]] | None = None) -> None:
        self.choices, self.aliases = choices, aliases or {}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        if isinstance(value, (list, tuple)):  # a field's default
            return list(value)
        names: list[str] = []
        for item in (part.strip() for part in str(value).split(",")):
            if item in self.aliases:
                names += self.aliases[item]
            elif item in self.choices:
                names.append(item)
            else:
                known = ", ".join((*self.choices, *self.aliases))
                self.fail(f"{item!r} is not one of {known} (comma-separated)", param, ctx)
        return list(dict.fromkeys(names))


class NameList(click.ParamType):
    """Comma-separated names (e.g. hook points, checked where they are used) -> list[str]."""

    name = "names"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        if isinstance(value, (list, tuple)):
            return list(value)
        names = [part.strip() for part in str(value).split(",") if part.strip()]
        if not names:
            self.fail("give at least one name (comma-separated, e.g. down,mid,up)", param, ctx)
        return names


class KeyList(NameList):
    """Comma-separated capture keys (mid/1.0, up/0.0/uncond, down/0.5/both), each checked -> list[str]."""

    name = "keys"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        keys = super().convert(value, param, ctx)
        for key in keys:
            try:
                parse_key(key)
            except BadInputError as err:
                self.fail(err.message, param, ctx)
        return keys


class OptionalFile(click.Path):
    """An existing file, or empty for none."""

    def __init__(self) -> None:
        super().__init__(exists=True, dir_okay=False)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return value if value == "" else super().convert(value, param, ctx)


class LatentCount(click.ParamType):
    name = "count|Nx"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            parse_latents(value)
        except BadInputError as err:
            self.fail(err.message.split(": ", 1)[1], param, ctx)
        return str(value).strip()


POSITIVE = click.IntRange(min=1)
COUNT = click.IntRange(min=0)
FRACTION = FiniteFloat(0, 1)
FIELD_TYPES: dict[str, click.ParamType] = {
    **dict.fromkeys(("seed", "steps", "threads", "max_steps", "warmup_steps", "min_tokens", "dead_tokens",
                     "sae_tokens", "sweep_tokens", "spliced_images", "max_images"), COUNT),
    **dict.fromkeys(("batch_size", "sae_batch_size", "n_per_prompt", "n_images", "attention_depth",
                     "buffer_tokens", "max_concepts", "n", "min_hits", "links"), POSITIVE),
    **dict.fromkeys(("minutes", "checkpoint_minutes", "lr", "epochs", "grad_clip"), FiniteFloat(min=0, min_open=True)),
    **dict.fromkeys(("caption_dropout", "threshold", "box_threshold", "text_threshold", "iou",
                     "shared_colour_fraction", "active_fraction", "min_cosine", "min_coactivation"), FRACTION),
    "ema_decay": FiniteFloat(0, 1, max_open=True),
    "guidance": FiniteFloat(min=0),
    "device": DEVICE_NAME,
    "latents": LatentCount(),
    "t": FloatList(0, 1),
    "k": IntList(1),
    **dict.fromkeys(("sae_type", "sweep_types"), ChoiceList(*SAE_TYPES)),
    "sweep_k": IntList(1),
    "concepts_t": FloatList(0, 1, as_text=True),
    "strengths": FloatList(0, as_text=True),
    "object_count_weights": FloatList(0, as_text=True),
    "blocks": NameList(),
    "keys": KeyList(),
    "dtype": click.Choice(tuple(DTYPE_BYTES)),
    "preset": click.Choice(("shapes", "sd14")),
    "schedule": click.Choice(("zero-snr", "sd")),
    "text_encoder": click.Choice(("trained", "frozen")),
    "backbone": click.Choice(("unet", "dit")),
    "kind": click.Choice(EVAL_KINDS),
    "branches": ChoiceList("cond", "uncond", aliases={"both": ("cond", "uncond")}),
    "prompts": OptionalFile(),
    **dict.fromkeys(("atlas", "run_dir"), OUTPUT_DIR),
    "branch": click.Choice(("cond", "both")),
    "annotator": click.Choice(ANNOTATOR_NAMES),
    "tagger": click.Choice(TAGGER_NAMES),
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
    """Decorator adding one `--field-name` option per dataclass field, defaulting to the field's default. A field
    holding another config is left out: that config's own options fill it."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)

    def decorate(func: Callable) -> Callable:
        for field in reversed(dataclasses.fields(cls)):
            kind = hints[field.name]
            if field.name in exclude or dataclasses.is_dataclass(kind):
                continue
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            name = "--" + field.name.replace("_", "-")
            if kind is bool:
                func = click.option(f"{name}/--no-{field.name.replace('_', '-')}", default=default,
                                    show_default=True, help=docs.get(field.name, ""))(func)
            else:
                func = click.option(name, field.name,
                                    type=FIELD_TYPES.get(field.name, kind if kind in (int, float, str) else str),
                                    default=default, show_default=default is not None,
                                    help=docs.get(field.name, ""))(func)
        return func

    return decorate


def build_config(cls: type, values: dict) -> object:
    """Instantiate `cls` from the parsed options that belong to it; the rest stay in `values`."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: values.pop(k) for k in list(values) if k in names})
