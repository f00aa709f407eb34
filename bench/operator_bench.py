"""Operator benchmark: N FineTuneJobs submitted at once, operator vs. a direct-API floor.

    python bench/operator_bench.py [--jobs 200] [--concurrency 32] [--no-docs]

Uses the local control plane (localcluster/cluster.sh; FTO_STATE_DIR / FTO_APISERVER_PORT select it, started if
not running) with the process node. Pods run tests/operator/fake_trainer.py (exit at once with a verified-upload
termination message), so the figures are the control path, not training.

Two runs in fresh namespaces, measured the same way (client-side clocks, one watch on Jobs and one on
Pods per run):

* floor: no operator. For each job the script creates the FineTuneJob and then, itself, the same objects
  the operator would, rendered by ftoperator.builders, in the same order: the namespace's trainer identity
  (ServiceAccount, Role, RoleBinding; created once, by the first job), then the job's children (the Job;
  one-node jobs need no Service), all jobs concurrently over one connection pool.
* operator: ``python -m ftoperator`` (the tests' fixture: its own RBAC-bound token) and the script only
  creates the FineTuneJobs.

Reported per run: FineTuneJob created → Job created (p50/p99), → first pod Running (p50/p99), Jobs
created per second (N / time from the first FineTuneJob to the last Job), and for the operator the time
until every FineTuneJob reached Succeeded and its peak RSS (VmHWM). The last stdout line is one JSON object;
the table goes into docs/benchmarks.md between the operator markers (other sections are left alone).
"""

# ruff: noqa: E402  (the repo's packages are put on sys.path before they are imported)
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in ("crds", "operator", "api", "trainer_image", "localcluster", ""):
    sys.path.insert(0, str(ROOT / p))

from ftcrd.names import ANN_ENTRYPOINT, API_VERSION, GROUP, KIND, LABEL_JOB, PLURAL, VERSION
from ftdev import cluster as localcluster
from ftoperator import builders
from ftoperator.settings import Settings
from kubernetes_asyncio import client, config

from bench.docs_section import write_section
from tests.support.cluster import Cluster, state_dir
from tests.support.operator_process import OperatorProcess, install_crd_and_rbac

FAKE = f"{sys.executable} {ROOT / 'tests' / 'operator' / 'fake_trainer.py'}"


def ftj_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "annotations": {ANN_ENTRYPOINT: FAKE}},
        "spec": {
            "communityId": "bench",
            "model": {"name": "tiny", "preset": "tiny"},
            "dataset": {"configMap": {"name": "bench-dataset", "key": "dataset.json"}},
            "resources": {"nodes": 1, "gpusPerNode": 0, "processesPerNode": 1, "shmSize": "64Mi"},
            "output": {"bucket": "bench"},
            "runPolicy": {"backoffLimit": 0},
        },
    }


