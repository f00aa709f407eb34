"""The API under schemathesis (the OpenAPI fuzzer) on the local control plane, and what must hold afterwards: no
5xx answer and no orphaned object. Shared by tests/security/test_fuzz.py (a small run under ``make test``) and
bench/api_fuzz.py (the full run, ≥ 2,000 requests, counts as the last line of JSON).

Counts come from the API's own access log (one JSON line per answered request), not from schemathesis, so every
request the API answered is counted, whichever phase sent it.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from ftcrd.names import ANN_CANCELLED, LABEL_CREATED_BY, LABEL_FILE, LABEL_JOB, LABEL_TRAINING_FILE
from ftcrd.types import TERMINAL_PHASES

from tests.support import ROOT
from tests.support.cluster import Cluster

HOOKS = "tests.security.fuzz_hooks"
SYSTEM_CONFIGMAPS = {"kube-root-ca.crt"}


@dataclass
class FuzzResult:
    requests: int
    by_status: dict[str, int]
    server_errors: int
    routes: list[str]
    orphans: list[str]
    other_tenant_objects: list[str]
    test_cases: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """Counts only (the routes reached become how many of the document's operations were)."""
        out = asdict(self)
        routes = set(out.pop("routes"))
        out["operations_reached"] = f"{len(document_operations() & routes)}/{len(document_operations())}"
        return out


def document_operations() -> set[str]:
    """``METHOD /path`` of every operation of api/openapi.json."""
    document = json.loads((ROOT / "api" / "openapi.json").read_text())
    return {f"{method.upper()} {path}" for path, ops in document["paths"].items() for method in ops}


def upload_files(url: str, key: str, n: int = 2) -> list[str]:
    """Files the fuzzer's valid job requests name (tests/security/fuzz_hooks.py)."""
    ids = []
    for i in range(n):
        rows = "".join(
            json.dumps({"prompt": f"q{j}", "chosen": f"a{j}", "rejected": f"b{j}"}) + "\n" for j in range(64)
        )
        r = httpx.post(
            f"{url}/v1/files",
            headers={"Authorization": f"Bearer {key}"},
            files={"file": (f"f{i}.jsonl.gz", gzip.compress(rows.encode(), mtime=0))},
            data={"purpose": "fine-tune"},
            timeout=60,
        )
        r.raise_for_status()
        ids.append(str(r.json()["id"]))
    return ids


def create_jobs(url: str, key: str, files: list[str]) -> list[str]:
    """One job per file (which also keeps the files from being deleted: 409 while in use) and one seed-webhook job."""
    h = {"Authorization": f"Bearer {key}"}
    ids = []
    for f in files:
        r = httpx.post(f"{url}/v1/fine_tuning/jobs", headers=h, json={"model": "tiny", "training_file": f}, timeout=60)
        r.raise_for_status()
        ids.append(str(r.json()["id"]))
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}]
    r = httpx.post(f"{url}/trigger-finetune", headers=h, json={"communityId": "fuzz", "dataset": rows}, timeout=60)
    r.raise_for_status()
    return [*ids, str(r.json()["jobName"])]


def access_records(log: str) -> list[dict[str, Any]]:
    out = []
    for line in log.splitlines():
        if '"event": "access"' not in line:
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def run_schemathesis(
    url: str, key: str, files: list[str], jobs: list[str], workdir: Path, *, max_examples: int, seed: int
) -> dict:
    """One schemathesis run over every operation of api/openapi.json (check: no server error); its JSON report's
    test-case counts."""
    report = workdir / "schemathesis.json"
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": HOOKS,
        "FTAPI_FUZZ_FILES": json.dumps(files),
        "FTAPI_FUZZ_JOBS": json.dumps(jobs),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        str(ROOT / "api" / "openapi.json"),
        "-u",
        url,
        "--checks",
        "not_a_server_error",
        "-H",
        f"Authorization: Bearer {key}",
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--continue-on-failure",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--no-color",
    ]
    # in workdir: schemathesis keeps a cache directory in its working directory
    run = subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True, timeout=5400, check=False)
    (workdir / "schemathesis.log").write_text(run.stdout + run.stderr)
    if os.environ.get("FTAPI_FUZZ_LOG"):
        Path(os.environ["FTAPI_FUZZ_LOG"]).write_text(run.stdout + run.stderr)
    if not report.exists():
        raise AssertionError(
            f"schemathesis wrote no report (exit {run.returncode}):\n{(run.stdout + run.stderr)[-6000:]}"
        )
    summary = json.loads(report.read_text())
    return {"exit": run.returncode, **summary.get("test_cases", {}), "failures": len(summary.get("failures") or [])}


