"""schemathesis against the API process on the local control plane, as one tenant: every operation of
api/openapi.json, positive and negative cases; no answer is a 5xx, nothing is left orphaned (a dataset ConfigMap
without its job, a job without its dataset or file), the other tenant's namespace stays empty. A small run;
``bench/api_fuzz.py`` is the full one (≥ 2,000 requests; docs/security.md has its numbers)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from tests.api.conftest import ApiServer, start_api
from tests.support.fuzz import document_operations, fuzz

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def api(cluster, gcs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    yield from start_api(
        cluster, tmp_path_factory.mktemp("ftapi-fuzz"), gcs=gcs, extra_env={"FTAPI_KEYS_REFRESH_SECONDS": "30"}
    )


def test_fuzzing_every_route_yields_no_5xx_and_no_orphans(api: ApiServer, tmp_path):
    result = fuzz(api, tmp_path, max_examples=int(os.environ.get("FTAPI_FUZZ_MAX_EXAMPLES", "4")))
    print(json.dumps(result.summary()))
    assert result.requests >= 150, result.summary()
    assert result.server_errors == 0, (result.by_status, (tmp_path / "schemathesis.log").read_text()[-4000:])
    assert result.test_cases.get("failures") == 0, (tmp_path / "schemathesis.log").read_text()[-6000:]
    assert result.orphans == [], result.orphans
    assert result.other_tenant_objects == []
    # every operation of the document was reached
    operations = document_operations()
    assert operations <= set(result.routes), operations - set(result.routes)
    assert any(s.startswith("2") for s in result.by_status) and any(s.startswith("4") for s in result.by_status)