def rss_mb(op: OperatorProcess, field: str) -> float:
    assert op.proc is not None
    status = Path(f"/proc/{op.proc.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith(f"{field}:"))
    return round(int(line.split()[1]) / 1024, 1)


def cpu_s(op: OperatorProcess) -> float:
    assert op.proc is not None
    fields = Path(f"/proc/{op.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * (len(s) - 1))))
    return s[k]


class Recorder:
    """Watches Jobs and Pods of one namespace; first time each job's Job was seen, its first pod Running."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api, self.ns = api, namespace
        self.job_seen: dict[str, float] = {}
        self.pod_running: dict[str, float] = {}
        self.tasks: list[asyncio.Task[None]] = []

    async def _watch(self, kind: str) -> None:
        # Raw JSON lines, not kubernetes_asyncio's model objects: deserialising every pod event into a V1Pod
        # cost the measuring process more CPU than the operator spends, on the 2 CPUs being measured.
        core, batch = client.CoreV1Api(self.api), client.BatchV1Api(self.api)
        fn = batch.list_namespaced_job if kind == "jobs" else core.list_namespaced_pod
        while True:
            try:
                resp = await fn(
                    self.ns, label_selector=LABEL_JOB, watch=True, timeout_seconds=600, _preload_content=False
                )
                async with resp:
                    async for line in resp.content:
                        obj = json.loads(line)["object"]
                        now = time.monotonic()
                        label = ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_JOB)
                        if not label:
                            continue
                        if kind == "jobs":
                            self.job_seen.setdefault(label, now)
                        elif (obj.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed"):
                            self.pod_running.setdefault(label, now)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                print(f"watch {kind}: {exc}", file=sys.stderr)
                await asyncio.sleep(0.2)

    async def start(self) -> None:
        self.tasks = [asyncio.create_task(self._watch("jobs")), asyncio.create_task(self._watch("pods"))]
        await asyncio.sleep(1.0)  # watches established before the first submission

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def wait_until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.2)


async def make_namespace(api: client.ApiClient, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    await core.create_namespace({"metadata": {"name": name}})
    for _ in range(100):
        sas = await core.list_namespaced_service_account(name)
        if any(sa.metadata.name == "default" for sa in sas.items):
            break
        await asyncio.sleep(0.1)
    await core.create_namespaced_config_map(
        name, {"metadata": {"name": "bench-dataset"}, "data": {"dataset.json": "[]"}}
    )
    return name


async def created(resp: Any) -> dict[str, Any]:
    """The body of a create sent with ``_preload_content=False`` (no model objects built: see Recorder)."""
    async with resp:
        text = await resp.text()
        if resp.status >= 300:
            raise RuntimeError(f"create failed: {resp.status} {text[:300]}")
        return dict(json.loads(text))


async def create_ftj(api: client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    co = client.CustomObjectsApi(api)
    return await created(
        await co.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, ftj_body(name), _preload_content=False)
    )


async def create_directly(api: client.ApiClient, obj: dict[str, Any]) -> None:
    core, rbac, batch = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api), client.BatchV1Api(api)
    create = {
        "ServiceAccount": core.create_namespaced_service_account,
        "Service": core.create_namespaced_service,
        "Role": rbac.create_namespaced_role,
        "RoleBinding": rbac.create_namespaced_role_binding,
        "Job": batch.create_namespaced_job,
    }[obj["kind"]]
    await created(await create(obj["metadata"]["namespace"], obj, _preload_content=False))


async def create_identity_directly(api: client.ApiClient, namespace: str) -> None:
    sa, role, binding = builders.render_trainer_identity(namespace)
    await asyncio.gather(create_directly(api, sa), create_directly(api, role))
    await create_directly(api, binding)


async def create_children_directly(
    api: client.ApiClient, ftj: dict[str, Any], settings: Settings, identity: asyncio.Future[None]
) -> None:
    """What the operator does for one job, in the same order: the namespace's trainer identity (one creation
    shared by every job of the burst), then the job's children in one round trip."""
    model = builders.parse(ftj)
    await asyncio.shield(identity)
    await asyncio.gather(*(create_directly(api, o) for o in builders.render_children(model, settings)))


async def run(
    api: client.ApiClient, n: int, mode: str, settings: Settings, op: OperatorProcess | None
) -> dict[str, Any]:
    ns = await make_namespace(api, f"bench-{mode}")
    rec = Recorder(api, ns)
    await rec.start()
    created: dict[str, float] = {}
    names = [f"j{i:04d}" for i in range(n)]
    identity: asyncio.Future[None] | None = None

    async def submit(name: str) -> None:
        nonlocal identity
        ftj = await create_ftj(api, ns, name)
        created[name] = time.monotonic()
        if mode == "floor":
            if identity is None:  # the first job of the burst creates it, as in the operator
                identity = asyncio.ensure_future(create_identity_directly(api, ns))
            await create_children_directly(api, ftj, settings, identity)

    rss_idle = rss_mb(op, "VmRSS") if op is not None else None
    cpu0 = cpu_s(op) if op is not None else 0.0
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    await asyncio.gather(*(submit(name) for name in names))
    submitted = time.monotonic() - t0
    await wait_until(lambda: len(rec.job_seen) >= n, 600, f"{mode}: all Jobs")
    all_jobs = max(rec.job_seen.values()) - t0
    await wait_until(lambda: len(rec.pod_running) >= n, 900, f"{mode}: all pods running")
    out: dict[str, Any] = {"namespace": ns, "jobs": n, "submit_s": round(submitted, 3), "loadavg_1m": round(load, 1)}
    to_job = [rec.job_seen[k] - created[k] for k in names]
    to_pod = [rec.pod_running[k] - created[k] for k in names]
    out.update(
        create_to_job_p50_s=round(statistics.median(to_job), 3),
        create_to_job_p99_s=round(pct(to_job, 99), 3),
        create_to_pod_running_p50_s=round(statistics.median(to_pod), 3),
        create_to_pod_running_p99_s=round(pct(to_pod, 99), 3),
        jobs_per_s=round(n / all_jobs, 1),
    )
    if mode == "operator":
        co = client.CustomObjectsApi(api)

        async def finished() -> int:
            items = (await co.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL))["items"]
            return sum(1 for i in items if (i.get("status") or {}).get("phase") in ("Succeeded", "Failed"))

        deadline = time.monotonic() + 900
        while (done := await finished()) < n and time.monotonic() < deadline:
            await asyncio.sleep(1)
        out["all_finished_s"] = round(time.monotonic() - t0, 1)
        out["finished"] = done
        out["finished_per_s"] = round(done / (time.monotonic() - t0), 2)
        assert op is not None and op.proc is not None
        out["operator_rss_before_mb"] = rss_idle
        out["operator_cpu_s"] = round(cpu_s(op) - cpu0, 1)
        out["operator_peak_rss_mb"] = rss_mb(op, "VmHWM")
        metrics = op.metrics()

        def metric(prefix: str) -> float:
            return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(prefix))

        count = metric('finetune_operator_reconcile_duration_seconds_count{handler="create-workload"}')
        total = metric('finetune_operator_reconcile_duration_seconds_sum{handler="create-workload"}')
        out["create_handler_avg_s"] = round(total / count, 3) if count else None
        out["operator_errors"] = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("finetune_operator_errors_total{")
        )
    await rec.stop()
    return out


