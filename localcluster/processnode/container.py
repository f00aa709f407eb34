"""The container lifecycle on the process node: start a container's process tree, stop it, collect its exit.

A container is one process tree started as ``unshare --mount --uts … python launch.py <spec>`` in a new
session (its pid is the process-group id it is signalled by). Every process of it carries
``PROCESSNODE_CONTAINER_ID`` and ``PROCESSNODE_STATE_DIR`` in its environment, so the final SIGKILL also
reaches processes that left the group (torchrun starts its workers with ``start_new_session=True``) and
``cluster.sh down`` finds them even if the node itself was SIGKILLed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .kube import now_rfc3339
from .probes import Prober

Obj = dict[str, Any]

ID_PREFIX = "processnode://"
MAX_TERMINATION_MESSAGE = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
CONTAINER_MARKER = "PROCESSNODE_CONTAINER_ID"
STATE_MARKER = "PROCESSNODE_STATE_DIR"


@dataclass
class Container:
    """Runtime state of one container of a pod."""

    spec: Obj
    init: bool
    restart_count: int = 0
    proc: subprocess.Popen[bytes] | None = None
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "PodInitializing"}})
    last_state: Obj = field(default_factory=dict)
    container_id: str = ""
    next_start: float = 0.0  # monotonic time before which a restart waits (back-off)
    backoff: float = 0.0
    done: bool = False  # terminated and will not be restarted
    ready: bool = True  # readiness probe passed (or none)
    started_ok: bool = True  # startup probe passed (or none)
    unhealthy: str = ""  # why a liveness/startup probe wants the container restarted
    env: dict[str, str] = field(default_factory=dict)
    probers: list[Prober] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return "running" in self.state

    def exit_code(self) -> int | None:
        term = self.state.get("terminated")
        return int(term["exitCode"]) if term else None

    def new_instance(self) -> str:
        """A fresh container id for the next start; returns the id without its prefix (the process marker)."""
        marker = uuid.uuid4().hex
        self.container_id = ID_PREFIX + marker
        return marker


@dataclass(frozen=True)
class ContainerFiles:
    """Where one container's files live in its pod's directory."""

    log: str
    previous: str  # the previous instance's log (``kubectl logs --previous``)
    pid: str
    term: str  # bind-mounted at terminationMessagePath
    spec: str  # the launch spec (holds the resolved environment: owner-only)
    error: str  # written by the launcher when it cannot start the command

    @classmethod
    def of(cls, pod_dir: str, container: str) -> ContainerFiles:
        base = os.path.join(pod_dir, container)
        return cls(
            log=base + ".log",
            previous=base + ".previous.log",
            pid=base + ".pid",
            term=base + ".termination-log",
            spec=base + ".launch.json",
            error=base + ".start-error",
        )


def marked_pids(name: str, value: str) -> list[int]:
    """Pids of processes whose environment has ``name=value``."""
    needle = f"{name}={value}".encode()
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def kill_container(pgid: int, container_id: str, sig: int) -> None:
    """Signal the container's process group and, with SIGKILL, every process that carries its marker."""
    if pgid > 1:  # never 0: that would be the process node's own group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    marker = container_id.removeprefix(ID_PREFIX)
    if sig == signal.SIGKILL and marker:
        for pid in marked_pids(CONTAINER_MARKER, marker):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def kill_leftover(files: ContainerFiles, container_id: str) -> None:
    """Kill what an earlier process node left of a container (by its pid file and its marker)."""
    pid = read_text(files.pid, 32).strip()
    if pid.isdigit():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(pid), signal.SIGKILL)
    if container_id:
        kill_container(0, container_id, signal.SIGKILL)


@dataclass(frozen=True)
class Runtime:
    """Starts container processes: ``unshare`` into private mount and UTS namespaces, then the launcher."""

    unshare_cmd: list[str]
    python: str
    launcher: str  # processnode/launch.py, run by path with -I -S (standard library only)

    def start(self, files: ContainerFiles, spec: Obj) -> subprocess.Popen[bytes]:
        """Write the launch spec and start the container; its output goes to the container's log."""
        with open(os.open(files.spec, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump(spec, f)
        logf = open(files.log, "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                [*self.unshare_cmd, self.python, "-I", "-S", self.launcher, files.spec],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env={"PATH": os.environ["PATH"]},
            )
        finally:
            logf.close()
        with open(files.pid, "w") as f:
            f.write(str(proc.pid))
        return proc


def prepare_files(files: ContainerFiles, restart: bool) -> None:
    """Before a start: keep a restarted container's last log for ``kubectl logs --previous``, and empty the
    termination message and start error."""
    if restart:
        with contextlib.suppress(OSError):
            os.replace(files.log, files.previous)
    for path in (files.term, files.error):
        with open(path, "w"):
            pass


def terminate(proc: subprocess.Popen[bytes], container_id: str, grace: float) -> None:
    """SIGTERM to the container's process group, SIGKILL to all of it after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    kill_container(proc.pid, container_id, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def terminate_all(running: list[tuple[Container, subprocess.Popen[bytes]]], grace: float) -> None:
    """Stop several containers together: SIGTERM to all, one shared grace period, then SIGKILL."""
    for _, proc in running:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(proc.poll() is None for _, proc in running):
        time.sleep(0.05)
    for c, proc in running:
        kill_container(proc.pid, c.container_id, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def collect(c: Container, proc: subprocess.Popen[bytes], files: ContainerFiles) -> Obj:
    """The ``terminated`` state of a container whose main process exited (the rest of its processes are killed:
    a container ends with its main process)."""
    code = proc.returncode
    kill_container(proc.pid, c.container_id, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.unlink(files.pid)
    exit_code = code if code >= 0 else 128 - code
    term: Obj = {
        "exitCode": exit_code,
        "startedAt": c.state.get("running", {}).get("startedAt", now_rfc3339()),
        "finishedAt": now_rfc3339(),
        "containerID": c.container_id,
    }
    if code < 0:
        term["signal"] = -code
    start_error = read_text(files.error, MAX_TERMINATION_MESSAGE).strip()
    if exit_code == 128 and start_error:
        term["reason"] = "StartError"
        term["message"] = start_error
        return term
    term["reason"] = "Completed" if exit_code == 0 else "Error"
    message = read_text(files.term, MAX_TERMINATION_MESSAGE)
    if not message and exit_code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
        message = tail(files.log, FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES)
    if message:
        term["message"] = message
    return term


def next_backoff(previous: float, started_at: str, base: float, cap: float) -> float:
    """Restart back-off: ``base`` doubling up to ``cap``; a container that ran long enough starts over at ``base``
    (as the kubelet resets it)."""
    backoff = min(cap, base if previous == 0 else previous * 2)
    if time.time() - parse_time(started_at) > 2 * cap:
        backoff = base
    return backoff


def read_text(path: str, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def tail(path: str, lines: int, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError:
        return ""
    text = b"\n".join(data.splitlines()[-lines:]).decode("utf-8", "replace")
    return text[-limit:]


def parse_time(ts: str) -> float:
    import calendar

    try:
        return float(calendar.timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ")))
    except (ValueError, TypeError):
        return time.time()
