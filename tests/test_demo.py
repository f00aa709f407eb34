"""`make demo`, end to end, as part of `make test`: the same flow (``python -m ftdev.demo``) on the session's cluster.

deploy/overlays/local is applied (operator and API as Deployments whose pods the process node runs with in-cluster
ServiceAccount config), the seed webhook creates a FineTuneJob, the trainer runs under torchrun (2 CPU processes,
FSDP2 over gloo) and uploads to a GCS emulator; the demo downloads the artifact, checks it against its manifest,
loads it with transformers and requires a larger held-out chosen-minus-rejected margin than the initial model.

Differences from `make demo`, all in how it is called: it reuses the session's cluster (never tears it down),
picks free loopback ports, and leaves the CRD, namespace and RBAC in place for the other tests.
"""

from __future__ import annotations

import re

import pytest
from ftdev.demo.cli import main
from ftdev.demo.flow import Demo

from tests.support.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def test_demo_flow(cluster: Cluster, capsys):
    rc = main(["--kubeconfig", str(cluster.kubeconfig), "--api-port", "0", "--gcs-port", "0", "--timeout", "600"])
    out = capsys.readouterr().out
    lines = out.rstrip().splitlines()
    assert rc == 0, out[-6000:]
    last = lines[-1]
    # the job's own folder: <prefix>/<tenant namespace>/<community>/<job>-<uid>/ (docs/security.md)
    m = re.fullmatch(
        r"job=(ftjob-[0-9a-f]+) phase=Succeeded artifact=(gs://finetune-demo/models/finetune-jobs/demo/\1-[0-9a-f-]{36}/)",
        last,
    )
    assert m, last
    # Every step ran and the phases the job went through were shown.
    for n in range(1, Demo.STEPS + 1):
        assert f"[{n}/{Demo.STEPS}]" in out
    assert re.search(r"<- phase Running", out)
    assert re.search(r"<- phase Succeeded", out)
    assert "every sha256 matches the manifest" in out
    assert re.search(r"phases seen: .*Running.*-> Succeeded", out)
    assert re.search(r"loss curve  step \d+: [0-9.]+", out)
    before, after = (float(x) for x in re.search(r"held-out    margin ([-+0-9.]+) -> ([-+0-9.]+) nats", out).groups())
    assert after > before
    # Cleaned up: the job is gone, the operator and API Deployments too.
    job = m.group(1)
    assert cluster.kubectl("get", "ftj", job, "-n", "finetune-jobs", check=False).returncode != 0
    deploys = cluster.kubectl("get", "deploy", "-n", "finetune-system", "-o", "name", check=False).stdout
    assert "finetune-operator" not in deploys and "finetune-api" not in deploys
