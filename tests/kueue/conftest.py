"""Kueue tests: the release's controller (``ftdev.kueue``) against the local control plane, for this module's
tests only (its webhooks are unregistered after, so the rest of the suite creates Jobs without Kueue), and a second
process node so two nodes' GPUs (2 each) back a 4-GPU ClusterQueue."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ftdev import kueue as ftkueue
from ftdev.nodes import ExtraNode

from tests.support.cluster import Cluster
from tests.support.kueue import SECOND_NODE, Queues


@pytest.fixture(scope="module")
def kueue(cluster: Cluster) -> Iterator[Cluster]:
    ftkueue.up(log=lambda _: None)
    try:
        yield cluster
    finally:
        ftkueue.down(log=lambda _: None)


@pytest.fixture(scope="module")
def two_nodes(cluster: Cluster) -> Iterator[Cluster]:
    with ExtraNode(SECOND_NODE, gpus=2):
        yield cluster


@pytest.fixture
def queues(kueue: Cluster, two_nodes: Cluster, namespace: str) -> Iterator[Queues]:
    q = Queues(kueue, namespace)
    try:
        yield q
    finally:
        q.delete()
