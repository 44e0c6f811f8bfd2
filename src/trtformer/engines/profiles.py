"""Optimisation profiles: min/opt/max for every dynamic dim of a graph, from its dims plus `NAME=min:opt:max` overrides.

Dims come from the graph's `dims`; a dim whose max is None (batch, choices) gets DEFAULT_MAX. Derived dims such
as "past + seq" or "min(16, mem + seg)" follow their parts (sums and minima grow with them), clamped to the
graph's `limits`. With the parts clamped together, the max corner of a derived dim can be smaller than the
sum of its parts' maxima (past 127 and seq 128 under a context of 128): each input still gets the full range it
can see, and TensorRT checks the real shapes at run time (it only warns about such a max corner).

The opt corner is different: TensorRT refuses a profile whose opt values break a shape relation of the graph
("kOPT values for profile 0 violate shape constraints"). So a derived dim's opt is never clamped on its own:
when its parts' opts add up past the limit, the opts of the parts the user did not set shrink until they fit
(`seq=1:128:128` on a context of 128 makes past's opt 0), and when the parts the user set already exceed it, the
override is refused before any build.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..artifact import GraphSpec
from ..artifact import shapes as expressions
from ..errors import ArtifactError, InputError

# Cap for dims the model leaves unbounded (batch). Engine memory grows with every max, and GPT's full-length
# logits are batch x seq x vocab: 16 keeps GPT-2 small's profile near 3 GiB of outputs. Raise it with --profile.
DEFAULT_MAX = 16
OVERRIDE_SYNTAX = "NAME=MIN:OPT:MAX or NAME=N, e.g. batch=1:4:32"


def _bad(message: str) -> InputError:
    return InputError(message, hint="`trtformer info ARTIFACT` lists the dims and limits")


@dataclass(frozen=True)
class DimRange:
    min: int
    opt: int
    max: int

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


@dataclass(frozen=True)
class Profile:
    dims: dict[str, DimRange]  # every manifest dim and every derived dim the inputs use
    shapes: dict[str, dict[str, tuple[int, ...]]]  # input name -> {"min": shape, "opt": shape, "max": shape}

    def to_dict(self) -> dict:
        return {
            "dims": {k: v.to_dict() for k, v in self.dims.items()},
            "inputs": {k: {c: list(s) for c, s in v.items()} for k, v in self.shapes.items()},
        }

    def summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.dims.items())


def parse_override(text: str) -> tuple[str, DimRange]:
    """'batch=1:4:32' -> ('batch', DimRange(1, 4, 32)); 'batch=4' fixes the dim at 4."""
    name, sep, values = text.rpartition("=")
    name = name.strip()
    parts = values.split(":")
    if not sep or not name or len(parts) not in (1, 3):
        raise _bad(f"--profile {text!r} is not {OVERRIDE_SYNTAX}")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise _bad(f"--profile {text!r}: sizes must be integers ({OVERRIDE_SYNTAX})") from None
    lo, opt, hi = numbers * 3 if len(numbers) == 1 else numbers
    if lo < 0 or not lo <= opt <= hi:
        raise _bad(f"--profile {text!r}: sizes must satisfy 0 <= min <= opt <= max")
    return name, DimRange(lo, opt, hi)


def parse_overrides(overrides: Iterable[str] | Mapping[str, DimRange] | None) -> dict[str, DimRange]:
    if not overrides:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    out: dict[str, DimRange] = {}
    for text in overrides:
        name, rng = parse_override(text)
        if name in out:
            raise _bad(f"--profile sets {name} twice")
        out[name] = rng
    return out


def _clamp(value: int, lo: int, hi: int) -> int:
    return max(lo, min(value, hi))


def _base_dims(graph: GraphSpec, overrides: dict[str, DimRange]) -> dict[str, DimRange]:
    out = {}
    for name, d in graph.dims.items():
        caps = [v for v in (d.max, graph.limits.get(name)) if v is not None]
        top = min(caps) if caps else None
        if name in overrides:
            rng = overrides[name]
            if rng.min < d.min or (top is not None and rng.max > top):
                allowed = f"{d.min} <= {name} <= {top}" if top is not None else f"{name} >= {d.min}"
                raise _bad(f"--profile {name}={rng}: the model accepts {allowed}")
            out[name] = rng
        else:
            hi = top if top is not None else max(DEFAULT_MAX, d.min)
            # The manifest's opt is a typical size and may lie outside [min, max] for small models.
            out[name] = DimRange(d.min, _clamp(d.opt, d.min, hi), hi)
    return out


def _corner(expr: str, base: dict[str, DimRange], corner: str) -> int:
    return expressions.evaluate(expr, {k: getattr(r, corner) for k, r in base.items()})


def _check_parts(expr: str, base: dict[str, DimRange], limit: int | None) -> None:
    unknown = [t for t in expressions.symbols(expr) if t not in base]
    if unknown:
        raise ArtifactError(f"the manifest's inputs use the dim {unknown[0]!r} (in {expr!r}) but its dims do not describe it")
    if limit is not None and (lo := _corner(expr, base, "min")) > limit:
        raise _bad(f"--profile: the minima of {expr} add up to {lo}, above the model's limit {limit}")


def _derived(expr: str, base: dict[str, DimRange], limit: int | None) -> DimRange:
    _check_parts(expr, base, limit)
    # Sums and min() both grow with their parts, so each corner of the expression is the expression of the corners.
    lo, opt, hi = (_corner(expr, base, corner) for corner in ("min", "opt", "max"))
    # The max corner is clamped on its own (see the module docstring); opt already fits, _fit_opts shrank its parts.
    return DimRange(lo, opt, hi if limit is None else min(hi, limit))


def _fit_opts(expr: str, base: dict[str, DimRange], limit: int, fixed: set[str]) -> None:
    """Shrink the opts of `expr`'s parts that are not in `fixed` (the user's overrides), last part first, until the
    expression's opt is within `limit`; refuse the overrides when that is not enough. Changes `base` in place."""
    _check_parts(expr, base, limit)
    parts = expressions.symbols(expr)
    for name in reversed([p for p in parts if p not in fixed]):
        if _corner(expr, base, "opt") <= limit:
            return
        rng = base[name]
        lo, hi = rng.min, rng.opt  # the largest opt in [min, opt] that fits; the expression grows with it
        while lo < hi:
            mid = (lo + hi + 1) // 2
            base[name] = DimRange(rng.min, mid, rng.max)
            lo, hi = (mid, hi) if _corner(expr, base, "opt") <= limit else (lo, mid - 1)
        base[name] = DimRange(rng.min, lo, rng.max)
    total = _corner(expr, base, "opt")
    if total > limit:
        opts = ", ".join(f"{p} {base[p].opt}" for p in parts)
        raise _bad(f"--profile: the opt sizes of {expr} ({opts}) make {total}, above the model's limit {limit}; "
                   "TensorRT needs every opt shape to be one the model can take: lower an opt")


