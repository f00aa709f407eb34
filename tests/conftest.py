"""Session-wide test setup: the fixture plugins of ``tests/support`` and the tiers (``tests/support/tiers.py``).

Fixtures: ``cluster``, ``namespace`` (tests.support.cluster), ``gcs`` (tests.support.gcs), ``operator_rbac``,
``operator``, ``running_operator`` (tests.support.operator_process), ``trainer``, ``trainer_session``
(tests.support.trainer). Area-specific fixtures belong in ``tests/<area>/conftest.py``; helpers that tests import
belong in ``tests/support``, never in a conftest.
"""

from __future__ import annotations

import pytest

from tests.support import tiers

pytest_plugins = [
    "tests.support.cluster",
    "tests.support.gcs",
    "tests.support.operator_process",
    "tests.support.trainer",
]


def pytest_configure(config: pytest.Config) -> None:
    tiers.register(config)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test gets its tier marker. Tests that start the session's operator run last (stable order otherwise):
    once it runs it reconciles every FineTuneJob in the cluster, and earlier tests (CRD validation, status
    round-trips) need FineTuneJobs that nothing else writes to."""
    tiers.assign(items)
    items.sort(key=lambda item: "operator" in getattr(item, "fixturenames", ()))
