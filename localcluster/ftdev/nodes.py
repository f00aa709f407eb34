"""More process nodes for the local cluster: ``cluster.sh`` registers one (``process-node``); a test that needs pods
spread over several nodes (a multi-node job whose GPUs only fit on two nodes, Kueue quotas over two nodes' GPUs)
adds another for its duration::

    with ExtraNode("process-node-2", gpus=2):
        ...   # two Ready nodes; pods may land on either

The extra node is the same kubelet stand-in (``python -m processnode``) with the cluster's state directory (its
pods' directories sit beside the first node's, so ``Cluster.pod_log`` finds them), its own log port for
``kubectl logs``, and the admin kubeconfig (``cluster.sh`` makes node credentials for ``process-node`` only; the
Node authorizer and NodeRestriction therefore do not narrow it). Leaving the block stops it, which stops its pods'
processes, and deletes its Node. ``cluster.sh down`` stops one left behind (its pid file is in ``run/``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from ftdev import free_port
from ftdev.cluster import ROOT, kubectl_bin, state_dir

SOURCE_DIRS = ("crds", "operator", "api", "trainer_image", "localcluster")


class ExtraNode:
    def __init__(self, name: str, *, gpus: int = 2, cpu: str = "16", memory: str = "64Gi") -> None:
        self.name, self.gpus, self.cpu, self.memory = name, gpus, cpu, memory
        self.state = state_dir()
        self.kubeconfig = self.state / "admin.kubeconfig"
        self.pid_file = self.state / "run" / f"{name}.pid"
        self.ready_file = self.state / "run" / f"{name}.ready"
        self.log = self.state / "logs" / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [kubectl_bin(), "--kubeconfig", str(self.kubeconfig), *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)

    def _ready(self) -> bool:
        if not (self.proc and self.ready_file.exists() and self.ready_file.read_text().strip() == str(self.proc.pid)):
            return False
        got = self._kubectl("get", "node", self.name, "-o", 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')
        return got.stdout.strip() == "True"

    def start(self, timeout: float = 60) -> ExtraNode:
        pki = self.state / "pki"
        venv = Path(sys.executable).parent.parent
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / d) for d in SOURCE_DIRS)}
        self.ready_file.unlink(missing_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "processnode",
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--state-dir",
                    str(self.state),
                    "--node-name",
                    self.name,
                    "--apiserver-port",
                    os.environ.get("FTO_APISERVER_PORT", "16443"),
                    "--venv",
                    str(venv),
                    "--project-root",
                    str(ROOT),
                    "--cpu",
                    self.cpu,
                    "--memory",
                    self.memory,
                    "--gpus",
                    str(self.gpus),
                    "--kubelet-port",
                    str(free_port()),
                    "--serving-cert",
                    str(pki / "node-serving.crt"),
                    "--serving-key",
                    str(pki / "node-serving.key"),
                    "--client-ca",
                    str(pki / "ca.crt"),
                    "--ready-file",
                    str(self.ready_file),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.pid_file.write_text(str(self.proc.pid))
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not Ready after {timeout}s (log {self.log})")
            time.sleep(0.3)
        return self

    def stop(self) -> None:
        """SIGTERM (the node stops its pods and unmounts their volumes), then delete the Node."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(45)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.pid_file.unlink(missing_ok=True)
        self.ready_file.unlink(missing_ok=True)
        self._kubectl("delete", "node", self.name, "--ignore-not-found", "--wait=false")

    def __enter__(self) -> ExtraNode:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