def table(floor: dict[str, Any], oper: dict[str, Any], result: dict[str, Any]) -> str:
    rows = [
        ("FineTuneJob → Job p50 (s)", "create_to_job_p50_s"),
        ("FineTuneJob → Job p99 (s)", "create_to_job_p99_s"),
        ("FineTuneJob → pod Running p50 (s)", "create_to_pod_running_p50_s"),
        ("FineTuneJob → pod Running p99 (s)", "create_to_pod_running_p99_s"),
        ("Jobs created per second", "jobs_per_s"),
    ]
    lines = ["| metric | floor (direct API) | operator | operator / floor |", "|---|---|---|---|"]
    for label, key in rows:
        f, o = floor[key], oper[key]
        ratio = (o / f) if f else float("nan")
        lines.append(f"| {label} | {f} | {o} | {ratio:.2f}× |")
    lines.append(f"| all {oper['jobs']} FineTuneJobs Succeeded after (s) | – | {oper['all_finished_s']} | |")
    lines.append(f"| operator CPU for the whole run (s) | – | {oper['operator_cpu_s']} | |")
    lines.append(f"| machine load average (1 min) at start | {floor['loadavg_1m']} | {oper['loadavg_1m']} | |")
    lines.append(f"| operator RSS before the burst (MB) | – | {oper['operator_rss_before_mb']} | |")
    lines.append(f"| operator peak RSS (MB) | – | {oper['operator_peak_rss_mb']} | |")
    lines.append(f"| operator reconcile errors | – | {int(oper['operator_errors'])} | |")
    targets = result["targets"]
    lines.append("")
    lines.append(
        "Targets: p99 FineTuneJob → Job < 1 s: "
        + ("met" if targets["p99_create_to_job_under_1s"] else "**missed**")
        + "; overhead within 2× of the floor (p99 → Job): "
        + ("met" if targets["overhead_within_2x"] else "**missed**")
        + "; RSS < 150 MB: "
        + ("met" if targets["rss_under_150mb"] else "**missed**")
        + "."
    )
    return "\n".join(lines)


def write_docs(text: str, args: argparse.Namespace) -> None:
    # The heading sits inside the markers here (this section was written so first).
    body = "\n".join(
        [
            "## Operator",
            "",
            f"`python bench/operator_bench.py --jobs {args.jobs}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{os.cpu_count()} CPUs shared with the control plane and the process node). {args.jobs} FineTuneJobs "
            "submitted at once whose pods exit immediately (tests/operator/fake_trainer.py); the floor creates the same "
            "child objects directly through the API with the same client, concurrency and clocks.",
            "",
            text,
        ]
    )
    write_section("operator", body)


