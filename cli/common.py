"""What every `atlas` command shares: context settings, one-line errors, the common options and types."""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from atlas.errors import AtlasError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
MAX_PROMPT_CHARS = 1000
"""Text encoders read 77 tokens (about 300 characters); a prompt far longer than that is a mistake."""
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
SURROGATE = re.compile("[\udc80-\udcff]")  # how Python keeps argv bytes that are not UTF-8
Command = TypeVar("Command", bound=Callable[..., Any])


def one_line_errors(func: Command) -> Command:
    """Turn the library's expected errors (AtlasError) into a one-line `Error: ...` and exit code 1. Anything
    else is a bug and keeps its traceback. Arguments that are not UTF-8 are refused first: nothing downstream
    (SQL, JSON, the catalog) can store them."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _refuse_undecodable(kwargs)
        try:
            return func(*args, **kwargs)
        except AtlasError as err:
            raise click.ClickException(err.message) from None

    return cast(Command, wrapper)


def _refuse_undecodable(values: dict) -> None:
    context = click.get_current_context(silent=True)
    params = {p.name: p for p in context.command.params} if context else {}
    for name, value in values.items():
        for text in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(text, str) and SURROGATE.search(text):
                raise click.BadParameter("is not valid UTF-8 text: pass it in UTF-8 (check the terminal's encoding)",
                                         param=params.get(name), param_hint=None if name in params else name)


class PromptText(click.ParamType):
    """A prompt: some non-blank text of at most MAX_PROMPT_CHARS characters."""

    name = "prompt"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not text.strip():
            self.fail("is empty: give the text of the image, e.g. 'a red circle on the left'", param, ctx)
        if len(text) > MAX_PROMPT_CHARS:
            self.fail(f"has {len(text):,} characters; give at most {MAX_PROMPT_CHARS} (the text encoder reads "
                      "77 tokens)", param, ctx)
        return text


class DeviceName(click.ParamType):
    name = "device"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not DEVICE.fullmatch(str(value)):
            self.fail(f"unknown device {value!r}: use auto, cpu, cuda, cuda:N or mps", param, ctx)
        return str(value)


class FiniteFloat(click.FloatRange):
    """A float in a range that is also finite: `nan` passes every comparison of a plain FloatRange."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class OutputPath(click.Path):
    """A file or directory the command writes, refused while parsing (before any work) when it could not be
    written: it exists as the other kind or read-only, or its nearest existing folder is not a writable directory.
    A filesystem URI (s3://...) passes; it is checked when it is opened."""

    def __init__(self, dir_okay: bool) -> None:
        super().__init__(file_okay=not dir_okay, dir_okay=dir_okay, writable=True)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not value or "://" in str(value):
            return value
        path = super().convert(value, param, ctx)
        folder = next(p for p in Path(os.path.abspath(path)).parents if p.exists())
        if not Path(path).exists() and not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
            self.fail(f"cannot write {value}: {folder} is not a writable directory", param, ctx)
        return path


PROMPT = PromptText()
OUTPUT_DIR = OutputPath(dir_okay=True)
OUTPUT_FILE = OutputPath(dir_okay=False)
DEVICE_NAME = DeviceName()


def device_option(func: Command) -> Command:
    return click.option("--device", default="auto", show_default=True, type=DEVICE_NAME,
                        help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N.")(func)


def model_option(func: Command) -> Command:
    return click.option("--model", "model_name", default="shapes", show_default=True,
                        help="shapes (embedded), sd14, sd3-medium, flux-dev, flux-schnell (from ATLAS_SD14_PATH, "
                             "ATLAS_SD3_MEDIUM_PATH, ATLAS_FLUX_DEV_PATH, ATLAS_FLUX_SCHNELL_PATH or the Hugging Face "
                             "cache, never downloaded), a diffusers directory, or a cached hub id.")(func)


def atlas_option(func: Command) -> Command:
    return click.option("--atlas", "atlas_dir", type=click.Path(file_okay=False), default=None,
                        help="Atlas directory  [default: $ATLAS_DIR, else ./atlas-data; demo/atlas in a source "
                             "checkout]")(func)
