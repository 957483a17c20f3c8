"""What every `atlas` command shares: context settings, one-line errors, the common options."""

from __future__ import annotations

import functools

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXPECTED_ERRORS = (ValueError, FileNotFoundError, KeyError, PermissionError)


def one_line_errors(func):
    """Turn the library's expected errors into a one-line `Error: ...` and exit code 1, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except EXPECTED_ERRORS as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            raise click.ClickException(str(message).splitlines()[0] if message else type(err).__name__) from None

    return wrapper


def device_option(func):
    return click.option("--device", default="auto", show_default=True,
                        help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N.")(func)


def model_option(func):
    return click.option("--model", "model_name", default="shapes", show_default=True,
                        help="shapes (embedded), sd14 (CompVis/stable-diffusion-v1-4 from ATLAS_SD14_PATH or "
                             "the Hugging Face cache), a diffusers directory, or a cached hub id.")(func)


def atlas_option(func):
    return click.option("--atlas", "atlas_dir", type=click.Path(file_okay=False), default=None,
                        help="Atlas directory  [default: $ATLAS_DIR, else ./atlas; demo/atlas in a source "
                             "checkout]")(func)
