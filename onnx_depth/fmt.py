"""How numbers and names are written in the tables people read (the JSON report keeps them whole).

* `human(n)`: 38535168 -> "38.54M" (k, M, G; plain below 1000).
* `shorten(name, width)`: a node name longer than `width` keeps its start and its end and loses
  the middle ("/features/features.3/conv/conv.2/Clip" -> "/features/fe...nv/conv.2/Clip"): the
  end is what tells rows apart, the start where they are.
* `humanize_macs(text)`: in a message about MACs, every integer of 5+ digits written in human
  units.
"""

from __future__ import annotations

import re

ELLIPSIS = "..."  # ASCII: tables go to pipes and terminals of any encoding


def human(n: float) -> str:
    """12345678 -> '12.35M'."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:g}"


def shorten(name: str, width: int = 32) -> str:
    """`name` if it fits in `width` characters, else its start + '...' + its end (the end is
    kept one character longer than the start)."""
    name = str(name)
    if len(name) <= width or width <= len(ELLIPSIS) + 2:
        return name
    room = width - len(ELLIPSIS)
    head = room // 2
    return name[:head] + ELLIPSIS + name[len(name) - (room - head):]


def humanize_macs(text: str) -> str:
    """Integers of 5+ digits that count MACs ("costs 38535168 MACs > 9633792", "MACs 38535168 ->
    9633792") written as "38.54M"."""
    if "MACs" not in text:
        return text
    return re.sub(r"\b\d{5,}\b", lambda m: human(int(m.group(0))), text)
