"""The local cluster (``localcluster/cluster.sh``) from Python, for the tests, the demo and the benchmarks.

``FTO_STATE_DIR`` and ``FTO_APISERVER_PORT`` select the cluster, as for the script itself: from the environment, or
from ``env`` where a function takes one (a second, private cluster beside the developer's, as the chaos test runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
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


COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "processnode")


def _env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    return None if env is None else {**os.environ, **env}


def healthy(*, env: Mapping[str, str] | None = None) -> bool:
    """Every component runs and the node is Ready (``cluster.sh status``)."""
    cmd = ["bash", str(CLUSTER_SH), "status"]
    return subprocess.run(cmd, capture_output=True, check=False, env=_env(env)).returncode == 0


def apiserver_answers(state: Path) -> bool:
    """The apiserver of the cluster in ``state`` answers /readyz."""
    kubeconfig = state / "admin.kubeconfig"
    if not kubeconfig.exists():
        return False
    cmd = [kubectl_bin(), "--kubeconfig", str(kubeconfig), "get", "--raw", "/readyz", "--request-timeout=5s"]
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def _script(*args: str, timeout: float, env: Mapping[str, str] | None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["bash", str(CLUSTER_SH), *args], capture_output=True, text=True, check=False, timeout=timeout, env=_env(env)
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"localcluster/cluster.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return proc


def up(timeout: float = 900, *, env: Mapping[str, str] | None = None) -> Path:
    """``cluster.sh up`` (reuses a healthy cluster; the first run builds Kubernetes); returns the kubeconfig."""
    proc = _script("up", timeout=timeout, env=env)
    last = proc.stdout.strip().splitlines()[-1]
    if not last.startswith("export KUBECONFIG="):
        raise RuntimeError(f"localcluster/cluster.sh up printed {last!r} last, not export KUBECONFIG=...")
    return Path(last.split("=", 1)[1])


def down(timeout: float = 300, *, env: Mapping[str, str] | None = None) -> None:
    subprocess.run(["bash", str(CLUSTER_SH), "down"], capture_output=True, check=False, timeout=timeout, env=_env(env))


def stop(component: str, timeout: float = 120, *, env: Mapping[str, str] | None = None) -> None:
    """Stop one component (``cluster.sh stop``), keeping the cluster's state: a fault for the chaos benchmark. The
    process node stops its pods' processes and leaves their API objects; :func:`up` brings everything back."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r} (one of {', '.join(COMPONENTS)})")
    _script("stop", component, timeout=timeout, env=env)


def restart(component: str, timeout: float = 300, *, env: Mapping[str, str] | None = None) -> None:
    """``cluster.sh restart``: stop one component and start it again, waiting until the cluster is healthy."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r} (one of {', '.join(COMPONENTS)})")
    _script("restart", component, timeout=timeout, env=env)
