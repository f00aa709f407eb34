"""ftdev: developer-side tools that run from a clone, never in an image.

* :mod:`ftdev.cluster`: the local cluster (``localcluster/cluster.sh``) from Python: status, up, down;
* :mod:`ftdev.gcs`: a GCS-compatible emulator on loopback (the tests' and the demo's bucket);
* :mod:`ftdev.deploy`: render and apply a ``deploy/`` overlay in the right order (``hack/deployctl.py``,
  ``make deploy``), and explain a failed rollout with the failing pods' state and logs;
* :mod:`ftdev.demo`: ``make demo`` (``python -m ftdev.demo``).

The tests use these through ``tests/support``; nothing in ``crds``, ``operator``, ``api`` or ``trainer_image``
imports them.
"""

import socket


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (pods on the process node share the host network)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
