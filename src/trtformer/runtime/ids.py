"""Token ids from callers, strictly: integers, never floats or bools rounded or cast on the way.

`int(1.9999)` is 1, so a float id would silently become another token; numpy arrays of floats or bools, JSON
numbers with a fraction and Python bools are refused with an InputError instead, wherever ids come in (encode,
generate, the CLI's files and lists).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from ..errors import InputError

INT64 = np.iinfo(np.int64)


def token_id(value, where: str) -> int:
    """`value` as an int if it is an integer (Python or numpy, not bool) that fits int64."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise InputError(f"{where} is {value!r}, which is not an integer token id")
    if not INT64.min <= int(value) <= INT64.max:
        raise InputError(f"{where} is {value}, which does not fit in int64")
    return int(value)


def id_rows(name: str, rows) -> list[list[int]]:
    """A list of integer rows from a 2-D integer array or a sequence of integer sequences (rows may differ in length)."""
    if isinstance(rows, np.ndarray):
        if rows.ndim != 2:
            raise InputError(f"{name} must be a 2-D array [sequences, tokens] or a list of lists, got shape {rows.shape}")
        if rows.dtype.kind not in "iu":
            raise InputError(f"{name} must hold integers, got an array of {rows.dtype}",
                             hint="token ids are integers; convert with .astype(np.int64) only if they are whole")
        return rows.astype(np.int64).tolist()
    if isinstance(rows, str | bytes) or not isinstance(rows, Sequence):
        raise InputError(f"{name} must hold one sequence of integers per row (a list of lists, or a 2-D integer "
                         f"array), got {type(rows).__name__}")
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, np.ndarray) and row.ndim == 1:
            row = id_rows(f"{name}[{i}]", row[None, :])[0] if row.size else []
        if isinstance(row, str | bytes) or not isinstance(row, Sequence):
            raise InputError(f"{name}[{i}] must be a sequence of integers, got {type(row).__name__}")
        out.append([token_id(t, f"{name}[{i}][{j}]") for j, t in enumerate(row)])
    return out
