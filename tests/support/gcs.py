"""The ``gcs`` fixture: one GCS emulator (:class:`ftdev.gcs.GcsEmulator`) for the whole session.

def test_x(gcs, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.host)
    ...
    assert gcs.list("models/default/job/") == [...]
    data = gcs.download("models/default/job/manifest.json")
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ftdev import free_port
from ftdev.gcs import DEFAULT_BUCKET, GcsEmulator

__all__ = ["DEFAULT_BUCKET", "GcsEmulator", "free_port", "gcs"]


@pytest.fixture(scope="session")
def gcs() -> Iterator[GcsEmulator]:
    """A GCS emulator for the whole session, bucket ``finetune-test`` created. Use unique object paths."""
    with GcsEmulator() as emu:
        yield emu
