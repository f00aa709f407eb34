"""schemathesis, all checks, against the API subprocess on the local control plane: no failure.

It reads the checked-in ``api/openapi.json`` (``-u`` the API), with tests/api/st_hooks.py telling it what a
valid upload and an existing file are. ``FTAPI_ST_MAX_EXAMPLES`` (default 8) sets the cases per operation and
phase; the report's run used 60 (``FTAPI_ST_MAX_EXAMPLES=60 pytest tests/api/test_schemathesis.py``).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import ROOT, start_api

pytestmark = pytest.mark.cluster

BIG_ROWS = 69_000  # > 65,536 (the largest batch the document allows) after the 5% hold-out


@pytest.fixture(scope="module")
def api(cluster, gcs, tmp_path_factory):
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    yield from start_api(
        cluster,
        tmp_path_factory.mktemp("ftapi-st"),
        gcs=gcs,
        tenants=1,
        webhooks={0: (None, secret)},  # callbackUrl needs the key's signing secret
        extra_env={"FTAPI_MAX_BODY_BYTES": str(16 * 1024 * 1024), "FTAPI_KEYS_REFRESH_SECONDS": "30"},
    )


def upload(api, data: bytes, name: str) -> str:
    r = httpx.post(
        f"{api.url}/v1/files",
        headers={"Authorization": f"Bearer {api.key(api.ns_a)}"},
        files={"file": (name, data)},
        data={"purpose": "fine-tune"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def test_schemathesis_all_checks(api, tmp_path):
    row = b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n'
    files = {
        "training": upload(api, gzip.compress(row * BIG_ROWS, mtime=0), "big.jsonl.gz"),
        "validation": upload(api, row * 4, "small.jsonl"),
    }
    # a job that uses both keeps them from being deleted by the run (409 file_in_use)
    r = httpx.post(
        f"{api.url}/v1/fine_tuning/jobs",
        headers={"Authorization": f"Bearer {api.key(api.ns_a)}"},
        json={"model": "tiny", "training_file": files["training"], "validation_file": files["validation"]},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.api.st_hooks",
        "FTAPI_ST_FILES": json.dumps(files),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    report = tmp_path / "report.json"
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        str(ROOT / "api" / "openapi.json"),
        "-u",
        api.url,
        "--checks",
        "all",
        "-H",
        f"Authorization: Bearer {api.key(api.ns_a)}",
        "--max-examples",
        os.environ.get("FTAPI_ST_MAX_EXAMPLES", "8"),
        "--seed",
        os.environ.get("FTAPI_ST_SEED", "1"),
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--no-color",
    ]
    requests_before = api.log().count('"event": "access"')
    # in tmp_path: schemathesis keeps a cache directory in its working directory
    run = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=3000, check=False)
    output = run.stdout + run.stderr
    print(output[-6000:])
    assert run.returncode == 0, output[-12000:]
    summary = json.loads(report.read_text())
    cases = summary["test_cases"]
    assert cases["generated"] > 0 and cases["with_failures"] == 0 and cases["errored"] == 0, cases
    assert summary["failures"] == [] and summary["errors"] == [], summary
    requests = api.log().count('"event": "access"') - requests_before
    print(f"schemathesis: {cases['generated']} test cases, {requests} requests answered, no failure")
    assert requests >= cases["generated"]
