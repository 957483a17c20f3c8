"""Click options made from typed config dataclasses: the attribute docstrings become the `--help` text."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from collections.abc import Callable

import click


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
                func = click.option(name, field.name, type=kind if kind in (int, float, str) else str,
                                    default=default, show_default=True, help=docs.get(field.name, ""))(func)
        return func

    return decorate


def build_config(cls: type, values: dict) -> object:
    """Instantiate `cls` from the parsed options that belong to it; the rest stay in `values`."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: values.pop(k) for k in list(values) if k in names})
