"""``KEY=VALUE`` text typed by the dataclass field it names: the one parser behind every ``--set``.

Types come from the field's annotation resolved with ``typing.get_type_hints`` (so ``int | None``
and ``Optional[int]`` read the same), never from the annotation's spelling.
"""

from __future__ import annotations

import dataclasses
import types
import typing

from cluster.errors import InputError

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def field_types(cls) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def typed_value(annotation, text: str, what: str):
    """``text`` as a value of ``annotation`` (bool, int, float, str, or a union of them with None)."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or \
        typing.get_origin(annotation) is typing.Union else (annotation,)
    if type(None) in options and text.strip().lower() in ("none", "null"):
        return None
    for t in [o for o in options if o is not type(None)]:
        if t is bool:
            low = text.strip().lower()
            if low in _TRUE | _FALSE:
                return low in _TRUE
        elif t in (int, float):
            try:
                return t(text)
            except ValueError:
                continue
        elif t is str:
            return text
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise InputError(f"{what}: {text!r} is not a {names}")


def parse_assignment(cls, item: str, label: str | None = None) -> tuple[str, object]:
    """``KEY=VALUE`` -> (key, typed value) for a field of the dataclass ``cls``; errors start with
    ``label`` (default ``--set 'KEY=VALUE'``)."""
    label = label or f"--set {item!r}"
    key, sep, value = item.partition("=")
    types_ = field_types(cls)
    if not sep or key not in types_:
        raise InputError(f"{label}: expected KEY=VALUE with KEY one of {', '.join(types_)}")
    return key, typed_value(types_[key], value, label)
