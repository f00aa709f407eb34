"""Kueue on the local cluster: the controller manager of a pinned release (``build-tool.sh kueue``) running as a
local process against the local control plane, with the release's CRDs, RBAC and webhook configuration.

    python -m ftdev.kueue up       # idempotent; prints `export KUBECONFIG=...` last, like cluster.sh
    python -m ftdev.kueue status   # exit 0 when Kueue answers /readyz and its webhooks are registered
    python -m ftdev.kueue down     # unregister the webhooks, stop the process (CRDs and objects stay)

``FTO_STATE_DIR``/``FTO_APISERVER_PORT`` select the cluster as for ``cluster.sh``; ``cluster.sh down`` stops Kueue
too. What differs from the release's in-cluster install (``config/default``), and why:

* the manifests come from the release's own ``config/`` directory (the Go module; no other download);
* the apiserver reaches the webhooks at ``https://127.0.0.1:<apiserver port + 4>`` (``clientConfig.url`` instead of
  the in-cluster Service) with a serving certificate signed by the cluster's CA (``caBundle``): the same loopback
  TLS the apiserver uses towards the process node;
* Kueue authenticates as ServiceAccount ``kueue-system/kueue-controller-manager`` with a client certificate and
  gets exactly the release's ClusterRole (``config/components/rbac/role.yaml``), never admin;
* only the ``batch/job`` integration is enabled, and only its webhooks and those of Kueue's own kinds are
  registered: a registered webhook for a disabled integration (pods, Deployments, ...) would fail every such
  request in the cluster; no leader election, no visibility server, metrics off (no port to collide).

Health probes listen on ``127.0.0.1:<apiserver port + 5>``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from ftcrd import names

from ftdev.cluster import ROOT, kubectl_bin, state_dir

Obj = dict[str, Any]
BUILD_TOOL = ROOT / "localcluster" / "build-tool.sh"
NAMESPACE = "kueue-system"
SERVICE_ACCOUNT = "kueue-controller-manager"
USER = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
MUTATING = "kueue-mutating-webhook-configuration"
VALIDATING = "kueue-validating-webhook-configuration"
FIELD_MANAGER = "finetune-localcluster"
INTEGRATIONS = ("batch/job",)
# The release's webhooks we register: Kueue's own kinds and the batch/job integration.
WEBHOOK_TARGETS = {("kueue.x-k8s.io", None), ("batch", "jobs")}
METRICS_CERTS = "/etc/kueue/metrics/certs"
GROUP = "kueue.x-k8s.io"
WORKLOADS_VERSION = "v1beta2"
SERVED_ANNOTATION = f"{names.GROUP}/served-since"


def apiserver_port() -> int:
    return int(os.environ.get("FTO_APISERVER_PORT", "16443"))


def webhook_port() -> int:
    return apiserver_port() + 4


def health_port() -> int:
    return apiserver_port() + 5


class Paths:
    """Where this cluster's Kueue keeps its files (under the cluster's state directory)."""

    def __init__(self, state: Path | None = None) -> None:
        self.state = state or state_dir()
        self.dir = self.state / "kueue"
        self.pki = self.state / "pki"
        self.certs = self.dir / "certs"
        self.config = self.dir / "config.yaml"
        self.kubeconfig = self.dir / "kubeconfig"
        self.admin = self.state / "admin.kubeconfig"
        self.pid = self.state / "run" / "kueue.pid"
        self.log = self.state / "logs" / "kueue.log"


def build() -> Path:
    """The release's directory (``bin/kueue``, ``config/``): built once per machine by ``build-tool.sh``."""
    proc = subprocess.run(["bash", str(BUILD_TOOL), "kueue"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"build-tool.sh kueue failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------------------
# the release's manifests, adapted (pure)
# --------------------------------------------------------------------------------------------------------------


def _load(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _url_client_config(url: str, ca_bundle: str, path: str) -> Obj:
    return {"url": url.rstrip("/") + path, "caBundle": ca_bundle}


def crds(config: Path, url: str, ca_bundle: str) -> list[Obj]:
    """The release's CRDs; those the release converts with its webhook (``crd/patches/webhook_in_*``) call it
    at ``url``/convert."""
    converted = set()
    for patch in sorted((config / "components" / "crd" / "patches").glob("webhook_in_*.yaml")):
        listed = (config / "components" / "crd" / "kustomization.yaml").read_text()
        if f"- path: patches/{patch.name}" in listed:  # commented-out patches are not applied by the release
            converted.add(_load(patch)[0]["metadata"]["name"])
    out = []
    for path in sorted((config / "components" / "crd" / "bases").glob("*.yaml")):
        for crd in _load(path):
            if crd["metadata"]["name"] in converted:
                crd["spec"]["conversion"] = {
                    "strategy": "Webhook",
                    "webhook": {
                        "clientConfig": _url_client_config(url, ca_bundle, "/convert"),
                        "conversionReviewVersions": ["v1"],
                    },
                }
            out.append(crd)
    return out


def _wanted(webhook: Obj) -> bool:
    for rule in webhook.get("rules") or []:
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                if (group, None) in WEBHOOK_TARGETS or (group, resource) in WEBHOOK_TARGETS:
                    return True
    return False


def webhook_configurations(config: Path, url: str, ca_bundle: str) -> list[Obj]:
    """The release's Mutating/ValidatingWebhookConfiguration, named as the release names them, reduced to the
    webhooks of Kueue's kinds and the enabled integrations, calling ``url``."""
    out = []
    for doc in _load(config / "components" / "webhook" / "manifests.yaml"):
        doc["metadata"] = {"name": MUTATING if doc["kind"] == "MutatingWebhookConfiguration" else VALIDATING}
        hooks = []
        for hook in doc["webhooks"]:
            if not _wanted(hook):
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = _url_client_config(url, ca_bundle, path)
            hooks.append(hook)
        doc["webhooks"] = hooks
        out.append(doc)
    return out


# The manager's own RBAC as the release's config/default makes it (namePrefix kueue-, namespace kueue-system).
RBAC_FILES = ("role.yaml", "role_binding.yaml", "manager_secrets_role.yaml", "manager_secrets_role_binding.yaml")


def rbac(config: Path) -> list[Obj]:
    """Namespace, ServiceAccount and the release's manager (Cluster)Roles and bindings, named as a release
    install names them."""
    out: list[Obj] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE}},
    ]
    for name in RBAC_FILES:
        for doc in _load(config / "components" / "rbac" / name):
            doc["metadata"]["name"] = "kueue-" + doc["metadata"]["name"]
            if "namespace" in doc["metadata"]:
                doc["metadata"]["namespace"] = NAMESPACE
            if "roleRef" in doc:
                doc["roleRef"]["name"] = "kueue-" + doc["roleRef"]["name"]
            for subject in doc.get("subjects") or []:
                subject.update(name="kueue-" + subject["name"], namespace=NAMESPACE)
            out.append(doc)
    return out


