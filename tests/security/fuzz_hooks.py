"""What schemathesis needs to know about this API beyond api/openapi.json, for the security fuzz run
(tests/security/test_fuzz.py, bench/api_fuzz.py; loaded with ``SCHEMATHESIS_HOOKS=tests.security.fuzz_hooks``).

* Uploads: the document says the ``file`` part is bytes; half of the generated files are valid JSONL preference
  rows (plain or gzip), so the upload path past validation is exercised too, not only its 400s.
* Job creation: valid requests name files that exist (``FTAPI_FUZZ_FILES``, a JSON list of file ids uploaded for
  the run), so the create path (a FineTuneJob and, for the webhook, its dataset ConfigMap) runs.
* Ids in paths: valid requests to ``/v1/files/{file_id}``, ``/v1/fine_tuning/jobs/{id}/...`` and
  ``/v1/finetunejobs/{name}`` name files and jobs that exist (``FTAPI_FUZZ_FILES``, ``FTAPI_FUZZ_JOBS``), so cancel,
  pause, resume, events, content and delete meet real objects instead of answering 404.
"""

from __future__ import annotations

import gzip
import json
import os
from typing import Any

import schemathesis
from hypothesis import strategies as st

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=30).filter(
    lambda t: t.strip() != ""
)
ROW = st.fixed_dictionaries({"prompt": TEXT, "chosen": TEXT, "rejected": TEXT})
JSONL = st.lists(ROW, min_size=1, max_size=4).map(lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode())
FILES = st.one_of(JSONL, JSONL.map(lambda b: gzip.compress(b, mtime=0)), st.binary(max_size=200))
schemathesis.openapi.media_type("application/octet-stream", FILES)


def _ids(variable: str) -> list[str]:
    return list(json.loads(os.environ.get(variable, "[]")))


def _pick(ids: list[str], seed: object) -> str:
    return ids[sum(map(ord, str(seed))) % len(ids)]


PATH_IDS = {"file_id": "FTAPI_FUZZ_FILES", "fine_tuning_job_id": "FTAPI_FUZZ_JOBS", "name": "FTAPI_FUZZ_JOBS"}


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """Positive job requests name an uploaded file (the document can only say what a file id looks like)."""
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    path, method = case.operation.path, case.method.upper()
    if positive and path == "/v1/files" and isinstance(case.body, dict) and case.body.get("purpose") == "":
        case.body["purpose"] = "fine-tune"  # the coverage phase fills required form fields with ""
    for param, variable in PATH_IDS.items():
        ids = _ids(variable)
        if positive and ids and isinstance(case.path_parameters, dict) and param in case.path_parameters:
            case.path_parameters[param] = _pick(ids, case.path_parameters[param])
    files = _ids("FTAPI_FUZZ_FILES")
    if positive and files and path == "/v1/fine_tuning/jobs" and method == "POST" and isinstance(case.body, dict):
        if isinstance(case.body.get("training_file"), str):
            case.body["training_file"] = _pick(files, case.body["training_file"])
        if isinstance(case.body.get("validation_file"), str):
            case.body["validation_file"] = files[0]
    return case
