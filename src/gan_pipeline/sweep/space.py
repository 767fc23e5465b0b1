"""A sweep's search space in the grammar of `dvc exp run -S`, checked against params.yaml before any trial.

Each item is `KEY=VALUES`, KEY a dotted key of one experiment (`train.lr`, or in full
`experiments.<name>.train.lr`) and VALUES one of:
  - a value (`train.epochs=20`): every trial gets it;
  - values separated by commas (`train.lr=1e-4,2e-4,5e-4`): a grid, every combination of every grid runs,
    as `dvc exp run --queue -S` queues them; `range(start, stop[, step])` is a grid too (stop excluded);
  - a distribution that each trial draws from (`--samples` trials per grid point), by Ray Tune's names:
    `choice(a, b, ...)`, `uniform(low, high)`, `quniform(low, high, q)`, `loguniform(low, high)`,
    `qloguniform(low, high, q)`, `randn(mean, sd)`, `randint(low, high)` (high excluded),
    `qrandint(low, high, q)`, `lograndint(low, high)`.
Values are YAML 1.2, as DVC reads them (`5e-4` is a float, `[0.0, 0.99]` a list); a comma inside brackets
or quotes belongs to the value (`train.diffaugment='color,cutout'`).

Nothing here imports Ray: the CLI checks the space, and its `--help` answers, before Ray loads.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

from gan_pipeline.config import Params, parse_params, read_yaml
from gan_pipeline.errors import ParamsError

# Ray Tune's sampling functions: name -> how many numbers they take (ranges where optional ones exist).
DISTRIBUTIONS: dict[str, tuple[int, ...]] = {
    "uniform": (2,),
    "quniform": (3,),
    "loguniform": (2,),
    "qloguniform": (3,),
    "randn": (2,),
    "randint": (2,),
    "qrandint": (3,),
    "lograndint": (2,),
}
_CALL = re.compile(r"^(\w+)\((.*)\)$", re.DOTALL)
SEED_KEY = "train.seed"
POINT_KEY = "grid_point"  # a trial's config: its grid combination under this key, the other keys flat


def trial_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config (to_tune's keys) as the dotted overrides it trains with."""
    flat = {k: v for k, v in config.items() if k != POINT_KEY}
    return {**flat, **config.get(POINT_KEY, {})}


@dataclass(frozen=True)
class Axis:
    """One key of the space: `kind` "value" (values[0] for all), "grid" (each value), "choice" (one value
    drawn per trial) or a DISTRIBUTIONS name (`values` are its numbers)."""

    key: str  # under experiments.<name>, e.g. train.lr
    kind: str
    values: tuple[Any, ...]
    text: str  # as given, for messages

    def corners(self) -> list[Any]:
        """The values that stand for the axis in the check against params.yaml: every listed value, a
        distribution's ends."""
        if self.kind in ("value", "grid", "choice"):
            return list(self.values)
        if self.kind == "randn":
            return [self.values[0]]
        low, high = self.values[0], self.values[1]
        if self.kind in ("randint", "qrandint", "lograndint"):
            return [int(low), int(high) - 1]  # Ray Tune's integer ranges exclude `high`
        return [low, high]


