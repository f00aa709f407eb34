"""Test tiers: every test gets the marker of its tier, inferred from the fixtures it uses (an explicit marker wins
where the fixtures cannot tell). ``e2e`` tests need the cluster too and also carry ``cluster``. ``make test-unit``
(``-m unit``), ``test-process`` (``-m process``), ``test-cluster`` (``-m "cluster and not e2e"``) and ``test-e2e``
(``-m e2e``) run one tier each; ``make test`` runs them all.

* ``unit``: in-process code and quick one-shot tools (``kubectl kustomize``, a fresh interpreter checking
  imports); no cluster, no server, no training run. Needs only the venv; never builds Kubernetes.
* ``process``: real local processes without a cluster: ``torchrun``/``python`` trainer runs (fixtures
  ``trainer``, ``trainer_session``), the GCS emulator (fixture ``gcs``).
* ``cluster``: the local control plane and process node (fixture ``cluster``, which ``namespace``,
  ``operator``, the API fixtures, ... build on).
* ``e2e``: the whole path on the cluster: the operator running real trainer jobs that upload to the emulator
  (fixtures ``operator`` and ``gcs`` together), the demo.
"""

from __future__ import annotations

import pytest

TIERS = {
    "unit": "pure: in-process code and quick one-shot tools; no cluster, no servers, no training runs",
    "process": "real local processes without a cluster (torchrun trainer runs, the GCS emulator)",
    "cluster": "needs the local control plane (the session fixture `cluster` starts or reuses it); e2e tests too",
    "e2e": "the whole path on the local cluster: operator + real trainer + upload (slowest)",
}
PROCESS_FIXTURES = frozenset({"trainer", "trainer_session", "gcs"})


def tier(item: pytest.Item) -> str:
    """The tier of one collected test."""
    explicit = {name for name in TIERS if item.get_closest_marker(name) is not None}
    used = set(getattr(item, "fixturenames", ()))
    if "e2e" in explicit or {"cluster", "operator", "gcs"} <= used:
        return "e2e"
    if "cluster" in explicit or "cluster" in used:
        return "cluster"
    if "process" in explicit or used & PROCESS_FIXTURES:
        return "process"
    return "unit"


def assign(items: list[pytest.Item]) -> None:
    """Add each test's tier marker (and ``cluster`` to e2e tests), so ``-m`` selects a tier."""
    for item in items:
        name = tier(item)
        for marker in (name, "cluster") if name == "e2e" else (name,):
            if item.get_closest_marker(marker) is None:
                item.add_marker(marker)


def register(config: pytest.Config) -> None:
    for name, description in TIERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
