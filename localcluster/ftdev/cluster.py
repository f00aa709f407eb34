"""The local cluster (``localcluster/cluster.sh``) from Python, for the tests, the demo and the benchmarks.

``FTO_STATE_DIR`` and ``FTO_APISERVER_PORT`` select the cluster, as for the script itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = ROOT / "localcluster" / "cluster.sh"
VENV_SH = ROOT / "hack" / "venv.sh"
DEFAULT_STATE_DIR = "/tmp/finetune-operator-cluster"


def kubectl_bin() -> str:
    """The venv's kubectl: next to the running interpreter when that is the venv's, else from ``hack/venv.sh``."""
    beside = Path(sys.executable).with_name("kubectl")
    if beside.exists():
        return str(beside)
    venv = subprocess.run(["bash", str(VENV_SH)], check=True, capture_output=True, text=True).stdout.strip()
    return str(Path(venv) / "bin" / "kubectl")


def state_dir() -> Path:
    return Path(os.environ.get("FTO_STATE_DIR", DEFAULT_STATE_DIR))


def healthy() -> bool:
    """Every component runs and the node is Ready (``cluster.sh status``)."""
    return subprocess.run(["bash", str(CLUSTER_SH), "status"], capture_output=True, check=False).returncode == 0


def apiserver_answers(state: Path) -> bool:
    """The apiserver of the cluster in ``state`` answers /readyz."""
    kubeconfig = state / "admin.kubeconfig"
    if not kubeconfig.exists():
        return False
    cmd = [kubectl_bin(), "--kubeconfig", str(kubeconfig), "get", "--raw", "/readyz", "--request-timeout=5s"]
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def up(timeout: float = 900) -> Path:
    """``cluster.sh up`` (reuses a healthy cluster; the first run builds Kubernetes); returns the kubeconfig."""
    proc = subprocess.run(["bash", str(CLUSTER_SH), "up"], capture_output=True, text=True, check=False, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"localcluster/cluster.sh up failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    last = proc.stdout.strip().splitlines()[-1]
    if not last.startswith("export KUBECONFIG="):
        raise RuntimeError(f"localcluster/cluster.sh up printed {last!r} last, not export KUBECONFIG=...")
    return Path(last.split("=", 1)[1])


def down(timeout: float = 300) -> None:
    subprocess.run(["bash", str(CLUSTER_SH), "down"], capture_output=True, check=False, timeout=timeout)
