"""Session-wide fixtures: the local control plane and a fresh namespace per test.

``cluster`` reuses a healthy running cluster (``hack/cluster.sh status``) or starts one with
``hack/cluster.sh up``; it runs ``down`` at the end only when it started the cluster and no other
pytest session still uses it (sessions register under ``$FTO_STATE_DIR/users/``). Area-specific
fixtures belong in ``tests/<area>/conftest.py``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    Cluster,
    apiserver_answers,
    cluster_down,
    cluster_status,
    cluster_up,
    state_dir,
    unique_name,
    wait_for,
)

# Reusable fixtures of other areas: ``operator`` (the operator subprocess with the repo RBAC), ``gcs`` (a GCS
# emulator, tests/fixtures_gcs.py).
pytest_plugins = ["fixtures_operator", "fixtures_gcs"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that start the session's operator run last (stable order otherwise): once it runs it reconciles
    every FineTuneJob in the cluster, and earlier tests (CRD validation, status round-trips) need FineTuneJobs
    that nothing else writes to."""
    items.sort(key=lambda item: "operator" in getattr(item, "fixturenames", ()))


def _users(state: Path) -> list[Path]:
    live = []
    for marker in (state / "users").glob("*"):
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(marker.name), 0)
            live.append(marker)
            continue
        marker.unlink(missing_ok=True)  # a crashed session's marker
    return live


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    state = state_dir()
    if cluster_status():
        kubeconfig, started = state / "admin.kubeconfig", False
    else:
        # A control plane that answers but is incomplete (say the process node died) is repaired
        # by `up` but stays someone else's: only a cluster started from nothing is torn down.
        existed = apiserver_answers(state)
        kubeconfig, started = cluster_up(), not existed
    marker = state / "users" / str(os.getpid())
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    c = Cluster(
        kubeconfig=kubeconfig, state_dir=state, started_here=started, env={**os.environ, "KUBECONFIG": str(kubeconfig)}
    )
    try:
        yield c
    finally:
        marker.unlink(missing_ok=True)
        if started and not _users(state) and not os.environ.get("FTO_KEEP_CLUSTER"):
            cluster_down()


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (ready for pods: its ServiceAccount and CA ConfigMap exist), deleted after."""
    name = unique_name(request.node.name.split("[")[0].removeprefix("test_").replace("_", "-")[:30])
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "finetune-operator.test=true")
    wait_for(
        lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
        30,
        0.2,
        f"ServiceAccount default in {name}",
    )
    wait_for(
        lambda: cluster.kubectl("get", "configmap", "kube-root-ca.crt", "-n", name, check=False).returncode == 0,
        30,
        0.2,
        f"kube-root-ca.crt in {name}",
    )
    try:
        yield name
    finally:
        if not os.environ.get("FTO_KEEP_NAMESPACES"):
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