def split_items(text: str) -> list[str]:
    """`text` split at the commas that are outside brackets, parentheses and quotes."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items]


def _value(text: str, item: str) -> Any:
    try:
        return read_yaml(text) if text else None
    except (yaml.YAMLError, ParamsError) as exc:
        raise ParamsError(f"-S {item}: {text!r} is not a YAML value ({str(exc).splitlines()[0]})") from None


def parse_axis(item: str, experiment: str) -> Axis:
    """One `-S KEY=VALUES` item as an Axis; ParamsError naming the item when it does not parse."""
    key, sep, rhs = item.partition("=")
    key = key.strip().removeprefix("++").removeprefix("+")
    if not sep or not key:
        raise ParamsError(f"-S {item}: expected KEY=VALUE[,VALUE...] (e.g. train.lr=1e-4,2e-4)")
    full = f"experiments.{experiment}."
    if key.startswith("experiments.") and not key.startswith(full):
        raise ParamsError(
            f"-S {item}: the sweep trains experiment {experiment!r}: expected a key under {full}"
        )
    key = key.removeprefix(full)
    rhs = rhs.strip()
    call = _CALL.match(rhs)
    if call and call.group(1) in ("choice", "range", *DISTRIBUTIONS):
        name, args = call.group(1), [_value(a, item) for a in split_items(call.group(2))]
        if name == "choice":
            return Axis(key, "choice", tuple(args), item)
        if not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
            raise ParamsError(f"-S {item}: {name}(...) takes numbers, got {call.group(2)!r}")
        if name == "range":
            if len(args) not in (2, 3):
                raise ParamsError(f"-S {item}: range takes (start, stop[, step]), got {len(args)} numbers")
            return Axis(key, "grid", tuple(_range(*args, item=item)), item)
        if len(args) not in DISTRIBUTIONS[name]:
            raise ParamsError(f"-S {item}: {name} takes {DISTRIBUTIONS[name][0]} numbers, got {len(args)}")
        return Axis(key, name, tuple(args), item)
    values = tuple(_value(v, item) for v in split_items(rhs))
    return Axis(key, "grid" if len(values) > 1 else "value", values, item)


def _range(start: float, stop: float, step: float = 1, item: str = "") -> list[float]:
    if step == 0 or (stop - start) / step <= 0:
        raise ParamsError(f"-S {item}: range({start}, {stop}, {step}) is empty")
    count = int(-(-(stop - start) // step))  # ceil: stop excluded
    return [start + i * step for i in range(count)]


def parse_space(items: list[str], experiment: str, seeds: int | None, base_seed: int) -> list[Axis]:
    """The `-S` items as Axes, and with `seeds` N a grid of train.seed over base_seed .. base_seed + N - 1,
    last (it varies fastest: a point's seeds are consecutive trials). ParamsError for an item that does not
    parse, a key given twice, or seeds given both ways."""
    axes = [parse_axis(item, experiment) for item in items]
    keys = [a.key for a in axes]
    if twice := sorted({k for k in keys if keys.count(k) > 1}):
        raise ParamsError(f"-S: {twice[0]} given more than once")
    if seeds is not None:
        if SEED_KEY in keys:
            raise ParamsError(f"--seeds {seeds} and -S {SEED_KEY}=...: give the seeds one way")
        values = tuple(range(base_seed, base_seed + seeds))
        axes.append(Axis(SEED_KEY, "grid" if seeds > 1 else "value", values, f"--seeds {seeds}"))
    return axes


def set_key(raw: dict, experiment: str, key: str, value: Any) -> None:
    """Set `key` (dotted, under experiments.<experiment>) in a raw params mapping, adding sections."""
    node = raw["experiments"][experiment]
    *parents, last = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = value


def with_overrides(raw: dict, experiment: str, overrides: dict[str, Any], source: str) -> Params:
    """The params of `raw` with `overrides` (dotted keys under the experiment), checked; ParamsError
    prefixed with `source`."""
    raw = copy.deepcopy(raw)
    if experiment not in (raw.get("experiments") or {}):
        have = ", ".join(raw.get("experiments") or {})
        raise ParamsError(f"{source}: experiments.{experiment}: no such experiment (have: {have})")
    for key, value in overrides.items():
        set_key(raw, experiment, key, value)
    return parse_params(raw, source)


def check_space(raw: dict, experiment: str, axes: list[Axis], source: str) -> None:
    """The fixed values together, then every listed value and every distribution's end with them, checked as
    params.yaml values of the experiment (the typed checks and the checks across keys), then every grid
    combination: a ParamsError names the -S values it was checked with."""
    fixed = {a.key: a.values[0] for a in axes if a.kind == "value"}
    with_overrides(raw, experiment, fixed, f"{source} with {_shown(tuple(fixed.items()))}")
    for axis in axes:
        for value in axis.corners():
            shown = f"-S {axis.key}={format_value(value)}" + (" and the fixed -S values" if fixed else "")
            with_overrides(raw, experiment, {**fixed, axis.key: value}, f"{source} with {shown}")
    grids = [[(a.key, v) for v in a.values] for a in axes if a.kind in ("value", "grid")]
    for combination in itertools.product(*grids):  # a grid's combinations are few and known in advance
        with_overrides(raw, experiment, dict(combination), f"{source} with {_shown(combination)}")


def _shown(combination: tuple[tuple[str, Any], ...]) -> str:
    return " ".join(f"-S {k}={format_value(v)}" for k, v in combination)


def grid_points(axes: list[Axis]) -> list[dict[str, Any]]:
    """Every combination of the grids, in the order the trials start: the last axis varies fastest."""
    grids = [a for a in axes if a.kind == "grid"]
    return [dict(zip([a.key for a in grids], combination, strict=True))
            for combination in itertools.product(*(a.values for a in grids))]  # fmt: skip


def to_tune(axes: list[Axis]) -> dict[str, Any]:
    """The space as Ray Tune's param_space: the fixed values and the distributions under their dotted keys,
    the grid's combinations as one grid under POINT_KEY, in grid_points' order (Tune would order the keys
    of separate grids its own way)."""
    from ray import tune

    space: dict[str, Any] = {}
    if any(a.kind == "grid" for a in axes):
        space[POINT_KEY] = tune.grid_search(grid_points(axes))
    for axis in axes:
        if axis.kind == "value":
            space[axis.key] = axis.values[0]
        elif axis.kind == "grid":
            continue
        elif axis.kind == "choice":
            space[axis.key] = tune.choice(list(axis.values))
        else:
            space[axis.key] = getattr(tune, axis.kind)(*axis.values)
    return space


def format_value(value: Any) -> str:
    """A value as `-S` takes it back: YAML flow style (lists as [a, b], null, true), a float's repr."""
    if isinstance(value, str):
        loaded = read_yaml(value) if value else None
        return value if loaded == value and "," not in value else json.dumps(value)
    return json.dumps(value)


def dvc_set_args(raw: dict, experiment: str, overrides: dict[str, Any]) -> list[str]:
    """`-S` arguments that set `overrides` in experiments.<experiment> of params.yaml (`raw` as read from
    the file). A key that the experiment takes from the *_defaults sections is not in its section: it is
    added with DVC's `++` (add or override), which the plain `-S` refuses to do."""
    args = []
    for key, value in overrides.items():
        node: Any = raw["experiments"][experiment]
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        prefix = "" if node is not None else "++"
        args += ["-S", f"{prefix}experiments.{experiment}.{key}={format_value(value)}"]
    return args
