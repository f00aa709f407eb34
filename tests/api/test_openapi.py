"""The checked-in OpenAPI document matches the code (`make openapi` regenerates it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ftapi.main import openapi_document

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("crds", "api"))}


def test_openapi_checked_in_and_current():
    current = openapi_document()
    checked_in = (ROOT / "api" / "openapi.json").read_text()
    assert checked_in == current, "api/openapi.json is stale: run `make openapi` and commit it"
    doc = json.loads(current)
    for path in (
        "/trigger-finetune",
        "/v1/files",
        "/v1/files/{file_id}",
        "/v1/fine_tuning/jobs",
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel",
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/pause",
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/resume",
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events",
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
        "/v1/finetunejobs/{name}",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in doc["paths"], path
    assert "HTTPBearer" in doc["components"]["securitySchemes"]


def test_openapi_deterministic_in_a_fresh_process():
    code = "import sys; from ftapi.main import openapi_document; sys.stdout.write(openapi_document())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=ENV
    ).stdout
    assert out == openapi_document()


def test_api_never_imports_torch():
    code = (
        "import sys, ftapi.main, ftapi.routers.jobs; "
        "print(sorted(m for m in ('torch', 'kopf', 'fttrainer', 'ftoperator', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=ENV)
    assert out.stdout.strip() == "[]"


def test_dockerfile_installs_only_the_api_extra():
    import tomllib

    dockerfile = (ROOT / "api" / "Dockerfile").read_text()
    assert "uv sync --frozen --no-dev --no-install-project --extra api" in dockerfile
    assert "USER 65532" in dockerfile and "--extra operator" not in dockerfile
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any(dep.startswith(("torch", "transformers")) for dep in extras["api"])