def manager_configuration(certs: Path, webhook: int, health: int) -> Obj:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2) for a local process on loopback."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook, "certDir": str(certs)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "clientConnection": {"qps": 50, "burst": 100},
        "integrations": {"frameworks": list(INTEGRATIONS)},
        "featureGates": {"VisibilityOnDemand": False},
    }


# --------------------------------------------------------------------------------------------------------------
# the process
# --------------------------------------------------------------------------------------------------------------


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _cert(paths: Paths, out: Path, subject: str, ext: str) -> None:
    """An ECDSA P-256 key and a certificate signed by the cluster's CA (as cluster.sh makes its own)."""
    key, csr, extfile = out.with_suffix(".key"), out.with_suffix(".csr"), out.with_suffix(".ext")
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
    key.chmod(0o600)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    extfile.write_text(ext + "\n")
    ca, ca_key = paths.pki / "ca.crt", paths.pki / "ca.key"
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "3650",
        "-sha256",
        "-extfile",
        str(extfile),
        "-out",
        str(out),
    )
    csr.unlink()


def _credentials(paths: Paths) -> None:
    """Webhook serving certificate (tls.crt/tls.key in certDir, as controller-runtime expects) and Kueue's client
    certificate and kubeconfig; made once per cluster."""
    paths.certs.mkdir(parents=True, exist_ok=True)
    serving = paths.certs / "tls.crt"
    if not serving.exists():
        _cert(
            paths,
            serving,
            "/CN=kueue-webhook",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,"
            "keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost",
        )
    client = paths.dir / "client.crt"
    if not client.exists():
        _cert(
            paths,
            client,
            f"/CN={USER}",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,"
            "keyEncipherment\nextendedKeyUsage=clientAuth",
        )
    admin = yaml.safe_load(paths.admin.read_text())
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [
            {"name": USER, "user": {"client-certificate": str(client), "client-key": str(client.with_suffix(".key"))}}
        ],
        "contexts": [{"name": "kueue", "context": {"cluster": admin["clusters"][0]["name"], "user": USER}}],
        "current-context": "kueue",
    }
    paths.kubeconfig.write_text(yaml.safe_dump(kubeconfig))
    paths.kubeconfig.chmod(0o600)


