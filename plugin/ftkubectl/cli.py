"""``kubectl finetune <command>``: list, describe, logs, watch, cancel, suspend and resume FineTuneJobs.

kubectl runs ``kubectl-finetune`` with the arguments after ``finetune``; the global flags it would take itself
(``-n``, ``--context``, ``--kubeconfig``) are accepted here and handed back to kubectl for every call.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from ftcrd import names

from ftkubectl import render
from ftkubectl.kube import Kubectl, KubectlError, Obj

POLL_SECONDS = 1.0


def _rank0(pods: Sequence[Obj]) -> Obj | None:
    """The newest pod of completion index 0 (rank 0 of torchrun: the one that logs progress and uploads)."""

    def index(pod: Obj) -> str:
        md = pod.get("metadata") or {}
        return str(
            (md.get("annotations") or {}).get(
                names.ANN_COMPLETION_INDEX, (md.get("labels") or {}).get(names.ANN_COMPLETION_INDEX, "0")
            )
        )

    zero = [p for p in pods if index(p) == "0"]
    return max(zero, key=lambda p: str(p["metadata"].get("creationTimestamp") or ""), default=None)


def _started(pod: Obj) -> bool:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == names.CONTAINER and (
            "running" in (cs.get("state") or {}) or "terminated" in (cs.get("state") or {})
        ):
            return True
    return False


def cmd_list(k: Kubectl, args: argparse.Namespace, out: TextIO) -> int:
    jobs = sorted(
        k.jobs(args.all_namespaces), key=lambda j: (j["metadata"].get("namespace", ""), j["metadata"]["name"])
    )
    if not jobs:
        print("No FineTuneJobs found.", file=out)
        return 0
    print(render.job_table(jobs, args.all_namespaces), file=out)
    return 0


def cmd_describe(k: Kubectl, args: argparse.Namespace, out: TextIO) -> int:
    print(render.describe(k.job(args.name)), file=out)
    return 0


def cmd_watch(k: Kubectl, args: argparse.Namespace, out: TextIO) -> int:
    """A live line per job state: redrawn in place on a terminal, one line per change otherwise."""
    tty = out.isatty()
    last, final = "", None
    losses: list[float] = []
    for ftj in k.watch(args.name):
        loss = render.get(ftj, "status", "metrics", "loss")
        if isinstance(loss, (int, float)) and (not losses or losses[-1] != float(loss)):
            losses.append(float(loss))
        if not losses:
            losses = render.loss_history(ftj)
        line = render.status_line(ftj, losses[-40:])
        if line != last:
            out.write(f"\r\033[K{line}" if tty else f"{line}\n")
            out.flush()
            last = line
        if render.phase(ftj) in render.TERMINAL:
            final = ftj
            break
    if tty:
        out.write("\n")
    if final is None:
        return 1
    if render.phase(final) == "Failed":
        print(f"Failed ({render.get(final, 'status', 'reason')}): {render.get(final, 'status', 'message')}", file=out)
        return 1
    print(f"Artifact: {render.artifact(final)}", file=out)
    return 0


def cmd_logs(k: Kubectl, args: argparse.Namespace, out: TextIO) -> int:
    """Rank 0's trainer log; with -f, wait for the pod to start and follow it, and then its successors (a retry or
    a preemption starts a new pod) until the job ends."""
    followed: set[str] = set()
    while True:
        pod = _rank0(k.pods(args.name))
        uid = (pod or {}).get("metadata", {}).get("uid")
        if pod is not None and uid not in followed and (_started(pod) or not args.follow):
            if followed:
                print(f"--- {pod['metadata']['name']} (a new attempt) ---", file=out, flush=True)
            followed.add(str(uid))
            code = k.follow_logs(pod["metadata"]["name"], names.CONTAINER, args.follow)
            if not args.follow or code != 0:
                return code
        elif pod is None and not args.follow:
            print(f"{args.name}: no trainer pod yet (phase {render.phase(k.job(args.name))})", file=sys.stderr)
            return 1
        if render.phase(k.job(args.name)) in render.TERMINAL and (pod is None or uid in followed):
            return 0
        time.sleep(POLL_SECONDS)


def _action(k: Kubectl, name: str, verb: str) -> Obj:
    """The job, after refusing actions its state does not allow (the API answers 409 for the same cases)."""
    ftj = k.job(name)
    cancelled = ((ftj.get("metadata") or {}).get("annotations") or {}).get(names.ANN_CANCELLED) == "true"
    if render.phase(ftj) in render.TERMINAL:
        raise SystemExit(f"cannot {verb} {name}: it is {render.phase(ftj)}")
    if cancelled and verb != "cancel":
        raise SystemExit(f"cannot {verb} {name}: it was cancelled")
    return ftj


def _suspend_patch(suspend: bool) -> dict[str, Any]:
    return {"spec": {"runPolicy": {"suspend": suspend}}}


def cmd_cancel(k: Kubectl, args: argparse.Namespace, out: TextIO) -> int:
    """As the API's cancel: the cancelled annotation and spec.runPolicy.suspend (pods stop, the job stays)."""
    _action(k, args.name, "cancel")
    k.patch(args.name, {"metadata": {"annotations": {names.ANN_CANCELLED: "true"}}, **_suspend_patch(True)})
    print(f"finetunejob {args.name} cancelled", file=out)
    return 0


def cmd_suspend(k: Kubectl, args: argparse.Namespace, out: TextIO) -> int:
    _action(k, args.name, "suspend")
    k.patch(args.name, _suspend_patch(True))
    print(f"finetunejob {args.name} suspended", file=out)
    return 0


def cmd_resume(k: Kubectl, args: argparse.Namespace, out: TextIO) -> int:
    _action(k, args.name, "resume")
    k.patch(args.name, _suspend_patch(False))
    print(f"finetunejob {args.name} resumed", file=out)
    return 0


COMMANDS = {
    "list": (cmd_list, "list FineTuneJobs with phase, progress, loss and ETA"),
    "describe": (cmd_describe, "phase, conditions, progress bar, ETA, loss sparkline and artifact of one job"),
    "logs": (cmd_logs, "rank 0's trainer log (-f follows it, and the next attempt's)"),
    "watch": (cmd_watch, "a live progress line until the job ends (exit 0 on Succeeded)"),
    "cancel": (cmd_cancel, "cancel a job (as the API does: annotation + suspend)"),
    "suspend": (cmd_suspend, "suspend a job (spec.runPolicy.suspend=true; its pods stop)"),
    "resume": (cmd_resume, "resume a suspended job"),
}


def _global_flags(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("-n", "--namespace", default=default, help="namespace (default: the context's)")
    p.add_argument("--context", default=default, help="kubeconfig context")
    p.add_argument("--kubeconfig", default=default, help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubectl finetune", description="Follow and control FineTuneJobs.")
    _global_flags(p, None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        c = sub.add_parser(name, help=help_, description=help_)
        _global_flags(c, argparse.SUPPRESS)  # also after the command, as kubectl accepts them
        if name == "list":
            c.add_argument("-A", "--all-namespaces", action="store_true", help="jobs of every namespace")
        else:
            c.add_argument("name", help="the FineTuneJob's name")
        if name == "logs":
            c.add_argument("-f", "--follow", action="store_true", help="follow the log")
    return p


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parser().parse_args(argv)
    flags = [f"--{flag}={value}" for flag in ("namespace", "context", "kubeconfig") if (value := getattr(args, flag))]
    try:
        return COMMANDS[args.command][0](Kubectl(flags), args, out)
    except KubectlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
