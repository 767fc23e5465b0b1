"""A generic YAML -> frozen dataclass converter: every value checked against its field's type and range.

Errors name the key path, what was expected and what was found, e.g.
`experiments.cgan.train.lr: expected a float > 0, got 'fast'`. Unknown keys are errors, and so are missing
ones: a field has no default.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Literal

from gan_pipeline.errors import ParamsError

# The names of datasets and experiments: DVC puts them into commands (`stages/train.py --experiment
# <name>`) and paths (models/<name>/...), and MLflow into run names, so they are plain ASCII words that no
# shell, path or URL treats specially, and short enough for a file name.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
NAME_MAX = 64


def describe(tp: Any) -> str:
    """The words for a valid value of type `tp`: "an int", "one of 'a', 'b'", "a float or null"..."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == len(typing.get_args(tp)):  # mappings told apart by their `kind`
            return "a mapping with kind " + " or ".join(repr(k) for k in _kinds(args))
        return " or ".join(describe(a) for a in args) + " or null"
    if origin is tuple:
        return f"a list of {len(typing.get_args(tp))} numbers"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an int", float: "a float", str: "a string", bool: "true or false"}.get(tp, str(tp))


def convert(value: Any, tp: Any, key: str) -> Any:
    """Turn a YAML value into `tp`, or raise ParamsError naming `key`."""
    origin = typing.get_origin(tp)
    bad = ParamsError(f"{key}: expected {describe(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        choices = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(choices) > 1:
            return _by_kind(value, choices, key)
        (inner,) = choices
        try:
            return convert(value, inner, key)
        except ParamsError:
            raise bad from None
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise bad
        return tuple(convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        _, vtype = typing.get_args(tp)
        if not isinstance(value, dict):
            raise bad
        out = {}
        for name, item in value.items():
            check_name(name, key)
            out[name] = convert(item, vtype, f"{key}.{name}")
        return out
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        try:
            number = float(value)
        except OverflowError:  # an int beyond a float's range
            number = math.inf
        if not math.isfinite(number):
            raise ParamsError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str) or not value:
            raise bad
        return value
    raise TypeError(f"unsupported params type {tp}")


def check_name(name: Any, key: str) -> None:
    """A key of the mapping at `key` (a dataset or experiment name) must match NAME_PATTERN."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or len(name) > NAME_MAX:
        raise ParamsError(
            f"{key}: expected names matching ^{NAME_PATTERN.pattern}$ (ASCII letters, digits, '_' and '-', "
            f"at most {NAME_MAX} characters), got {name!r}"
        )


def _kinds(classes: list[type]) -> dict[str, type]:
    """Dataclasses by the one value of their `kind: Literal[...]` field."""
    return {typing.get_args(typing.get_type_hints(c)["kind"])[0]: c for c in classes}


def _by_kind(value: Any, classes: list[type], key: str) -> Any:
    """One of several dataclasses, the one whose `kind` the mapping names."""
    kinds = _kinds(classes)
    if not isinstance(value, dict):
        raise ParamsError(f"{key}: expected a mapping, got {value!r}")
    if value.get("kind") not in kinds:
        have = ", ".join(repr(k) for k in kinds)
        raise ParamsError(f"{key}.kind: expected one of {have}, got {value.get('kind')!r}")
    return build(kinds[value["kind"]], value, key)


def convert_fields(cls: type, raw: Any, key: str, partial: bool = False) -> dict[str, Any]:
    """The fields of dataclass `cls` that mapping `raw` holds, converted and checked.

    Every field must be there unless `partial` (a defaults section holds only some)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{key or 'params'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{key}." if key else ""
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(f"{prefix}{unknown[0]}: unknown key (expected one of {', '.join(sorted(fields))})")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            if not partial:
                raise ParamsError(f"{prefix}{name}: missing (expected {expected(f, hints[name])})")
            continue
        value = convert(raw[name], hints[name], prefix + name)
        check = f.metadata.get("ok")
        if check is not None and value is not None and not check(value):
            raise ParamsError(f"{prefix}{name}: expected {f.metadata['expect']}, got {raw[name]!r}")
        values[name] = value
    return values


def expected(f: dataclasses.Field, tp: Any) -> str:
    """What a valid value of field `f` (of type `tp`) is, in words."""
    return f.metadata.get("expect") or describe(tp)


def build(cls: type, raw: Any, key: str) -> Any:
    """Dataclass `cls` from mapping `raw` (at `key` in the params), every field there and checked."""
    return cls(**convert_fields(cls, raw, key))
