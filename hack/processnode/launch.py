"""Container launcher: runs as ``unshare -m -u --propagation private python -m processnode.launch SPEC``.

Standard library only (it runs once per container start). Inside the fresh private mount (and UTS)
namespace it bind-mounts every volume at its ``mountPath`` (remounting read-only ones), the
termination-message file and the pod's ``/etc/hosts``, sets the pod's hostname, changes to the
working directory and ``exec``s the container command, so the container's pid is the pid the
process node started (and the process-group leader it signals on deletion).

On a setup or exec failure it writes the reason to ``SPEC``'s ``startErrorFile`` and exits 128,
which the process node reports as ``StartError``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import sys
from typing import Any

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000

_libc = ctypes.CDLL(None, use_errno=True)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """mount(2) through libc."""
    rc = _libc.mount(
        source.encode() if source is not None else None,
        target.encode(),
        fstype.encode() if fstype is not None else None,
        ctypes.c_ulong(flags),
        data.encode() if data is not None else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} -> {target}: {os.strerror(err)}")


def ensure_target(target: str, is_file: bool) -> None:
    """Create the mount point (a file for a file bind, a directory otherwise) if missing."""
    if os.path.lexists(target):
        return
    os.makedirs(os.path.dirname(target) or "/", exist_ok=True)
    if is_file:
        with open(target, "a"):
            pass
    else:
        os.makedirs(target, exist_ok=True)


def bind(source: str, target: str, read_only: bool) -> None:
    ensure_target(target, os.path.isfile(source))
    mount(source, target, None, MS_BIND | MS_REC)
    if read_only:
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)


def setup(spec: dict[str, Any]) -> None:
    # Parents before children: /var/run/secrets before /var/run/secrets/kubernetes.io/serviceaccount.
    mounts = sorted(spec["mounts"], key=lambda m: os.path.normpath(m["target"]).count("/"))
    # Open every source before mounting anything: a volume mounted over a parent of a later source (an emptyDir
    # at /tmp while the pod's directory lives under /tmp/...) would otherwise hide it. /proc/self/fd/N of an
    # O_PATH descriptor still reaches the source when its path is shadowed (the descriptors are close-on-exec).
    fds = [os.open(m["source"], os.O_PATH) for m in mounts]
    for m, fd in zip(mounts, fds, strict=True):
        try:
            bind(f"/proc/self/fd/{fd}", m["target"], bool(m.get("readOnly")))
        except OSError as exc:
            raise OSError(exc.errno, f"mount {m['source']} -> {m['target']}: {os.strerror(exc.errno or 0)}") from None
    hostname = spec.get("hostname")
    if hostname:
        with contextlib.suppress(OSError):  # no UTS namespace: keep the machine's hostname
            socket.sethostname(hostname)
    workdir = spec.get("workingDir") or "/"
    os.makedirs(workdir, exist_ok=True)
    os.chdir(workdir)


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        spec = json.load(f)
    try:
        setup(spec)
    except OSError as exc:
        return fail(spec, f"failed to create container: {exc}")
    args: list[str] = spec["argv"]
    env: dict[str, str] = spec["env"]
    try:
        os.execvpe(args[0], args, env)
    except OSError as exc:
        return fail(spec, f'exec: "{args[0]}": {exc.strerror}')
    return 0  # unreachable


def fail(spec: dict[str, Any], message: str) -> int:
    sys.stderr.write(message + "\n")
    try:
        with open(spec["startErrorFile"], "w") as f:
            f.write(message)
    except OSError:
        pass
    return 128


if __name__ == "__main__":
    sys.exit(main(sys.argv))
