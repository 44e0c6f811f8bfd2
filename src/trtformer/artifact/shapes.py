"""Symbolic shapes: dimension expressions such as "past + seq", bound to sizes taken from real arrays.

An expression is a sum of terms; a term is an integer, a symbol, or `min(expr, expr, ...)`. The min form
describes a state that stops growing: Transformer-XL keeps the last mem_len rows, so its new memory is
"min(16, mem + seg)" for mem_len 16.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence


def _split(expr: str, sep: str) -> list[str]:
    """`expr` split at `sep` outside parentheses, parts stripped."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(expr):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced parentheses in the dimension {expr!r}")
        elif ch == sep and depth == 0:
            parts.append(expr[start:i].strip())
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced parentheses in the dimension {expr!r}")
    return [*parts, expr[start:].strip()]


# Cached: a Session parses the same few dimension strings for every input of every step (a decode loop's hot path).
@functools.cache
def terms(expr: str) -> tuple[str, ...]:
    """The summands of `expr`: "past + seq" -> ("past", "seq"); a min(...) term stays whole."""
    return tuple(_split(expr, "+"))


def _closing(text: str, open_at: int) -> int:
    """The index of the parenthesis that closes the one at `open_at` (-1 if none does)."""
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return -1


@functools.cache
def min_args(term: str) -> tuple[str, ...] | None:
    """The arguments of a `min(a, b, ...)` term, or None when the term is a symbol or an integer."""
    if not any(ch in term for ch in "(),"):
        return None
    # terms() has split at the top-level "+", so a min term is the whole call: "min(" ... matching ")".
    if not (term.startswith("min(") and term.endswith(")")) or _closing(term, 3) != len(term) - 1:
        raise ValueError(f"the dimension term {term!r} is neither a name, an integer nor min(a, b, ...)")
    args = tuple(_split(term[4:-1], ","))
    if not all(args):
        raise ValueError(f"empty argument in the dimension term {term!r}")
    return args


def _is_int(term: str) -> bool:
    return term.lstrip("-").isdigit()


def is_symbol(expr: str | int) -> bool:
    """True for a plain dimension name ("batch"), false for ints, integer strings, sums and min(...)."""
    if not isinstance(expr, str):
        return False
    t = terms(expr)
    return len(t) == 1 and not _is_int(t[0]) and min_args(t[0]) is None


def symbols(expr: str | int) -> list[str]:
    """The dimension names in `expr`, each once, in order of appearance."""
    if isinstance(expr, int):
        return []
    out: list[str] = []
    for t in terms(expr):
        args = min_args(t)
        found = [s for a in args for s in symbols(a)] if args is not None else [] if _is_int(t) else [t]
        out += [s for s in found if s not in out]
    return out


def evaluate(expr: str | int, sizes: Mapping[str, int]) -> int | None:
    """The value of a dimension expression, or None if a symbol in it is not bound yet."""
    if isinstance(expr, int):
        return expr
    total = 0
    for t in terms(expr):
        args = min_args(t)
        if args is not None:
            values = [evaluate(a, sizes) for a in args]
            if None in values:
                return None
            total += min(values)
        elif _is_int(t):
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

    Fixed dims and dims already bound must agree. Sums and min(...) are left for `check`, once every
    symbol in them is bound.
    """
    problems = []
    for axis, (want, got) in enumerate(zip(shape, actual, strict=True)):
        if isinstance(want, int):
            if want != got:
                problems.append(f"axis {axis} must be {want}, got {got}")
        elif is_symbol(want):
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


def along_axis(mask, axis: int, ndim: int):
    """A [batch, n] mask reshaped to broadcast over an `ndim`-dim array whose axis `axis` has the n positions."""
    return mask.reshape(mask.shape[0], *([1] * (axis - 1)), mask.shape[1], *([1] * (ndim - axis - 1)))
