"""API fuzz benchmark: schemathesis drives every operation of api/openapi.json against the API on the local
control plane, as one tenant, and the run must end with zero 5xx answers and zero orphaned objects.

    python bench/api_fuzz.py                                # ≥ 2,000 requests (what docs/security.md reports)
    python bench/api_fuzz.py --seeds 1 --min-requests 500   # quicker

Starts the local cluster if none answers (FTO_STATE_DIR/FTO_APISERVER_PORT as usual), runs the API as a process with
least-privilege credentials (tests.api.conftest.start_api: two tenant namespaces, tenant A fuzzed, tenant B must
stay empty) and the hooks of tests/security/fuzz_hooks.py. The last line of output is the JSON summary: requests
answered (from the API's access log), by status, 5xx count, orphans, operations reached, schemathesis' test-case
counts, seconds. Exit status 1 when a 5xx, an orphan or a write into the other tenant was seen, or fewer
requests than --min-requests were answered.
"""

# ruff: noqa: E402  (the repo's packages are put on sys.path before they are imported)
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in ("crds", "operator", "api", "trainer_image", "localcluster", ""):
    sys.path.insert(0, str(ROOT / p))

from ftdev import cluster as localcluster

from tests.api.conftest import start_api
from tests.support.cluster import Cluster, state_dir
from tests.support.fuzz import fuzz


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=10, help="schemathesis cases per operation and phase")
    parser.add_argument("--seeds", default="1,2,3", help="one schemathesis run per seed (comma-separated)")
    parser.add_argument("--min-requests", type=int, default=2000)
    args = parser.parse_args(argv)

    kubeconfig = state_dir() / "admin.kubeconfig" if localcluster.healthy() else localcluster.up()
    cluster = Cluster(kubeconfig=kubeconfig, state_dir=state_dir())
    with tempfile.TemporaryDirectory(prefix="api-fuzz-") as tmp:
        work = Path(tmp)
        servers = start_api(cluster, work, extra_env={"FTAPI_KEYS_REFRESH_SECONDS": "30"})
        api = next(servers)
        try:
            seeds = tuple(int(s) for s in args.seeds.split(",") if s)
            result = fuzz(api, work, max_examples=args.max_examples, seeds=seeds)
        finally:
            servers.close()
    summary = result.summary()
    ok = (
        result.server_errors == 0
        and not result.orphans
        and not result.other_tenant_objects
        and result.requests >= args.min_requests
    )
    summary["ok"] = ok
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
