"""The benchmarks' shared writer of docs/benchmarks.md: a rerun replaces only its own section."""

from __future__ import annotations

import pytest

from bench.docs_section import DOCS, markers, replace_section, write_section

RECORDED = ("operator", "dataplane", "chaos")  # the sections bench/*.py write


def body_of(text: str, name: str) -> str:
    start, end = markers(name)
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")


@pytest.mark.parametrize("name", RECORDED)
def test_each_benchmark_finds_its_recorded_section(name: str):
    current = DOCS.read_text()
    assert replace_section(current, name, body_of(current, name)) == current
    rewritten = replace_section(current, name, "| new | table |")
    assert body_of(rewritten, name) == "| new | table |"
    for other in set(RECORDED) - {name}:  # the others are untouched
        assert body_of(rewritten, other) == body_of(current, other)
    start = markers(name)[0]
    assert rewritten.split(start, 1)[0] == current.split(start, 1)[0]


def test_a_new_section_is_appended_under_its_heading_once(tmp_path):
    docs = tmp_path / "benchmarks.md"
    write_section("fresh", "first", heading="Fresh", docs=docs)
    write_section("fresh", "second", heading="Fresh", docs=docs)
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\n## Fresh\n\n<!-- fresh-bench:start -->\n")
    assert text.count("## Fresh") == 1
    assert body_of(text, "fresh") == "second"
