"""Which templates, phrasings and value formats a generator holds out of training.

Every generator of training data (realistic documents, recall questions, instructions) splits each
of its lists the same way: item ``i`` is held out when ``i % 3 == 2``, so an evaluation can use
phrasings and formats that training never drew.

Usage example::

    from d2l_haystack.training.heldout import part_of

    part_of(["a", "b", "c", "d"], "train")     # ['a', 'b', 'd']
    part_of(["a", "b", "c", "d"], "heldout")   # ['c']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

PARTS = ("train", "heldout")

T = TypeVar("T")


def held_out_index(i: int) -> bool:
    """Every third item of a list (indices 2, 5, ...) belongs to the held-out part."""
    return i % 3 == 2


def part_of(items: Sequence[T], part: str) -> list[T]:
    """The items of ``part`` (``any``: all of them). A list with no held-out item (fewer than three)
    is the same in both parts.

    :raises ValueError: ``part`` is not ``train``, ``heldout`` or ``any``.
    """
    if part == "any":
        return list(items)
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    keep = [x for i, x in enumerate(items) if held_out_index(i) == (part == "heldout")]
    return keep or list(items)


__all__ = ["PARTS", "held_out_index", "part_of"]
