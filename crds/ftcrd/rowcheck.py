"""The quick acceptance check of a dataset row: the keys of the row shapes, and :func:`quick_kind`, which tells
whether :func:`ftcrd.dataset.parse_row` accepts the common rows without building them.

Why: the API validates an upload row by row as it arrives, and building the rows (messages, dataclasses) was
most of its CPU per MB. Most rows are plain: string texts and ``{"role", "content"}`` messages, no tools. For
those, this module checks exactly what :func:`~ftcrd.dataset.parse_row` checks, on the decoded JSON, without
allocating. Anything else (and every refusal) goes to :func:`~ftcrd.dataset.parse_row`, the one parser, so the
errors are its own. tests/crd/test_fastpath.py compares the two on generated rows.
"""

from __future__ import annotations

from typing import Any

from ftcrd.messages import ROLES

DEFAULT_MAX_FIELD_CHARS = 200_000
PREFERRED_KEYS = ("preferred_output", "preferred_completion")
NON_PREFERRED_KEYS = ("non_preferred_output", "non_preferred_completion")
OUTPUT_ROLES = frozenset({"assistant", "tool"})
_PAIR_KEYS = ("input", *PREFERRED_KEYS, *NON_PREFERRED_KEYS)


def _plain_messages(value: Any, max_chars: int, roles: frozenset[str] | tuple[str, ...] = ROLES) -> bool:
    """``value`` is a non-empty list of ``{"role", "content"}`` messages (exactly those two keys) with a role in
    ``roles`` and a non-blank text of at most ``max_chars`` characters: what :func:`parse_messages` accepts
    without a question (``not text.strip()`` is ``not text or text.isspace()``, which stops at the first
    letter)."""
    if type(value) is not list or not value:
        return False
    for msg in value:
        if type(msg) is not dict or len(msg) != 2:
            return False
        text = msg.get("content")
        if (
            type(text) is not str
            or not text
            or len(text) > max_chars
            or text.isspace()
            or type(role := msg.get("role")) is not str
            or role not in roles
        ):
            return False
    return True


def _plain_text(obj: dict[str, Any], key: str, max_chars: int) -> bool:
    text = obj.get(key)
    return type(text) is str and bool(text) and len(text) <= max_chars and not text.isspace()


def _plain_output(obj: dict[str, Any], keys: tuple[str, str], max_chars: int) -> bool:
    """One of ``keys`` holds plain assistant/tool replies that start and end with an assistant message."""
    if (keys[0] in obj) == (keys[1] in obj):
        return False
    replies = obj[keys[0]] if keys[0] in obj else obj[keys[1]]
    return (
        _plain_messages(replies, max_chars, OUTPUT_ROLES)
        and replies[0]["role"] == "assistant"
        and replies[-1]["role"] == "assistant"
    )


def quick_kind(obj: Any, max_chars: int = DEFAULT_MAX_FIELD_CHARS) -> bool | None:
    """Whether :func:`parse_row` accepts ``obj`` as a pair (True) or a conversation (False), decided without
    building the row, for the common rows (string texts, ``{"role", "content"}`` messages, no tools); ``None``
    when it cannot tell, and then :func:`parse_row` decides. It never says True or False where :func:`parse_row`
    would refuse or say the other (tests/crd/test_fastpath.py), so errors always come from :func:`parse_row`.
    The API's upload check spends most of its time on rows, and this is several times faster than building them.
    """
    if type(obj) is not dict or obj.get("tools") is not None or obj.get("functions") is not None:
        return None
    if "messages" in obj:
        if any(k in obj for k in _PAIR_KEYS):
            return None
        messages = obj["messages"]
        if not _plain_messages(messages, max_chars) or messages[0]["role"] == "assistant":
            return None
        return False if any(m["role"] == "assistant" for m in messages) else None
    if any(k in obj for k in _PAIR_KEYS):
        inp = obj.get("input")
        if (
            type(inp) is dict
            and inp.get("tools") is None
            and inp.get("functions") is None
            and _plain_messages(inp.get("messages"), max_chars)
            and _plain_output(obj, PREFERRED_KEYS, max_chars)
            and _plain_output(obj, NON_PREFERRED_KEYS, max_chars)
        ):
            return True
        return None
    if all(_plain_text(obj, key, max_chars) for key in ("prompt", "chosen", "rejected")):
        return True
    return None
