"""Chaos benchmark: N FineTuneJobs on the local cluster while a seeded schedule of faults hits it (issue 12).

    python bench/chaos.py --seed 1 [--jobs 30] [--tiny 2] [--record]

The cluster is localcluster/cluster.sh's (FTO_STATE_DIR / FTO_APISERVER_PORT select it; started when not running).
Jobs run the fake trainer (tests/operator/fake_trainer.py: progress reported with the pod's own token, then a small
export uploaded and verified by the trainer's upload code into a GCS emulator, the artifact in the termination
message), the first ``--tiny`` of them the real tiny CPU trainer. Faults, at seeded times between 5 s and 75 s
(tests/chaos/schedule.py): the operator SIGKILLed and started again, the kube-apiserver restarted, running trainer
pods deleted, live Jobs deleted, the process node restarted.

The last stdout line is one JSON object: ``submitted``, ``terminal`` (count by phase), ``stuck`` (not finished at the
deadline), ``duplicates`` (two live pods of one rank at once, or more Jobs than restarts and deletions explain),
``unverified`` (Succeeded without the artifact the bucket holds: manifest sha256 and every file checked),
``orphans`` (objects labelled for a job without a live owner, trainer processes without a running pod, after the
run), ``wall_s``, and the detail of each, the faults made and the load average. Targets: stuck, duplicates,
unverified and orphans all 0. ``--record`` writes it to bench/results/chaos-seed-<N>.json and regenerates the table
in docs/benchmarks.md (section "Chaos") from every recorded seed.
"""

# ruff: noqa: E402  (the repo's packages are put on sys.path before they are imported)
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in ("crds", "operator", "api", "trainer_image", "localcluster", ""):
    sys.path.insert(0, str(ROOT / p))

from bench.docs_section import write_section
from tests.chaos.run import Options, run
from tests.chaos.schedule import BENCH_FAULTS, KINDS

RESULTS = ROOT / "bench" / "results"
TARGETS = ("stuck", "duplicates", "unverified", "orphans")


def recorded() -> list[dict[str, Any]]:
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("chaos-seed-*.json"))]
    return sorted(runs, key=lambda r: r["seed"])


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| seed | jobs (tiny) | terminal | stuck | duplicates | unverified | orphans | faults made | restarts | Jobs "
        "created | wall (s) | load (1 min) | date |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        made: dict[str, int] = {}
        for f in r["faults"]:
            if f.get("target") and not f.get("error"):
                made[f["kind"]] = made.get(f["kind"], 0) + 1
        faults = ", ".join(f"{made.get(k, 0)} {k}" for k in KINDS)
        terminal = ", ".join(f"{v} {k}" for k, v in r["terminal"].items())
        lines.append(
            f"| {r['seed']} | {r['submitted']} ({r.get('tiny', 0)}) | {terminal} | {r['stuck']} | {r['duplicates']} | "
            f"{r['unverified']} | {r['orphans']} | {faults} | {r['restarts']} | {r['jobs_created']} | {r['wall_s']} | "
            f"{r['loadavg_1m']} | {r.get('date', '')} |"
        )
    return "\n".join(lines)


def write_docs(runs: list[dict[str, Any]]) -> None:
    write_section("chaos", table(runs), heading="Chaos")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--jobs", type=int, default=30)
    ap.add_argument("--tiny", type=int, default=2, help="how many of the jobs run the real tiny CPU trainer")
    for kind in KINDS:
        ap.add_argument(f"--{kind}-faults", type=int, default=BENCH_FAULTS[kind], metavar="N")
    ap.add_argument("--deadline", type=float, default=900.0, help="seconds by which every job must have finished")
    ap.add_argument("--keep", action="store_true", help="keep the namespace")
    ap.add_argument("--record", action="store_true", help="write bench/results/chaos-seed-N.json and the docs table")
    args = ap.parse_args()
    options = Options(
        seed=args.seed,
        jobs=args.jobs,
        tiny=args.tiny,
        faults={kind: getattr(args, f"{kind}_faults") for kind in KINDS},
        deadline=args.deadline,
        keep=args.keep,
    )
    env = {
        "FTO_STATE_DIR": os.environ.get("FTO_STATE_DIR", "/tmp/finetune-operator-cluster"),
        "FTO_APISERVER_PORT": os.environ.get("FTO_APISERVER_PORT", "16443"),
    }
    result = run(options, env, Path(tempfile.mkdtemp(prefix="chaos-")))
    result.update(tiny=args.tiny, date=time.strftime("%Y-%m-%d", time.gmtime()))
    result["targets_met"] = all(result[k] == 0 for k in TARGETS)
    print(json.dumps(result["detail"], indent=1), file=sys.stderr)
    if args.record:
        RESULTS.mkdir(parents=True, exist_ok=True)
        kept = {k: v for k, v in result.items() if k != "operator_log"}  # a temporary file of this machine
        (RESULTS / f"chaos-seed-{args.seed}.json").write_text(json.dumps(kept, indent=1) + "\n")
        write_docs(recorded())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
