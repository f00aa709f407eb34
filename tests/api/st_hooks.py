"""What schemathesis needs to know about this API beyond its OpenAPI document (import this module to register).

* ``application/jsonl`` (and gzip) content: the document says the upload's ``file`` part is JSONL, but a JSON
  schema cannot say "valid training rows", so valid files are generated here (preference pairs, OpenAI DPO
  rows and supervised ``messages`` rows).
* Existing files: ``training_file``/``validation_file`` must name uploaded files. In positive cases (valid
  by the document) they are pointed at files uploaded for the run (``FTAPI_ST_FILES`` = JSON
  ``{"training": id, "validation": id}``): a training file large enough (69,000 pairs) for any batch size the
  document allows, and a small pairs file, so every positive job request is one the API must accept.

Used by tests/api/test_schemathesis.py and by the command line:
``SCHEMATHESIS_HOOKS=tests.api.st_hooks schemathesis run ...`` (see docs/api.md, "Schemathesis").
"""

from __future__ import annotations

import gzip
import json
import os
from typing import Any

import schemathesis
from hypothesis import strategies as st

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(
    lambda t: t.strip() != ""
)


@st.composite
def _row(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["pair", "dpo", "sft"]))
    if kind == "pair":
        return {"prompt": draw(TEXT), "chosen": draw(TEXT), "rejected": draw(TEXT)}
    if kind == "dpo":
        return {
            "input": {"messages": [{"role": "user", "content": draw(TEXT)}]},
            "preferred_output": [{"role": "assistant", "content": draw(TEXT)}],
            "non_preferred_output": [{"role": "assistant", "content": draw(TEXT)}],
        }
    return {"messages": [{"role": "user", "content": draw(TEXT)}, {"role": "assistant", "content": draw(TEXT)}]}


JSONL = st.lists(_row(), min_size=1, max_size=5).map(lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode())
schemathesis.openapi.media_type("application/jsonl", JSONL)
schemathesis.openapi.media_type("application/gzip", JSONL.map(lambda data: gzip.compress(data, mtime=0)))


def files() -> dict[str, str]:
    return dict(json.loads(os.environ.get("FTAPI_ST_FILES", "{}")))


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """Valid job requests name the run's files (the document can only say what a file id looks like)."""
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if (
        positive
        and case.operation.path == "/v1/files"
        and isinstance(case.body, dict)
        and case.body.get("purpose") == ""
    ):
        # schemathesis 4.32's coverage phase fills the required non-file fields of a multipart body with custom
        # part encodings with "" and calls that valid; the document says purpose is "fine-tune"
        case.body["purpose"] = "fine-tune"
    if positive and case.operation.path == "/v1/fine_tuning/jobs" and case.method.upper() == "POST":
        known = files()
        if isinstance(case.body, dict):
            if isinstance(case.body.get("training_file"), str):
                case.body["training_file"] = known["training"]
            if isinstance(case.body.get("validation_file"), str):
                case.body["validation_file"] = known["validation"]
    return case
