"""Data-plane benchmark: preference JSONL of 10, 100 and 500 MB uploaded through the API, trained from, and loaded.

    python bench/dataplane.py [--sizes 10,100,500] [--no-docs]

Uses the local control plane (localcluster/cluster.sh; FTO_STATE_DIR / FTO_APISERVER_PORT select it, started if
not running), the GCS emulator (ftdev.gcs), the API as a subprocess with its own least-privilege ServiceAccount and
the operator (the tests' helpers). Per size, with a synthetic file (ftdev.synthetic: OpenAI DPO rows of ~2 KB):

* **upload**: ``client.files.create`` (the official openai client, streaming the file from disk) against a freshly
  started API; ``upload_mb_s`` = size / wall time of the request (validated row by row and stored in the bucket
  before it answers); ``api_peak_rss_mib`` = the API process's VmHWM afterwards; ``upload_mb_per_api_cpu_s`` = size
  / the CPU time the API spent on it (what a machine shared with other work cannot distort).
* **upload → Running**: ``fine_tuning.jobs.create`` on the file, then until the FineTuneJob's phase is Running
  (the trainer pod started; the job is deleted then). ``upload_to_running_s`` counts from the upload's start.
* **loader** (a fresh interpreter: ``--loader FILE``): the trainer's streaming validation pass
  (``fttrainer.datasource.read_dataset``; every size: ``validate_rows_s``, ``validate_peak_rss_mib``) and, for the
  sizes in ``--loader-sizes`` (default: all), the tokenization of every row into the token cache
  (``fttrainer.tokencache.load_examples``, one process; the tiny preset's tokenizer). ``loader_rows_s`` = rows /
  the time of both; ``loader_peak_rss_mib`` = the largest growth of the process's peak RSS over its RSS before
  each step (the peak is reset through /proc/self/clear_refs), to compare with ``tokenized_mib`` (tokens, masks
  and index).

The last stdout line is one JSON object (lists per size); the table goes into docs/benchmarks.md between the
data-plane markers. Each size's file is deleted after use (500 MB needs ~1.5 GB free in $TMPDIR).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in ("crds", "operator", "api", "trainer_image", "localcluster", ""):
    sys.path.insert(0, str(ROOT / p))

from bench.docs_section import write_section  # noqa: E402 (after the path set-up above)

MIB = 1024 * 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kib(field: str, pid: int | str = "self") -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(f"{field}:"))
    return int(line.split()[1])


# --------------------------------------------------------------------------------------------- the loader


def loader(path: Path, tokenize: bool) -> dict[str, Any]:
    """The trainer's loading of ``path`` in this process (see the module doc); its measurements. Without
    ``tokenize``, the validation pass only."""
    from ftcrd.trainer_config import TrainerConfig, TrainerDataset, TrainerModel, TrainerRun
    from ftcrd.types import HyperparametersSpec
    from fttrainer import tiny
    from fttrainer.datasource import read_dataset
    from fttrainer.parallel import init_distributed
    from fttrainer.tokencache import load_examples
    from transformers import AutoTokenizer

    work = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    hp = HyperparametersSpec.model_validate({"max_length": 1024, "max_prompt_length": 512})
    cfg = TrainerConfig(
        job="bench",
        model=TrainerModel(preset="tiny", name_or_path="tiny"),
        hyperparameters=hp,
        dataset=TrainerDataset(path=str(path), format="jsonl"),
        run=TrainerRun(run_dir=str(work / "run"), checkpoint_dir=str(work / "checkpoints")),
    )
    d = init_distributed()
    growth: list[int] = []

    def measured(step: Any) -> tuple[Any, float]:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        start_rss, t0 = status_kib("VmRSS"), time.perf_counter()
        out = step()
        seconds = time.perf_counter() - t0
        growth.append(status_kib("VmHWM") - start_rss)
        return out, seconds

    try:
        info, read_s = measured(lambda: read_dataset(cfg))
        out: dict[str, Any] = {
            "rows": info.counts.rows,
            "validate_s": round(read_s, 2),
            "validate_rows_s": round(info.counts.rows / read_s, 1),
            "validate_peak_growth_mib": round(growth[0] / 1024, 1),
        }
        if not tokenize:
            return out
        texts = [t for r in info.sample for t in (r.prompt_text(), r.chosen, r.rejected)]
        tokenizer = AutoTokenizer.from_pretrained(tiny.ensure(work / "tiny", texts, tiny.TinySpec()))
        examples, tokenize_s = measured(lambda: load_examples(info, tokenizer, hp, d, None))
        return {
            **out,
            "tokenize_s": round(tokenize_s, 2),
            "rows_s": round(info.counts.rows / (read_s + tokenize_s), 1),
            "peak_growth_mib": round(max(growth) / 1024, 1),
            "tokenized_mib": round(examples.nbytes / MIB, 1),
            "baseline_rss_mib": round(status_kib("VmRSS") / 1024, 1),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_loader(path: Path, tokenize: bool) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--loader", str(path), *([] if tokenize else ["--validate-only"])]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"loader failed:\n{p.stderr[-3000:]}")
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


# --------------------------------------------------------------------------------------------- the API


def upload_and_run(server: Any, path: Path, size: int) -> dict[str, Any]:
    from openai import OpenAI

    from tests.support.ftj import wait_phase

    server.restart()  # a fresh process: its peak RSS is this upload's
    ns = server.ns_a
    client = OpenAI(base_url=f"{server.url}/v1", api_key=server.key(ns), max_retries=0, timeout=3600)
    # warm up (a server in service has imported the storage client and loaded its keys): one row
    warm = b'{"prompt": "p", "chosen": "c", "rejected": "r"}\n'
    client.files.delete(client.files.create(file=("warm.jsonl", warm), purpose="fine-tune").id)
    t0, cpu0 = time.perf_counter(), cpu_seconds(server.proc.pid)
    with path.open("rb") as f:
        uploaded = client.files.create(file=(path.name, f), purpose="fine-tune")
    upload_s, cpu_s = time.perf_counter() - t0, cpu_seconds(server.proc.pid) - cpu0
    rss = status_kib("VmHWM", server.proc.pid)
    job = client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id, method={"type": "dpo"})
    wait_phase(server.cluster, ns, job.id, ("Running",), timeout=900)
    running_s = time.perf_counter() - t0
    server.cluster.kubectl("delete", "finetunejob", job.id, "-n", ns, "--wait=true", "--timeout=300s", check=False)
    client.files.delete(uploaded.id)
    return {
        "upload_s": round(upload_s, 2),
        "upload_mb_s": round(size / 1e6 / upload_s, 1),
        "upload_mb_per_api_cpu_s": round(size / 1e6 / cpu_s, 1),
        "api_peak_rss_mib": round(rss / 1024, 1),
        "upload_to_running_s": round(running_s, 1),
    }


def measure(sizes: list[int], loader_sizes: set[int]) -> dict[str, Any]:
    import yaml
    from ftdev import cluster as localcluster
    from ftdev.gcs import GcsEmulator
    from ftdev.synthetic import write_jsonl

    from tests.api.conftest import start_api
    from tests.support.cluster import Cluster, state_dir
    from tests.support.operator_process import OperatorProcess, install_crd_and_rbac

    spec = yaml.safe_load((ROOT / "crds" / "samples" / "tiny-cpu.yaml").read_text())["spec"]
    kubeconfig = state_dir() / "admin.kubeconfig" if localcluster.healthy() else localcluster.up()
    cluster = Cluster(kubeconfig=kubeconfig, state_dir=state_dir(), env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    install_crd_and_rbac(cluster)
    work = Path(tempfile.mkdtemp(prefix="bench-dataplane-"))
    rows: list[dict[str, Any]] = []
    with GcsEmulator() as gcs:
        env = {
            "FTAPI_HYPERPARAMETERS": json.dumps({**spec["hyperparameters"], "examples": 16}),
            "FTAPI_RESOURCES": json.dumps(spec["resources"]),
            "FTAPI_RUN_POLICY": json.dumps(spec["runPolicy"]),
            "FTAPI_OUTPUT_BUCKET": gcs.bucket,
            "FTAPI_TRAINER_ENV": json.dumps(gcs.env()),
            "FTAPI_NOTIFY_ENABLED": "false",
            "FTAPI_LOG_LEVEL": "warning",
        }
        servers = start_api(cluster, work, gcs=gcs, extra_env=env, tenants=1)
        server = next(servers)
        (work / "operator").mkdir()
        op = OperatorProcess(cluster, work / "operator").start()
        try:
            for size_mb in sizes:
                path = work / f"prefs-{size_mb}mb.jsonl"
                written = write_jsonl(path, size_mb * 1_000_000)
                row = {"size_mb": size_mb, "rows": written.rows, **upload_and_run(server, path, written.bytes)}
                loaded = run_loader(path, tokenize=size_mb in loader_sizes)
                row.update({f"loader_{k}": v for k, v in loaded.items()})
                path.unlink()
                print(json.dumps(row), file=sys.stderr)
                rows.append(row)
        finally:
            op.stop()
            servers.close()
            shutil.rmtree(work, ignore_errors=True)
    loaded = [r for r in rows if "loader_tokenized_mib" in r]
    return {
        "sizes_mb": [r["size_mb"] for r in rows],
        "upload_mb_s": [r["upload_mb_s"] for r in rows],
        "upload_mb_per_api_cpu_s": [r["upload_mb_per_api_cpu_s"] for r in rows],
        "api_peak_rss_mib": [r["api_peak_rss_mib"] for r in rows],
        "loader_peak_rss_mib": [r.get("loader_peak_growth_mib") for r in rows],
        "loader_rows_s": [r.get("loader_rows_s") for r in rows],
        "upload_to_running_s": [r["upload_to_running_s"] for r in rows],
        "tokenized_mib": [r.get("loader_tokenized_mib") for r in rows],
        "validate_rows_s": [r["loader_validate_rows_s"] for r in rows],
        "validate_peak_rss_mib": [r["loader_validate_peak_growth_mib"] for r in rows],
        "rows": [r["rows"] for r in rows],
        "details": rows,
        "targets": {
            "api_peak_rss_under_300_mib": all(r["api_peak_rss_mib"] < 300 for r in rows),
            "upload_at_least_50_mb_s": all(r["upload_mb_s"] >= 50 for r in rows),
            "loader_peak_under_2x_tokenized": all(
                r["loader_peak_growth_mib"] < 2 * r["loader_tokenized_mib"] for r in loaded
            ),
        },
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| file | rows | upload | per API CPU-second | API peak RSS | upload → Running | validation rows/s "
        "(peak growth) | loader rows/s | loader peak growth | tokenized |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["details"]:
        lines.append(
            f"| {r['size_mb']} MB | {r['rows']} | {r['upload_mb_s']} MB/s | {r['upload_mb_per_api_cpu_s']} MB | "
            f"{r['api_peak_rss_mib']} MiB | {r['upload_to_running_s']} s | {r['loader_validate_rows_s']} "
            f"({r['loader_validate_peak_growth_mib']} MiB) | {r.get('loader_rows_s', '-')} | "
            f"{r.get('loader_peak_growth_mib', '-')} MiB | {r.get('loader_tokenized_mib', '-')} MiB |"
        )
    return "\n".join(lines)


def write_docs(text: str, result: dict[str, Any]) -> None:
    load = os.getloadavg()[0]
    body = (
        f"_`python bench/dataplane.py` on {os.cpu_count()} CPUs (load average {load:.1f} at the end), "
        f"{time.strftime('%Y-%m-%d')}; targets: {json.dumps(result['targets'])}._\n\n{text}"
    )
    write_section("dataplane", body, heading="Data plane")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,100,500", help="file sizes in MB, comma-separated")
    ap.add_argument("--loader-sizes", help="sizes (MB) also tokenized by the loader; default: every size")
    ap.add_argument("--validate-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--loader", metavar="FILE", help=argparse.SUPPRESS)  # one loader measurement (a subprocess)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # as Ctrl-C: the clean-ups (API, operator, emulator) run
    if args.loader:
        print(json.dumps(loader(Path(args.loader), tokenize=not args.validate_only)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    chosen = args.loader_sizes
    loader_sizes = set(sizes) if chosen is None else {int(s) for s in chosen.split(",") if s.strip()}
    result = measure(sizes, loader_sizes)
    print(table(result), file=sys.stderr)
    if not args.no_docs:
        write_docs(table(result), result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