def orphans(cluster: Cluster, namespace: str) -> list[str]:
    """Objects the API left that nothing owns or that miss their other half:

    * a ConfigMap of a job (``finetune.dev/job``) whose owner FineTuneJob (by uid) does not exist;
    * a seed-webhook FineTuneJob without its dataset ConfigMap;
    * a FineTuneJob that is neither finished nor cancelled whose training file is gone (a file is not deletable
      while such a job uses it);
    * any other ConfigMap that is neither a file nor a job's dataset."""
    jobs = cluster.get_json("finetunejobs", namespace=namespace)["items"]
    configmaps = cluster.get_json("configmaps", namespace=namespace)["items"]
    job_uids = {j["metadata"]["uid"] for j in jobs}
    cm_names = {c["metadata"]["name"] for c in configmaps}
    out = []
    for cm in configmaps:
        md = cm["metadata"]
        labels = md.get("labels") or {}
        if md["name"] in SYSTEM_CONFIGMAPS or labels.get(LABEL_FILE) == "true":
            continue
        owners = {o["uid"] for o in md.get("ownerReferences") or []}
        if LABEL_JOB not in labels:
            out.append(f"ConfigMap {md['name']}: neither a file nor a job's dataset")
        elif not owners & job_uids:
            out.append(f"ConfigMap {md['name']}: its FineTuneJob is gone")
    for job in jobs:
        md = job["metadata"]
        labels = md.get("labels") or {}
        if labels.get(LABEL_CREATED_BY) == "api-webhook" and f"{md['name']}-dataset" not in cm_names:
            out.append(f"FineTuneJob {md['name']}: its dataset ConfigMap is missing")
        finished = (md.get("annotations") or {}).get(ANN_CANCELLED) == "true" or (job.get("status") or {}).get(
            "phase"
        ) in TERMINAL_PHASES
        if labels.get(LABEL_TRAINING_FILE) and labels[LABEL_TRAINING_FILE] not in cm_names and not finished:
            out.append(f"FineTuneJob {md['name']}: its training file {labels[LABEL_TRAINING_FILE]} is gone")
    return out


def fuzz(api: Any, workdir: Path, *, max_examples: int, seeds: tuple[int, ...] = (1,)) -> FuzzResult:
    """Fuzz ``api`` (tests.api.conftest.ApiServer: a running API with two tenant keys) as tenant A, one schemathesis
    run per seed (hypothesis' generation time grows faster than linearly with ``max_examples``: several seeds reach
    more requests sooner); tenant B's namespace must stay empty."""
    a, b = api.ns_a, api.ns_b
    before = len(access_records(api.log()))
    started = time.monotonic()
    files = upload_files(api.url, api.key(a))
    jobs = create_jobs(api.url, api.key(a), files)
    cases: Counter[str] = Counter()
    for seed in seeds:
        run = run_schemathesis(api.url, api.key(a), files, jobs, workdir, max_examples=max_examples, seed=seed)
        cases.update({k: int(v) for k, v in run.items() if isinstance(v, int)})
    seconds = time.monotonic() - started
    log = api.log()
    if os.environ.get("FTAPI_FUZZ_LOG"):
        Path(os.environ["FTAPI_FUZZ_LOG"] + ".api").write_text(log)
    records = access_records(log)[before:]
    statuses = Counter(str(r.get("status")) for r in records)
    other = api.objects(b)
    return FuzzResult(
        requests=len(records),
        by_status=dict(sorted(statuses.items())),
        server_errors=sum(n for s, n in statuses.items() if s.startswith("5")),
        routes=sorted({f"{r.get('method')} {r.get('route')}" for r in records}),
        orphans=orphans(api.cluster, a),
        other_tenant_objects=[f"{k}/{n}" for k, names in other.items() for n in names],
        test_cases={"runs": len(seeds), **dict(cases)},
        seconds=round(seconds, 1),
    )
