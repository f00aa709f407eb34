"""``python -m processnode --kubeconfig NODE_KUBECONFIG --state-dir DIR``: run the process node."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import threading
from types import FrameType

from .node import ProcessNode
from .nodeconfig import NodeConfig

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18


def private_mount_namespace() -> bool:
    """Move this process into its own mount namespace (before any thread starts).

    tmpfs emptyDirs are mounted here and inherited by the containers' namespaces; when the node
    dies, the namespace (and every mount in it) goes with it instead of leaking into the host's.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        return False
    return libc.mount(b"none", b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None) == 0


def parse_args(argv: list[str]) -> NodeConfig:
    p = argparse.ArgumentParser(prog="python -m processnode", description=__doc__)
    p.add_argument("--kubeconfig", required=True, help="kubeconfig of the node (system:node:<name> credentials)")
    p.add_argument("--state-dir", default=os.environ.get("FTO_STATE_DIR", "/tmp/finetune-operator-cluster"))
    p.add_argument("--node-name", default="process-node")
    p.add_argument("--apiserver-port", type=int, default=16443, help="value of KUBERNETES_SERVICE_PORT in pods")
    p.add_argument("--host-ip", default="127.0.0.1")
    p.add_argument("--cpu", default="16")
    p.add_argument("--memory", default="64Gi")
    p.add_argument("--pods", default="110")
    p.add_argument("--gpus", default="2", help="capacity of nvidia.com/gpu (0: none)")
    p.add_argument("--ephemeral-storage", default="100Gi")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="extra node label")
    p.add_argument(
        "--venv",
        default=os.environ.get("VIRTUAL_ENV", os.path.dirname(os.path.dirname(sys.executable))),
        help="virtualenv whose bin/ goes first on the pods' PATH",
    )
    p.add_argument("--project-root", default="", help="checkout whose source folders go on the pods' PYTHONPATH")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra env for every container")
    p.add_argument("--max-grace-period", type=float, default=30.0, help="cap on terminationGracePeriodSeconds")
    p.add_argument(
        "--backoff",
        type=float,
        nargs=2,
        default=(2.0, 60.0),
        metavar=("INITIAL", "MAX"),
        help="container restart back-off in seconds (the kubelet uses 10 300)",
    )
    p.add_argument("--kubelet-port", type=int, default=0, help="serve /containerLogs for `kubectl logs` (0: off)")
    p.add_argument("--serving-cert", default="")
    p.add_argument("--serving-key", default="")
    p.add_argument("--client-ca", default="", help="CA that signs the apiserver's kubelet client certificate")
    p.add_argument("--sync-period", type=float, default=30.0, help="seconds between volume refreshes")
    p.add_argument("--ready-file", default="", help="write the pid here once registered and watching pods")
    p.add_argument("--no-private-mounts", action="store_true", help="stay in the caller's mount namespace")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    cfg = NodeConfig(
        kubeconfig=a.kubeconfig,
        state_dir=a.state_dir,
        node_name=a.node_name,
        apiserver_port=a.apiserver_port,
        host_ip=a.host_ip,
        cpu=a.cpu,
        memory=a.memory,
        pods=a.pods,
        gpus=a.gpus,
        ephemeral_storage=a.ephemeral_storage,
        venv=a.venv,
        project_root=a.project_root,
        extra_env=dict(kv.split("=", 1) for kv in a.env),
        max_grace=a.max_grace_period,
        backoff=(a.backoff[0], a.backoff[1]),
        kubelet_port=a.kubelet_port,
        serving_cert=a.serving_cert,
        serving_key=a.serving_key,
        client_ca=a.client_ca,
        labels=dict(kv.split("=", 1) for kv in a.label),
        ready_file=a.ready_file,
        sync_period=a.sync_period,
    )
    logging.basicConfig(
        level=logging.DEBUG if a.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
    )
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    if not a.no_private_mounts and not private_mount_namespace():
        logging.warning("could not create a private mount namespace; tmpfs volumes are mounted in the caller's")
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    node = ProcessNode(cfg)
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logging.info("signal %d: stopping pods and exiting", signum)
        done.set()
        node.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    node.run()
    node.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
