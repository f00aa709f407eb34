"""The plugin's only way to the cluster: ``kubectl`` itself, with the user's kubeconfig, context and namespace.

Going through kubectl (rather than a client library) means every kubeconfig kubectl understands (exec
credential plugins, OIDC, proxies) works unchanged, and the plugin needs nothing but Python's standard library.
The API service is never contacted.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ftcrd import names

RESOURCE = f"{names.PLURAL}.{names.GROUP}"
Obj = dict[str, Any]


class KubectlError(RuntimeError):
    """kubectl failed; the message is kubectl's own (say `NotFound`, `Forbidden`)."""


@dataclass
class Kubectl:
    """kubectl with the global flags the user gave ``kubectl finetune`` (``--context``, ``-n``, ...)."""

    flags: Sequence[str] = field(default_factory=list)
    binary: str = field(default_factory=lambda: os.environ.get("KUBECTL", "kubectl"))

    def command(self, *args: str) -> list[str]:
        return [self.binary, *self.flags, *args]

    def run(self, *args: str) -> str:
        proc = subprocess.run(self.command(*args), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise KubectlError(proc.stderr.strip() or f"kubectl {' '.join(args)} exited {proc.returncode}")
        return proc.stdout

    def get(self, *args: str) -> Obj:
        return json.loads(self.run("get", *args, "-o", "json"))

    def job(self, name: str) -> Obj:
        return self.get(RESOURCE, name)

    def jobs(self, all_namespaces: bool = False) -> list[Obj]:
        return list(self.get(RESOURCE, *(["--all-namespaces"] if all_namespaces else [])).get("items") or [])

    def pods(self, job: str) -> list[Obj]:
        return list(self.get("pods", "-l", f"{names.LABEL_JOB}={job}").get("items") or [])

    def patch(self, name: str, patch: Obj) -> None:
        self.run("patch", RESOURCE, name, "--type=merge", "-p", json.dumps(patch))

    def watch(self, name: str) -> Iterator[Obj]:
        """The FineTuneJob now, then after every change, until it is deleted or kubectl's watch ends."""
        proc = subprocess.Popen(
            self.command("get", RESOURCE, name, "--watch", "-o", "json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        decoder, buffer = json.JSONDecoder(), ""
        try:
            for line in proc.stdout:
                buffer += line
                # kubectl prints one pretty-printed object per event: decode whenever one is complete.
                while buffer.strip():
                    try:
                        obj, end = decoder.raw_decode(buffer.lstrip())
                    except ValueError:
                        break
                    buffer = buffer.lstrip()[end:]
                    yield obj
        finally:
            proc.terminate()
            proc.wait(10)
        if proc.returncode not in (0, -15) and proc.stderr is not None:
            err = proc.stderr.read().strip()
            if err:
                raise KubectlError(err)

    def follow_logs(self, pod: str, container: str, follow: bool) -> int:
        """``kubectl logs [-f]`` with the output going straight to ours; its exit code."""
        return subprocess.call(self.command("logs", pod, "-c", container, *(["-f"] if follow else [])))
