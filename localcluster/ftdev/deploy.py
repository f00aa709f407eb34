"""Render and apply a deploy/ overlay in the right order: `make deploy`, `make undeploy`, `make demo` and the
manifest tests all go through here (`hack/deployctl.py` is its command line).

    python hack/deployctl.py render  --overlay kind            # the YAML kubectl would apply
    python hack/deployctl.py apply   --overlay gpu --wait      # CRDs first (Established), then the rest
    python hack/deployctl.py apply   --overlay kind --dry-run  # server-side dry run of everything
    python hack/deployctl.py delete  --overlay kind            # reverse order; the CRD (and every FineTuneJob) last

Why not a plain `kubectl apply -k`: the base holds a CustomResourceDefinition *and* custom resources of other
CRDs (the operator's KopfPeering), and kubectl resolves every kind before applying anything, so the first apply
on a fresh cluster fails with "no matches for kind". CRDs are applied first and waited for. Everything is applied
server-side (the FineTuneJob CRD is too large for client-side apply's last-applied annotation).

A Deployment that does not roll out raises :class:`RolloutFailed`, whose message shows its pods' state, recent
Events and logs (the previous instance's too when a container restarted): a crash-looping pod explains itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ftdev.cluster import ROOT, kubectl_bin

Obj = dict[str, Any]
Log = Callable[[str], object]
OVERLAYS = ROOT / "deploy" / "overlays"
FIELD_MANAGER = "finetune-deploy"
CLUSTER_SCOPED = {
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "ClusterKopfPeering",
    "PriorityClass",
    "StorageClass",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}


class RolloutFailed(RuntimeError):
    """A Deployment did not become available; the message includes its pods' state and logs."""


class Kubectl:
    def __init__(self, kubectl: str | None = None, kubeconfig: str | None = None) -> None:
        self.bin = kubectl or kubectl_bin()
        self.kubeconfig = kubeconfig

    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.bin, *(["--kubeconfig", self.kubeconfig] if self.kubeconfig else []), *args]
        proc = subprocess.run(cmd, check=False, input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:1] + list(args))} failed ({proc.returncode}):\n{proc.stderr.strip()}")
        return proc


def overlay_path(overlay: str) -> Path:
    path = Path(overlay)
    if not path.is_absolute() and not (ROOT / path / "kustomization.yaml").exists():
        path = OVERLAYS / overlay
    path = path if path.is_absolute() else ROOT / path
    if not (path / "kustomization.yaml").exists():
        known = ", ".join(sorted(p.name for p in OVERLAYS.iterdir() if p.is_dir()))
        raise SystemExit(f"deployctl: no overlay {overlay!r} (known: {known})")
    return path


def render(overlay: str, kubectl: Kubectl | None = None) -> list[Obj]:
    """`kubectl kustomize` of an overlay, as a list of objects."""
    k = kubectl or Kubectl()
    out = k("kustomize", str(overlay_path(overlay))).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def dump(docs: list[Obj]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def name_of(doc: Obj) -> str:
    ns = doc["metadata"].get("namespace")
    return f"{doc['kind']}/{(ns + '/') if ns else ''}{doc['metadata']['name']}"


def split(docs: list[Obj]) -> tuple[list[Obj], list[Obj], list[Obj]]:
    """(namespaces, CRDs, everything else)."""
    namespaces = [d for d in docs if d["kind"] == "Namespace"]
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    rest = [d for d in docs if d["kind"] not in ("Namespace", "CustomResourceDefinition")]
    return namespaces, crds, rest


def apply(
    docs: list[Obj],
    kubectl: Kubectl,
    *,
    dry_run: bool = False,
    log: Log = print,
) -> None:
    """Namespaces and CRDs for real (unless dry_run) and waited for, then the rest (server-side dry run if asked)."""
    namespaces, crds, rest = split(docs)
    base = ["apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}", "-f", "-"]
    if namespaces or crds:
        first = [*namespaces, *crds]
        if dry_run:
            kubectl(*base, "--dry-run=server", stdin=dump(first))
            # Custom resources of a CRD that does not exist yet cannot be dry-run: create the CRDs for real.
            missing = [c for c in crds if kubectl("get", "crd", c["metadata"]["name"], check=False).returncode != 0]
            if missing:
                log(f">> creating {len(missing)} CRD(s) so their custom resources can be dry-run")
                kubectl(*base, stdin=dump(missing))
        else:
            out = kubectl(*base, stdin=dump(first)).stdout
            log(out.rstrip())
        for crd in crds:
            kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd['metadata']['name']}")
        for ns in namespaces:
            if dry_run and kubectl("get", "namespace", ns["metadata"]["name"], check=False).returncode != 0:
                log(f">> creating namespace {ns['metadata']['name']} so namespaced objects can be dry-run")
                kubectl(*base, stdin=dump([ns]))
    if rest:
        out = kubectl(*base, *(["--dry-run=server"] if dry_run else []), stdin=dump(rest)).stdout
        log(out.rstrip())


