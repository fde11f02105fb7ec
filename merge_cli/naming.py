"""Fresh names: tensors, nodes and models that must not collide with any name already taken."""

from __future__ import annotations


def unique_name(base: str, taken: set[str]) -> str:
    """`base`, or `base_2`, `base_3`, ... whichever is free first; the result is added to `taken`."""
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name
