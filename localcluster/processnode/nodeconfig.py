"""The process node's configuration and what it derives for every container (base environment, kept paths)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .launchspec import keep_paths


@dataclass
class NodeConfig:
    """Everything ``python -m processnode`` is told on its command line."""

    kubeconfig: str
    state_dir: str
    node_name: str = "process-node"
    apiserver_port: int = 16443
    host_ip: str = "127.0.0.1"
    cpu: str = "16"
    memory: str = "64Gi"
    pods: str = "110"
    gpus: str = "2"
    ephemeral_storage: str = "100Gi"
    venv: str = ""
    project_root: str = ""
    # Source folders of the checkout on the pods' PYTHONPATH (the components pods run; not the local cluster itself).
    pythonpath: list[str] = field(default_factory=lambda: ["crds", "operator", "api", "trainer_image"])
    extra_env: dict[str, str] = field(default_factory=dict)
    pass_env: list[str] = field(
        default_factory=lambda: [
            "HF_HOME",
            "TORCH_HOME",
            "XDG_CACHE_HOME",
            "TMPDIR",
            "FTO_CACHE",
            "UV_CACHE_DIR",
            "PIP_CACHE_DIR",
        ]
    )
    max_grace: float = 30.0
    backoff: tuple[float, float] = (2.0, 60.0)
    kubelet_port: int = 0  # 0: no log server
    serving_cert: str = ""
    serving_key: str = ""
    client_ca: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    ready_file: str = ""  # written with our pid once the Node is registered and the pod watch runs
    sync_period: float = 30.0  # how often API-backed volumes are refreshed


def pod_base_env(cfg: NodeConfig) -> dict[str, str]:
    """Every container's environment before its pod's ``envFrom``/``env``: the project's venv and sources,
    offline model hubs, the node's caches and the in-cluster apiserver address."""
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env = {"PATH": f"{cfg.venv}/bin:{path}" if cfg.venv else path, "HOME": "/root", "LANG": "C.UTF-8"}
    if cfg.venv:
        env["VIRTUAL_ENV"] = cfg.venv
    if cfg.project_root:
        env["PYTHONPATH"] = ":".join(os.path.join(cfg.project_root, p) for p in cfg.pythonpath)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    for name in cfg.pass_env:
        if name in os.environ:
            env[name] = os.environ[name]
    port = str(cfg.apiserver_port)
    env.update(
        {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBERNETES_PORT": f"tcp://127.0.0.1:{port}",
            "KUBERNETES_PORT_443_TCP": f"tcp://127.0.0.1:{port}",
            "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
            "KUBERNETES_PORT_443_TCP_PORT": port,
            "KUBERNETES_PORT_443_TCP_ADDR": "127.0.0.1",
        }
    )
    env.update(cfg.extra_env)
    return env


def pod_keep_paths(cfg: NodeConfig) -> list[str]:
    """Paths no pod mount may hide: the checkout, the venv and its interpreter (:func:`launchspec.keep_paths`)."""
    return keep_paths(os.path.abspath(cfg.project_root) if cfg.project_root else "", cfg.venv)