def wait_rollout(docs: list[Obj], kubectl: Kubectl, timeout: int = 300, log: Log = print) -> None:
    """Wait for every Deployment in ``docs``; :class:`RolloutFailed` explains the first one that does not roll out."""
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        ns, name = d["metadata"].get("namespace", "default"), d["metadata"]["name"]
        log(f">> waiting for deployment/{name} in {ns}")
        proc = kubectl(
            "-n",
            ns,
            "rollout",
            "status",
            f"deployment/{name}",
            f"--timeout={timeout}s",
            check=False,
            timeout=timeout + 30,
        )
        if proc.returncode != 0:
            reason = (proc.stderr or proc.stdout).strip()
            raise RolloutFailed(
                f"deployment/{name} in {ns} did not roll out: {reason}\n{explain_deployment(kubectl, ns, name)}"
            )


def explain_deployment(kubectl: Kubectl, namespace: str, name: str, *, log_lines: int = 40) -> str:
    """The state, recent Events and logs of a Deployment's pods that are not Ready."""
    r = kubectl("-n", namespace, "get", "deployment", name, "-o", "json", check=False)
    if r.returncode != 0:
        return f"deployment/{name}: {r.stderr.strip()}"
    labels = json.loads(r.stdout)["spec"]["selector"].get("matchLabels") or {}
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return explain_pods(kubectl, namespace, selector, log_lines=log_lines)


def explain_pods(kubectl: Kubectl, namespace: str, selector: str, *, log_lines: int = 40) -> str:
    """:func:`describe_pod`, Events and log tails of the pods matching ``selector`` that are not Ready."""
    r = kubectl("-n", namespace, "get", "pods", "-l", selector, "-o", "json", check=False)
    if r.returncode != 0:
        return f"pods {selector}: {r.stderr.strip()}"
    pods = [p for p in json.loads(r.stdout)["items"] if not pod_ready(p)]
    if not pods:
        return f"(every pod with {selector} in {namespace} is Ready)"
    out = []
    for pod in pods:
        pod_name = pod["metadata"]["name"]
        out.append(describe_pod(pod))
        out += [f"    event: {e}" for e in pod_events(kubectl, namespace, pod_name)]
        statuses = (pod.get("status") or {}).get("initContainerStatuses", []) + (pod.get("status") or {}).get(
            "containerStatuses", []
        )
        for cs in statuses:
            runs = [False, True] if cs.get("restartCount") else [False]
            for previous in runs:
                args = ["-n", namespace, "logs", pod_name, "-c", cs["name"], f"--tail={log_lines}"]
                r = kubectl(*args, *(["--previous"] if previous else []), check=False)
                text = (r.stdout if r.returncode == 0 else r.stderr).rstrip() or "(empty)"
                which = "previous instance's log" if previous else "log"
                out.append(f"    container {cs['name']} {which} (last {log_lines} lines):")
                out += ["      | " + line for line in text.splitlines()]
    return "\n".join(out)


