"""Reading Kubernetes objects as plain dicts (as kubectl and the watch return them). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def get(obj: Mapping[str, Any] | None, *path: str) -> Any:
    """``obj[path[0]][path[1]]…``, None where a level is missing."""
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur
