"""Each benchmark keeps its latest table in its own marked section of docs/benchmarks.md.

A rerun replaces only what lies between its markers, so the other benchmarks' sections and any prose around
them stay as they are.
"""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}-bench:start -->", f"<!-- {name}-bench:end -->"


def replace_section(current: str, name: str, body: str, heading: str | None = None) -> str:
    """``current`` with the ``name`` section's body replaced, or the section appended (under ``heading``)."""
    start, end = markers(name)
    section = f"{start}\n{body}\n{end}"
    if start in current and end in current:
        before, rest = current.split(start, 1)
        return before + section + rest.split(end, 1)[1]
    title = f"## {heading}\n\n" if heading else ""
    return current.rstrip("\n") + f"\n\n{title}{section}\n"


def write_section(name: str, body: str, heading: str | None = None, docs: Path = DOCS) -> None:
    current = docs.read_text() if docs.exists() else "# Benchmarks\n"
    docs.write_text(replace_section(current, name, body, heading))
