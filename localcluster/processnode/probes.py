"""Container probes (startup, readiness, liveness) as the kubelet runs them.

``httpGet`` and ``tcpSocket`` target 127.0.0.1 (the pod IP: every pod shares the host network);
``exec`` runs the command inside the container's mount and UTS namespaces (``nsenter``) with the
container's environment. ``grpc`` probes are not implemented and always succeed.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
log = logging.getLogger(__name__)


@dataclass
class ProbeResult:
    ok: bool
    message: str = ""


def resolve_port(port: int | str, container: Obj) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"port {port!r} not found in container {container['name']}")


def run_probe(probe: Obj, container: Obj, pid: int, env: dict[str, str]) -> ProbeResult:
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in probe:
            h = probe["httpGet"]
            port = resolve_port(h["port"], container)
            host = h.get("host") or "127.0.0.1"
            conn: http.client.HTTPConnection
            if (h.get("scheme") or "HTTP").upper() == "HTTPS":
                ctx = ssl._create_unverified_context()  # the kubelet does not verify probe certificates
                conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            headers = {hh["name"]: hh["value"] for hh in h.get("httpHeaders") or []}
            headers.setdefault("User-Agent", "kube-probe/processnode")
            try:
                conn.request("GET", h.get("path") or "/", headers=headers)
                status = conn.getresponse().status
            finally:
                conn.close()
            return ProbeResult(200 <= status < 400, f"HTTP probe failed with statuscode: {status}")
        if "tcpSocket" in probe:
            t = probe["tcpSocket"]
            port = resolve_port(t["port"], container)
            with socket.create_connection((t.get("host") or "127.0.0.1", port), timeout=timeout):
                return ProbeResult(True)
        if "exec" in probe:
            argv = list(probe["exec"].get("command") or [])
            nsenter = shutil.which("nsenter")
            if nsenter:
                argv = [nsenter, "--target", str(pid), "--mount", "--uts", "--", *argv]
            proc = subprocess.run(
                argv, env=env, capture_output=True, timeout=timeout, check=False, cwd=container.get("workingDir") or "/"
            )
            out = (proc.stdout + proc.stderr).decode("utf-8", "replace").strip()
            return ProbeResult(proc.returncode == 0, f"command failed with exit code {proc.returncode}: {out[:200]}")
        return ProbeResult(True)  # grpc: not implemented
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"command timed out after {timeout}s")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return ProbeResult(False, f"probe failed: {exc}")


class Prober(threading.Thread):
    """Runs one probe of one container instance until that instance stops.

    ``on_result(kind, passed)`` is called on every state change: for ``startup`` once it succeeds
    (``True``) or gives up (``False``), for ``readiness`` when the container becomes ready or
    unready, for ``liveness`` when it fails ``failureThreshold`` times in a row (``False``).
    """

    def __init__(
        self,
        kind: str,
        probe: Obj,
        container: Obj,
        *,
        pid: int,
        env: dict[str, str],
        on_result: Callable[[str, bool, str], None],
    ) -> None:
        super().__init__(name=f"probe-{kind}-{container['name']}-{pid}", daemon=True)
        self.kind = kind
        self.probe = probe
        self.container = container
        self.pid = pid
        self.env = env
        self.on_result = on_result
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        p = self.probe
        period = float(p.get("periodSeconds") or 10)
        success_threshold = int(p.get("successThreshold") or 1)
        failure_threshold = int(p.get("failureThreshold") or 3)
        if self.stopped.wait(float(p.get("initialDelaySeconds") or 0)):
            return
        successes = failures = 0
        ready: bool | None = None
        while not self.stopped.is_set() and _alive(self.pid):
            result = run_probe(p, self.container, self.pid, self.env)
            if self.stopped.is_set():
                return
            if result.ok:
                successes, failures = successes + 1, 0
            else:
                successes, failures = 0, failures + 1
            if self.kind == "startup":
                if result.ok:
                    self.on_result("startup", True, "")
                    return
                if failures >= failure_threshold:
                    self.on_result("startup", False, result.message)
                    return
            elif self.kind == "readiness":
                if result.ok and successes >= success_threshold and ready is not True:
                    ready = True
                    self.on_result("readiness", True, "")
                elif not result.ok and (failures >= failure_threshold or ready is None) and ready is not False:
                    ready = False
                    self.on_result("readiness", False, result.message)
            elif not result.ok and failures >= failure_threshold:
                self.on_result("liveness", False, result.message)
                return
            self.stopped.wait(period)


def _alive(pid: int) -> bool:
    with contextlib.suppress(OSError):
        os.kill(pid, 0)
        return True
    return False
