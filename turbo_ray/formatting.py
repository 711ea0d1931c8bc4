"""How values and counts are printed, the same in every table and progress line."""

from __future__ import annotations


def short(value) -> str:
    """A parameter value as tables and progress lines print it."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def counted(n: int, noun: str) -> str:
    """`n` and `noun`, plural unless one: "1 fold", "5 folds"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
