"""Symbolic shapes: dimension expressions such as "past + seq", bound to sizes taken from real arrays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def terms(expr: str) -> list[str]:
    return [t.strip() for t in expr.split("+")]


def evaluate(expr: str | int, sizes: Mapping[str, int]) -> int | None:
    """The value of a dimension expression, or None if a symbol in it is not bound yet."""
    if isinstance(expr, int):
        return expr
    total = 0
    for t in terms(expr):
        if t.lstrip("-").isdigit():
            total += int(t)
        elif t in sizes:
            total += sizes[t]
        else:
            return None
    return total


def resolve_shape(shape: Sequence[str | int], sizes: Mapping[str, int]) -> tuple[int, ...]:
    out = []
    for d in shape:
        v = evaluate(d, sizes)
        if v is None:
            raise KeyError(f"dimension {d!r} is not bound (known: {dict(sizes)})")
        out.append(v)
    return tuple(out)


def bind(shape: Sequence[str | int], actual: Sequence[int], sizes: dict[str, int]) -> list[str]:
    """Bind single-symbol dims of `shape` from `actual` into `sizes`; return the mismatches as messages.

    Fixed dims and dims already bound must agree. Sum expressions are left for `check`, once every
    symbol in them is bound.
    """
    problems = []
    for axis, (want, got) in enumerate(zip(shape, actual, strict=True)):
        if isinstance(want, int):
            if want != got:
                problems.append(f"axis {axis} must be {want}, got {got}")
        elif len(terms(want)) == 1:
            if want in sizes and sizes[want] != got:
                problems.append(f"axis {axis} ({want}) is {got}, but {want} = {sizes[want]} elsewhere")
            sizes.setdefault(want, got)
    return problems


def check(shape: Sequence[str | int], actual: Sequence[int], sizes: Mapping[str, int]) -> list[str]:
    problems = []
    for axis, (want, got) in enumerate(zip(shape, actual, strict=True)):
        v = evaluate(want, sizes)
        if v is not None and v != got:
            problems.append(f"axis {axis} ({want}) must be {v}, got {got}")
    return problems