def pod_ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def describe_pod(pod: Obj) -> str:
    """One pod's phase, unmet conditions and every container's state, in a few lines."""
    st = pod.get("status") or {}
    unmet = [
        f"{c['type']}={c['status']}" + (f" ({c['reason']})" if c.get("reason") else "")
        for c in st.get("conditions") or []
        if c.get("status") != "True"
    ]
    lines = [
        f"pod {pod['metadata']['name']}: phase {st.get('phase', 'Unknown')}"
        + (f"; {', '.join(unmet)}" if unmet else "")
    ]
    for cs in (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or []):
        lines.append(
            f"    container {cs['name']}: {container_state(cs.get('state') or {})}, restarts {cs.get('restartCount', 0)}"
        )
        last = (cs.get("lastState") or {}).get("terminated")
        if last:
            lines.append(f"      last run: {container_state({'terminated': last})}")
    return "\n".join(lines)


def container_state(state: Obj) -> str:
    if "waiting" in state:
        w = state["waiting"]
        return f"waiting ({w.get('reason', '')}" + (f": {w['message']}" if w.get("message") else "") + ")"
    if "terminated" in state:
        t = state["terminated"]
        message = (t.get("message") or "").strip().replace("\n", " ")[:300]
        return (
            f"terminated ({t.get('reason', '')}, exit code {t.get('exitCode')}"
            + (f": {message}" if message else "")
            + ")"
        )
    if "running" in state:
        return f"running since {state['running'].get('startedAt')}"
    return "unknown"


def pod_events(kubectl: Kubectl, namespace: str, pod: str, last: int = 8) -> list[str]:
    r = kubectl(
        "-n", namespace, "get", "events", "--field-selector", f"involvedObject.name={pod}", "-o", "json", check=False
    )
    if r.returncode != 0:
        return []
    events = sorted(json.loads(r.stdout)["items"], key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return [f"{e.get('type')} {e.get('reason')}: {e.get('message', '').strip()}" for e in events[-last:]]


def delete(
    docs: list[Obj],
    kubectl: Kubectl,
    *,
    keep_crds: bool = False,
    keep_namespaces: bool = False,
    log: Log = print,
) -> None:
    """Delete in reverse order: workloads and RBAC, then CRDs (which deletes every FineTuneJob), then namespaces."""
    namespaces, crds, rest = split(docs)
    order = list(reversed(rest))
    if not keep_crds:
        order += crds
    if not keep_namespaces:
        order += namespaces
    if not order:
        return
    out = kubectl(
        "delete", "--ignore-not-found", "--wait=true", "--timeout=120s", "-f", "-", stdin=dump(order), timeout=180
    )
    log(out.stdout.rstrip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["render", "apply", "delete"])
    p.add_argument("--overlay", default="kind", help="deploy/overlays/<name> or a path (default: kind)")
    p.add_argument("--kubectl", default=None, help="kubectl binary (default: the project venv's)")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    p.add_argument("--dry-run", action="store_true", help="apply: server-side dry run (CRDs/namespaces created)")
    p.add_argument("--wait", action="store_true", help="apply: wait for every Deployment to roll out")
    p.add_argument("--keep-crds", action="store_true", help="delete: keep the CRDs (and so every FineTuneJob)")
    args = p.parse_args(argv)
    k = Kubectl(args.kubectl, args.kubeconfig)
    try:
        docs = render(args.overlay, k)
        if args.action == "render":
            sys.stdout.write(dump(docs))
        elif args.action == "apply":
            apply(docs, k, dry_run=args.dry_run)
            if args.wait and not args.dry_run:
                wait_rollout(docs, k)
                print(f">> deployed {args.overlay}: kubectl -n finetune-system get deploy,svc,pods")
        else:
            delete(docs, k, keep_crds=args.keep_crds)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"deployctl: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