def resolve(graph: GraphSpec, overrides: Iterable[str] | Mapping[str, DimRange] | None = None) -> Profile:
    """The profile for a graph's inputs: its dims, overridden where asked, derived dims from their parts."""
    wanted = parse_overrides(overrides)
    symbols = {d for t in graph.inputs for d in t.shape if isinstance(d, str)}
    for name in wanted:
        if name not in graph.dims:
            if name in symbols:
                parts = " and ".join(expressions.symbols(name))
                raise _bad(f"--profile {name}: it is derived from {parts}; set those instead")
            known = ", ".join(graph.dims) or "none"
            raise _bad(f"--profile {name}: the model has no such dim (dims: {known})")
    dims = _base_dims(graph, wanted)
    derived = sorted(symbols - set(dims))
    for expr in derived:  # only shrinks opts, so a constraint met stays met
        if (limit := graph.limits.get(expr)) is not None:
            _fit_opts(expr, dims, limit, set(wanted))
    for expr in derived:
        dims[expr] = _derived(expr, dims, graph.limits.get(expr))
    shapes = {}
    for t in graph.inputs:
        shapes[t.name] = {
            corner: tuple(d if isinstance(d, int) else getattr(dims[d], corner) for d in t.shape)
            for corner in ("min", "opt", "max")
        }
    return Profile(dims, shapes)