def _kubectl(
    paths: Paths, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    cmd = [kubectl_bin(), "--kubeconfig", str(paths.admin), *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False, timeout=300)
    if check and proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _apply(paths: Paths, docs: list[Obj]) -> None:
    body = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": docs})
    _kubectl(
        paths, "apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}", "-f", "-", stdin=body
    )


def in_private_mounts(binds: dict[str, Path]) -> list[str]:
    """A command prefix that runs the command in its own mount namespace with ``binds`` (target -> source) bind-
    mounted, as the process node runs containers. Kueue reads a metrics certificate from a fixed path
    (METRICS_CERTS) whenever it does not manage certificates itself; this gives it ours there, per cluster, without
    writing into the host's /etc (only the empty mount point is created, as the process node creates its pods')."""
    script = "; ".join(f'mkdir -p "{t}" && mount --bind "{s}" "{t}"' for t, s in binds.items()) + '; exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec", script, "kueue"]


def _pid(paths: Paths) -> int | None:
    try:
        pid = int(paths.pid.read_text().strip())
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return None
        return pid
    except (OSError, ValueError, IndexError):
        return None


def ready() -> bool:
    """Kueue answers /readyz (its webhook server has its certificate and listens)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port()}/readyz", timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


def healthy(paths: Paths | None = None) -> bool:
    paths = paths or Paths()
    if _pid(paths) is None or not ready():
        return False
    got = _kubectl(paths, "get", "mutatingwebhookconfiguration", MUTATING, "-o", "name", check=False)
    return got.returncode == 0


def _wait(predicate: Any, seconds: float, what: str, paths: Paths) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if _pid(paths) is None:
            tail = paths.log.read_text(errors="replace")[-3000:] if paths.log.exists() else ""
            raise RuntimeError(f"kueue exited while waiting for {what} (log {paths.log}):\n{tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {seconds}s waiting for {what} (log {paths.log})")
        time.sleep(0.3)


def _announce_workloads(paths: Paths) -> None:
    """Make operators that run already see the Workloads API. kopf re-reads API discovery when a CRD of the group
    changes; the apiserver serves a new CRD in discovery a moment after it is Established, so the last of the
    release's CRD events can come before that and leave a running operator blind to Workloads until the next
    one. Once discovery serves them, one more change (this annotation) is that next event."""
    served = f"/apis/{GROUP}/{WORKLOADS_VERSION}"
    _wait(
        lambda: '"workloads"' in _kubectl(paths, "get", "--raw", served, check=False).stdout,
        60,
        f"{served} in API discovery",
        paths,
    )
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _kubectl(paths, "annotate", "--overwrite", "crd", f"workloads.{GROUP}", f"{SERVED_ANNOTATION}={stamp}")


def up(log: Any = print) -> Path:
    """Start Kueue against the running local cluster (idempotent); returns the admin kubeconfig."""
    paths = Paths()
    if not paths.admin.exists():
        raise RuntimeError(f"no local cluster in {paths.state}: run localcluster/cluster.sh up first")
    if healthy(paths):
        log(f">> reusing the running Kueue (pid {_pid(paths)})")
        return paths.admin
    release = build()
    config = release / "config"
    t0 = time.monotonic()
    paths.dir.mkdir(parents=True, exist_ok=True)
    paths.pid.parent.mkdir(parents=True, exist_ok=True)
    paths.log.parent.mkdir(parents=True, exist_ok=True)
    _credentials(paths)
    url = f"https://127.0.0.1:{webhook_port()}"
    ca_bundle = base64.b64encode((paths.pki / "ca.crt").read_bytes()).decode()
    _apply(paths, rbac(config))
    _apply(paths, crds(config, url, ca_bundle))
    for crd in crds(config, url, ca_bundle):
        _kubectl(paths, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd['metadata']['name']}")
    paths.config.write_text(yaml.safe_dump(manager_configuration(paths.certs, webhook_port(), health_port())))
    if _pid(paths) is None:
        with paths.log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    *in_private_mounts({METRICS_CERTS: paths.certs}),
                    str(release / "bin" / "kueue"),
                    f"--config={paths.config}",
                    f"--kubeconfig={paths.kubeconfig}",
                    "--zap-log-level=2",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        paths.pid.write_text(str(proc.pid))
    _wait(ready, 120, "Kueue /readyz", paths)
    # Registered only now: a webhook whose server is not up fails every Job creation in the cluster.
    _apply(paths, webhook_configurations(config, url, ca_bundle))
    _announce_workloads(paths)
    log(f">> Kueue {release.name} ready after {time.monotonic() - t0:.0f}s (log {paths.log})")
    return paths.admin


def down(log: Any = print) -> None:
    """Unregister the webhooks (the cluster creates Jobs without Kueue again), then stop the process."""
    paths = Paths()
    if paths.admin.exists():
        for kind, name in (("mutatingwebhookconfiguration", MUTATING), ("validatingwebhookconfiguration", VALIDATING)):
            _kubectl(paths, "delete", kind, name, "--ignore-not-found", check=False)
    pid = _pid(paths)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _pid(paths) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    paths.pid.unlink(missing_ok=True)
    log(">> Kueue stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ftdev.kueue", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    args = parser.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    if args.command == "up":
        print(f"export KUBECONFIG={up(log)}")
    elif args.command == "down":
        down(log)
    else:
        ok = healthy()
        print(f"kueue {'ready' if ok else 'not ready'} (pid {_pid(Paths())}, health 127.0.0.1:{health_port()})")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
