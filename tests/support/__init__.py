"""Shared test support: fixtures and helpers every test area uses. Tests import from here, never from a
``conftest``; ``tests/conftest.py`` registers the fixture modules as plugins.

* :mod:`tests.support.cluster`: the local control plane (fixtures ``cluster``, ``namespace``) and helpers
  (``Cluster``, ``wait_for``, ``py_container``, ``pod_condition``, ...);
* :mod:`tests.support.gcs`: a GCS emulator (fixture ``gcs``; the emulator itself is :mod:`ftdev.gcs`);
* :mod:`tests.support.operator_process`: the operator as a subprocess with the repo's RBAC (fixtures
  ``operator_rbac``, ``operator``, ``running_operator``);
* :mod:`tests.support.ftj`: FineTuneJob bodies and waiting on their phases;
* :mod:`tests.support.kueue`: Kueue queues, PriorityClasses and gated fake-trainer jobs (the fixtures that start
  Kueue and a second node are in ``tests/kueue/conftest.py``);
* :mod:`tests.support.trainer`: real ``torchrun``/``python`` trainer runs on CPU (fixtures ``trainer``,
  ``trainer_session``) and a learnable synthetic preference set;
* :mod:`tests.support.tiers`: the test tiers (markers ``unit``, ``process``, ``cluster``, ``e2e``).
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The checkout's source folders, for subprocesses that import the project (as the Makefile and pytest set it).
SOURCE_DIRS = ("crds", "operator", "api", "trainer_image", "localcluster")
PYTHONPATH = os.pathsep.join(str(ROOT / d) for d in SOURCE_DIRS)