async def drain_bench_namespaces(api: client.ApiClient, timeout: float = 600) -> None:
    """Delete every bench-* namespace and wait until they are gone."""
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while True:
        left = [ns.metadata.name for ns in (await core.list_namespace()).items if ns.metadata.name.startswith("bench-")]
        if not left:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"namespaces still terminating: {left}")
        for name in left:
            with contextlib.suppress(client.ApiException):
                await core.delete_namespace(name)
        await asyncio.sleep(1)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    kubeconfig = state_dir() / "admin.kubeconfig" if localcluster.healthy() else localcluster.up()
    cluster = Cluster(kubeconfig=kubeconfig, state_dir=state_dir(), env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    install_crd_and_rbac(cluster)
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    cfg.connection_pool_maxsize = args.concurrency
    settings = Settings(allow_entrypoint_annotation=True, trainer_image="bench:fake")
    workdir = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    op = OperatorProcess(
        cluster,
        workdir,
        env={
            "FTO_API_CONNECTIONS": str(args.concurrency),
            "FTO_LOG_FORMAT": "json",
            **dict(kv.split("=", 1) for kv in args.operator_env),
        },
    )
    if args.profile:
        op.command = [sys.executable, "-m", "cProfile", "-o", args.profile, "-m", "ftoperator"]
    namespaces: list[str] = []
    async with client.ApiClient(cfg) as api:
        try:
            # A previous run's namespaces are still being garbage-collected (hundreds of pods and Jobs): that
            # would load the control plane during whichever run comes first.
            await drain_bench_namespaces(api)
            floor = await run(api, args.jobs, "floor", settings, None)
            namespaces.append(floor["namespace"])
            print("floor:", json.dumps(floor), file=sys.stderr)
            # the operator must not spend its start adopting the floor's jobs
            namespaces.remove(floor["namespace"])
            await drain_bench_namespaces(api)
            op.start()
            await asyncio.sleep(3)  # past the start-up listing and resume handlers
            oper = await run(api, args.jobs, "operator", settings, op)
            namespaces.append(oper["namespace"])
            print("operator:", json.dumps(oper), file=sys.stderr)
        finally:
            op.stop()
            if not args.keep:
                core = client.CoreV1Api(api)
                for ns in namespaces:
                    with contextlib.suppress(Exception):
                        await core.delete_namespace(ns)
    ratio_p99 = oper["create_to_job_p99_s"] / floor["create_to_job_p99_s"]
    result = {
        "jobs": args.jobs,
        "floor": {k: v for k, v in floor.items() if k != "namespace"},
        "operator": {k: v for k, v in oper.items() if k != "namespace"},
        "ratios": {
            "create_to_job_p50": round(oper["create_to_job_p50_s"] / floor["create_to_job_p50_s"], 2),
            "create_to_job_p99": round(ratio_p99, 2),
            "create_to_pod_running_p99": round(
                oper["create_to_pod_running_p99_s"] / floor["create_to_pod_running_p99_s"], 2
            ),
            "jobs_per_s": round(oper["jobs_per_s"] / floor["jobs_per_s"], 2),
        },
        "targets": {
            "p99_create_to_job_under_1s": oper["create_to_job_p99_s"] < 1.0,
            "overhead_within_2x": ratio_p99 <= 2.0,
            "rss_under_150mb": oper["operator_peak_rss_mb"] < 150,
        },
        "operator_log": str(op.log_path),
    }
    text = table(floor, oper, result)
    print(text, file=sys.stderr)
    if not args.no_docs:
        write_docs(text, args)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=64, help="HTTP connections of the client and the operator")
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--keep", action="store_true", help="keep the benchmark namespaces")
    ap.add_argument("--profile", metavar="FILE", help="run the operator under cProfile, stats to FILE")
    ap.add_argument("--operator-env", action="append", default=[], metavar="FTO_X=V", help="extra operator setting")
    args = ap.parse_args()
    result = asyncio.run(amain(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
