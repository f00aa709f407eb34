"""The demo's steps, in order, and its cleanup. Each step prints what it does; a failing step raises
:class:`ftdev.demo.DemoError` (or a tool's error) and :meth:`Demo.run` prints why, with the failing pods' state and
logs, before it cleans up."""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import subprocess
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ftcrd.names import GROUP, LABEL_JOB, PLURAL, VERSION

from ftdev import cluster, deploy, free_port, port_in_use
from ftdev.demo import (
    API_DEPLOYMENT,
    BUCKET,
    COMMUNITY,
    DATA,
    JOB_NAMESPACE,
    KEYS_SECRET,
    NAMESPACE,
    OPERATOR_DEPLOYMENT,
    TERMINAL,
    DemoError,
    overlay,
)
from ftdev.demo.model import download_verified, evaluate
from ftdev.demo.report import say, summary
from ftdev.demo.watch import Watched, watch_job
from ftdev.gcs import GcsEmulator


def http(method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 30) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


class Demo:
    STEPS = 8

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.step_no = 0
        self.started_cluster = False
        self.kubeconfig: str | None = args.kubeconfig
        self.k: deploy.Kubectl | None = None
        self.emulator: GcsEmulator | None = None
        self.docs: list[dict[str, Any]] = []
        self.deployed = False
        self.api = self.key = "?"
        self.job: str | None = None
        self.job_ns = JOB_NAMESPACE
        self.watch_rv: str | None = None
        self.seen = Watched()
        self.spec: dict[str, Any] = {}
        self.evaluation: tuple[Any, Any] | None = None
        self.t0 = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix="finetune-demo-"))

    @property
    def kubectl(self) -> deploy.Kubectl:
        assert self.k is not None, "no cluster yet"
        return self.k

    def step(self, title: str) -> None:
        self.step_no += 1
        say(f"\n==> [{self.step_no}/{self.STEPS}] {title}  (+{time.monotonic() - self.t0:.0f}s)")

    # 1
    def cluster(self) -> None:
        self.step("Local control plane (etcd, kube-apiserver, controller-manager, scheduler) and the process node")
        if self.kubeconfig:
            say(f"    using the cluster of {self.kubeconfig}")
        else:
            self.started_cluster = not cluster.healthy()
            if self.started_cluster:
                say("    starting it (localcluster/cluster.sh up) ...")
            else:
                say("    a healthy local cluster is already running: reusing it (it is left running afterwards)")
            self.kubeconfig = str(cluster.up())
        self.k = deploy.Kubectl(kubeconfig=self.kubeconfig)
        say(self.kubectl("get", "nodes", "-o", "wide").stdout.rstrip())

    # 2
    def storage(self) -> None:
        self.step("GCS emulator (stands in for Firebase Storage; the trainer's upload code is unchanged)")
        port = self.args.gcs_port or free_port()
        if port_in_use(port):
            raise DemoError(f"port {port} is in use: pass --gcs-port 0 (a free port) or stop what listens there")
        self.emulator = GcsEmulator(port=port, bucket=BUCKET).start()
        say(f"    gcp-storage-emulator on {self.emulator.host}, bucket gs://{BUCKET}")

    # 3
    def deploy(self) -> None:
        assert self.emulator is not None
        self.step("Deploy deploy/overlays/local: CRD, RBAC, operator and API Deployments (pods on the process node)")
        api_port = self.args.api_port or free_port()
        if port_in_use(api_port):
            raise DemoError(f"port {api_port} is in use: pass --api-port 0 (a free port) or free it")
        self.api = f"http://127.0.0.1:{api_port}"
        self.key = "ftk-demo-" + secrets.token_urlsafe(24)
        docs = deploy.render("local", self.kubectl)
        overlay.customize(
            docs,
            emulator_host=self.emulator.host,
            bucket=BUCKET,
            api_port=api_port,
            key=self.key,
            other_keys=overlay.existing_keys(self.kubectl),
            free_ports=self.args.api_port == 0,
        )
        self.docs, self.deployed = docs, True
        deploy.apply(docs, self.kubectl, log=lambda m: say("    " + m.replace("\n", "\n    ")))
        deploy.wait_rollout(docs, self.kubectl, timeout=self.args.rollout_timeout, log=lambda m: say("    " + m))
        say(self.kubectl("-n", NAMESPACE, "get", "deploy,pods", "-o", "wide").stdout.rstrip())
        deadline = time.monotonic() + 120
        while not self._api_ready():
            if time.monotonic() > deadline:
                raise DemoError(f"the API did not become ready on {self.api}/readyz:\n{self.explain(API_DEPLOYMENT)}")
            time.sleep(0.5)
        say(f"    API ready on {self.api} (demo key created: only its sha256 is in Secret {NAMESPACE}/{KEYS_SECRET})")

    def _api_ready(self) -> bool:
        try:
            return http("GET", f"{self.api}/readyz", timeout=3)[0] == 200
        except OSError:
            return False

    # 4
    def webhook(self) -> None:
        self.step("POST /trigger-finetune (the seed webhook) with hack/demo-data/preferences.json")
        rows = json.loads((DATA / "preferences.json").read_text())
        say(
            f"    curl -X POST {self.api}/trigger-finetune -H 'Authorization: Bearer $KEY' \\\n"
            f'         -d \'{{"communityId": "{COMMUNITY}", "dataset": [{len(rows)} preference pairs]}}\''
        )
        # Taken before the job exists, so the watch (step 5) sees every update.
        listing = self.custom_objects().list_namespaced_custom_object(GROUP, VERSION, JOB_NAMESPACE, PLURAL)
        self.watch_rv = listing["metadata"]["resourceVersion"]
        code, resp = http("POST", f"{self.api}/trigger-finetune", {"communityId": COMMUNITY, "dataset": rows}, self.key)
        say(f"    -> {code} {json.dumps(resp)}")
        if code not in (200, 201, 202) or not isinstance(resp, dict) or "jobName" not in resp:
            raise DemoError(f"webhook answered {code}: {resp}")
        self.job = resp["jobName"]
        self.job_ns = resp.get("namespace", JOB_NAMESPACE)
        self.spec = self.ftj()["spec"]
        hp, res = self.spec.get("hyperparameters", {}), self.spec.get("resources", {})
        say(
            f"    FineTuneJob {self.job_ns}/{self.job}: model {self.spec['model']['name']} (preset "
            f"{self.spec['model'].get('preset')}), {self.spec.get('method', {}).get('type')}, epochs {hp.get('epochs')}, "
            f"batch {hp.get('batchSize')}, {res.get('nodes')} node(s) x {res.get('processesPerNode') or 1} process(es)"
        )

    def ftj(self) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(
            self.kubectl("-n", self.job_ns, "get", PLURAL, self.job or "", "-o", "json").stdout
        )
        return obj

    def custom_objects(self) -> Any:
        from kubernetes import client, config

        return client.CustomObjectsApi(config.new_client_from_config(config_file=self.kubeconfig))

    # 5
    def watch(self) -> None:
        self.step(f"Watch the FineTuneJob (what `kubectl -n {self.job_ns} get ftj -w` shows)")
        assert self.job
        co = self.custom_objects()
        self.seen = watch_job(co, self.job_ns, self.job, self.watch_rv, timeout=self.args.timeout, t0=self.t0, say=say)
        if self.seen.phase not in TERMINAL:
            raise DemoError(
                f"the job did not finish in {self.args.timeout}s (phase {self.seen.phase})\n{self.diagnose()}"
            )
        say("")
        for line in self.kubectl("-n", self.job_ns, "get", "ftj", self.job, "-o", "wide").stdout.rstrip().splitlines():
            say("    " + line)
        st = self.seen.status
        if self.seen.phase != "Succeeded":
            raise DemoError(
                f"the job ended {self.seen.phase}: {st.get('reason')}: {st.get('message')}\n{self.diagnose()}"
            )
        if not (st.get("artifact") or {}).get("uri"):
            raise DemoError("the job succeeded without status.artifact.uri")

    @property
    def artifact(self) -> str:
        return str((self.seen.status.get("artifact") or {}).get("uri") or "none")

    # 6
    def download(self) -> Path:
        assert self.emulator is not None
        self.step(f"Download {self.artifact} from the bucket and check it against manifest.json")
        dest = self.workdir / "model"
        files, _ = download_verified(self.emulator, self.artifact, dest)
        total = sum(p.stat().st_size for p in files)
        say(
            f"    {len(files)} files, {total / 1e6:.1f} MB, every sha256 matches the manifest: "
            + ", ".join(sorted(p.name for p in files))
        )
        return dest

    # 7
    def evaluate(self, model_dir: Path) -> None:
        self.step("Load it with transformers and compare the chosen-minus-rejected log-prob margin on held-out pairs")
        pairs = json.loads((DATA / "heldout.json").read_text())
        before, after = evaluate(model_dir, pairs, self.spec.get("hyperparameters") or {})
        self.evaluation = (before, after)
        say(
            f"    {len(pairs)} held-out pairs (not in the training data), e.g. {pairs[0]['prompt']!r}: "
            f"chosen {pairs[0]['chosen']!r} vs rejected {pairs[0]['rejected']!r}"
        )
        say(
            f"    before training: mean margin {before.mean_margin:+.3f} nats, chosen preferred in {before.chosen_share:.0%}"
        )
        say(
            f"    after training:  mean margin {after.mean_margin:+.3f} nats, chosen preferred in {after.chosen_share:.0%}"
        )
        if not after.mean_margin > before.mean_margin:
            raise DemoError("training did not increase the held-out preference margin")

    # 8
    def summary(self) -> None:
        self.step("Summary")
        created = self.ftj()["metadata"]["creationTimestamp"]
        for line in summary(f"{self.job_ns}/{self.job}", created, self.seen, self.evaluation):
            say("    " + line)

    def explain(self, deployment: str) -> str:
        """The state and logs of a demo Deployment's pods that are not Ready."""
        return deploy.explain_deployment(self.kubectl, NAMESPACE, deployment) if self.k else ""

    def diagnose(self) -> str:
        """What explains a failure: the job's description and trainer logs, then the operator's and API's pods
        (their state and logs when not Ready, the operator's recent log otherwise)."""
        if not self.k:
            return ""
        out = []
        if self.job:
            out.append(self.kubectl("-n", self.job_ns, "describe", "ftj", self.job, check=False).stdout[-2500:])
            r = self.kubectl("-n", self.job_ns, "logs", "-l", f"{LABEL_JOB}={self.job}", "--tail=40", check=False)
            out.append("trainer logs:\n" + (r.stdout or r.stderr)[-3000:])
        if self.deployed:
            for name in (OPERATOR_DEPLOYMENT, API_DEPLOYMENT):
                out.append(f"{name} pods not Ready:\n{self.explain(name)}")
            r = self.kubectl("-n", NAMESPACE, "logs", f"deploy/{OPERATOR_DEPLOYMENT}", "--tail=30", check=False)
            out.append("operator logs:\n" + (r.stdout or r.stderr)[-3000:])
        return "\n".join(out)

    # cleanup
    def cleanup(self) -> None:
        say(f"\n==> Clean up  (+{time.monotonic() - self.t0:.0f}s)")
        emu = self.emulator
        if self.args.keep:
            say(f"    --keep: left running. export KUBECONFIG={self.kubeconfig}")
            say(f"      API  {self.api}   key (shown once): export FTAPI_KEY={self.key}")
            if emu and emu.proc:
                say(f"      GCS emulator {emu.host} (STORAGE_EMULATOR_HOST), pid {emu.proc.pid}")
            say(
                "      stop: kill <emulator pid>; python hack/deployctl.py delete --overlay local"
                + ("; bash localcluster/cluster.sh down" if self.started_cluster else "")
            )
            return
        if self.k and self.job:
            args = ["delete", "ftj", self.job, "--ignore-not-found", "--wait=true", "--timeout=60s"]
            self.kubectl("-n", self.job_ns, *args, check=False)
            say(
                f"    deleted FineTuneJob {self.job_ns}/{self.job} (its Job, pods, Service, RBAC and dataset go with it)"
            )
        if self.k and self.deployed and not self.started_cluster:
            # A cluster we did not start (a test session, a developer's): stop our operator and API pods but keep
            # the CRD, namespace and RBAC, which the same repo's fixtures share.
            workloads = [d for d in self.docs if d["kind"] in ("Deployment", "Service")]
            try:
                deploy.delete(workloads, self.kubectl, log=lambda m: None)
                overlay.remove_demo_key(self.kubectl)
                say(
                    "    removed the operator and API Deployments and the demo key (kept the CRD, namespace, RBAC, other keys)"
                )
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                say(f"    warning: {exc}")
        if emu:
            emu.close()
            say("    stopped the GCS emulator")
        if self.started_cluster:
            cluster.down()
            say("    stopped the local cluster this demo started (localcluster/cluster.sh down)")
        shutil.rmtree(self.workdir, ignore_errors=True)

    def run(self) -> int:
        ok = False
        try:
            self.cluster()
            self.storage()
            self.deploy()
            self.webhook()
            self.watch()
            self.evaluate(self.download())
            self.summary()
            ok = True
        except DemoError as exc:
            say(f"\n!! demo failed: {exc}")
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            say(f"\n!! demo failed: {type(exc).__name__}: {exc}")
            say(self.diagnose())
        except KeyboardInterrupt:
            say("\n!! interrupted")
        except Exception as exc:  # anything unexpected still gets the cleanup and the result line
            say(f"\n!! demo failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            say(self.diagnose())
        finally:
            try:
                self.cleanup()
            except Exception as exc:  # cleanup must never hide the result line
                say(f"    cleanup warning: {type(exc).__name__}: {exc}")
                ok = False
        phase = self.seen.phase if self.job else "NotCreated"
        say(f"job={self.job or 'none'} phase={phase} artifact={self.artifact}")
        return 0 if ok else 1
