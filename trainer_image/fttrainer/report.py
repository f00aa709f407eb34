"""Trainer → operator reporting: live progress in the FineTuneJob's status, and the termination message.

:class:`Reporter` merge-patches ``/apis/finetune.dev/v1alpha1/namespaces/$FTJ_NAMESPACE/finetunejobs/
$FTJ_NAME/status`` with ``{"status": {"progress": {...}, "metrics": {...}, "checkpoints": [...], "samples": {...}}}``
using the pod's ServiceAccount token: the namespace's trainer identity ``finetune-trainer``, whose Role
allows only ``patch`` on ``finetunejobs/status``, narrowed to the pod's own job by the admission policy
``finetune-trainer-own-job`` (docs/architecture.md, "Least privilege"). Only the standard library is
used. Calls from the training loop only record the latest state and return; a daemon thread sends it, at
most every ``FTJ_REPORT_INTERVAL`` seconds (default 5), at once on a stage change or a new checkpoint,
and a last time on :meth:`Reporter.close`. Network or API failures are logged (never the token) and
never raised. Metrics in the status are rounded (:func:`ftcrd.types.round_metric`).

:func:`write_termination` writes the :class:`ftcrd.termination.TerminationMessage` the operator reads
from the pod's termination message; once a success is written, nothing overwrites it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ftcrd import names
from ftcrd.termination import SUCCEEDED, TerminationMessage
from ftcrd.types import Stage, round_metric

log = logging.getLogger(__name__)

MAX_CHECKPOINTS = 10

# Trainer-side metric names (TRL / reference-implementation style) -> status.metrics field names.
_METRIC_ALIASES = {
    "rewards/chosen": "rewardsChosen",
    "rewards/rejected": "rewardsRejected",
    "rewards/accuracies": "rewardAccuracy",
    "rewards/accuracy": "rewardAccuracy",
    "rewards/margins": "rewardMargin",
    "logps/chosen": "logpsChosen",
    "logps/rejected": "logpsRejected",
    "reward_accuracies": "rewardAccuracy",
    "reward_margins": "rewardMargin",
    "rewards_chosen": "rewardsChosen",
    "rewards_rejected": "rewardsRejected",
    "lr": "learningRate",
    "grad_norm": "gradNorm",
    "eval_loss": "evalLoss",
    "eval/loss": "evalLoss",
    "eval_reward_accuracy": "evalRewardAccuracy",
    "eval/rewards/accuracies": "evalRewardAccuracy",
}


_COUNTS = frozenset({"tokens", "evalExamples"})  # metrics that are counts (integers in the status)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _camel(key: str) -> str:
    if key in _METRIC_ALIASES:
        return _METRIC_ALIASES[key]
    parts = [p for p in re.split(r"[/_\-.\s]+", key) if p]
    if not parts:
        return key
    return parts[0][:1].lower() + parts[0][1:] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def camel_metrics(metrics: dict[str, Any] | None) -> dict[str, float | int]:
    """Metric names as status.metrics spells them, full precision; non-finite and non-numeric values dropped
    (JSON has no NaN)."""
    out: dict[str, float | int] = {}
    for k, raw in (metrics or {}).items():
        v = raw
        if isinstance(v, bool):
            continue
        if hasattr(v, "item"):  # torch / numpy scalars
            try:
                v = v.item()
            except (ValueError, RuntimeError):
                continue
        if not isinstance(v, int | float) or not math.isfinite(v):
            continue
        name = _camel(str(k))
        out[name] = int(v) if name in _COUNTS else float(v)
    return out


def status_metrics(metrics: dict[str, Any] | None) -> dict[str, float | int]:
    """:func:`camel_metrics`, rounded for the status (``kubectl get ftj`` shows 0.1264, not 0.12643009051680565)."""
    return {k: v if isinstance(v, int) else round_metric(v) for k, v in camel_metrics(metrics).items()}


class Reporter:
    """Progress reporter. Only rank 0 inside a cluster talks to the API; everywhere else every method is a no-op."""

    def __init__(
        self,
        *,
        url: str | None = None,
        token_path: Path | None = None,
        token: str | None = None,
        ca_path: Path | None = None,
        interval: float = 5.0,
        timeout: float = 10.0,
    ) -> None:
        """``url``: the status subresource's full URL; None disables the reporter."""
        self.url = url
        self.enabled = url is not None
        self.interval = interval
        self.timeout = timeout
        self._token_path = token_path
        self._token = token
        self._ssl: ssl.SSLContext | None = None
        if self.enabled and url is not None and url.startswith("https://"):
            self._ssl = ssl.create_default_context(cafile=str(ca_path) if ca_path else None)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._progress: dict[str, Any] = {}
        self._metrics: dict[str, float | int] = {}
        self._checkpoints: list[dict[str, Any]] = []
        self._samples: dict[str, Any] | None = None
        self._dirty = False
        self._urgent = False
        self._closed = False
        self._last_sent = 0.0
        self._stage: str | None = None
        self._started = time.monotonic()
        self._first_step: tuple[float, int] | None = None  # (time, step) of the first training progress
        self.sent = 0
        self.failures = 0
        self._thread: threading.Thread | None = None
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="ftj-reporter", daemon=True)
            self._thread.start()

    @classmethod
    def from_env(cls, rank: int) -> Reporter:
        """Enabled on rank 0 when FTJ_NAME/FTJ_NAMESPACE, KUBERNETES_SERVICE_HOST/PORT and the SA token exist."""
        interval = float(os.environ.get(names.ENV_REPORT_INTERVAL, "5") or 5)
        if rank != 0:
            return cls(interval=interval)
        name, ns = os.environ.get(names.ENV_JOB_NAME), os.environ.get(names.ENV_JOB_NAMESPACE)
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        sa_dir = Path(os.environ.get(names.ENV_SERVICE_ACCOUNT_DIR, names.SERVICE_ACCOUNT_DIR))
        token, ca = sa_dir / "token", sa_dir / "ca.crt"
        if not (name and ns and host and token.is_file()):
            log.info("progress reporting disabled (not in a cluster, or FTJ_NAME/FTJ_NAMESPACE unset)")
            return cls(interval=interval)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        url = f"https://{host}:{port}/apis/{names.API_VERSION}/namespaces/{ns}/{names.PLURAL}/{name}/status"
        log.info("reporting progress to %s/%s every %.0fs", ns, name, interval)
        return cls(url=url, token_path=token, ca_path=ca if ca.is_file() else None, interval=interval)

    # -- called from the training loop (never blocks on the network) -------------------------------

    def progress(
        self,
        *,
        step: int,
        total_steps: int,
        epoch: float,
        examples: int,
        stage: Stage,
        metrics: dict[str, float],
        resumed_from: int | None = None,
    ) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        percent = 100.0 * step / total_steps if total_steps > 0 else 0.0
        percent = max(0.0, min(100.0, percent))
        eta: int | None = None
        if stage == "training":
            if self._first_step is None or step < self._first_step[1]:
                self._first_step = (now, step)
            t0, s0 = self._first_step
            if step > s0 and total_steps > step:
                eta = round((now - t0) / (step - s0) * (total_steps - step))
            elif total_steps > 0 and step >= total_steps:
                eta = 0
        progress = {
            "step": int(step),
            "totalSteps": int(total_steps),
            "epoch": round(float(epoch), 4),
            "percent": round(percent, 1),
            "examples": int(examples),
            "summary": f"{percent:.0f}% ({step}/{total_steps})",
            "stage": stage,
            "updatedAt": _now(),
        }
        if eta is not None:
            progress["etaSeconds"] = eta
        if resumed_from is not None:
            progress["resumedFrom"] = int(resumed_from)
        with self._lock:
            self._progress = progress
            self._metrics.update(status_metrics(metrics))
            self._dirty = True
            if stage != self._stage:
                self._stage = stage
                self._urgent = True
            # Always wake the sender: it sends now if due, else sleeps until the interval is up (trailing send).
            self._wake.notify()

    def checkpoint(self, step: int, path: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        rec: dict[str, Any] = {"step": int(step), "path": str(path), "createdAt": _now()}
        m = status_metrics(metrics)
        if m:
            rec["metrics"] = m
        with self._lock:
            self._checkpoints = [c for c in self._checkpoints if c["step"] != rec["step"]]
            self._checkpoints.append(rec)
            self._checkpoints = self._checkpoints[-MAX_CHECKPOINTS:]
            self._dirty = self._urgent = True
            self._wake.notify()

    def checkpoints(self, records: list[dict[str, Any]]) -> None:
        """Replace the listed checkpoints with ``records`` (``step``, ``path``, ``createdAt``, ``metrics``):
        what the checkpoint storage holds now, after pruning, including an earlier attempt's checkpoints."""
        if not self.enabled:
            return
        listed = []
        for rec in records[-MAX_CHECKPOINTS:]:
            item: dict[str, Any] = {"step": int(rec["step"]), "path": str(rec["path"])}
            if rec.get("createdAt"):
                item["createdAt"] = rec["createdAt"]
            m = status_metrics(rec.get("metrics") or {})
            if m:
                item["metrics"] = m
            listed.append(item)
        with self._lock:
            self._checkpoints = listed

    def samples(self, step: int, items: list[dict[str, Any]]) -> None:
        """The latest evaluation's completions (``status.samples``, already shortened: ftcrd.status.Sample)."""
        if not self.enabled:
            return
        with self._lock:
            self._samples = {"step": int(step), "items": items}
            self._dirty = self._urgent = True
            self._wake.notify()

    def close(self, timeout: float = 15.0) -> None:
        """Send whatever is pending (bounded by ``timeout``) and stop the thread."""
        if not self.enabled or self._thread is None:
            return
        with self._lock:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("progress reporter: final status patch still pending after %.0fs; giving up", timeout)

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- background thread ------------------------------------------------------------------------

    def _payload(self) -> dict[str, Any]:
        status: dict[str, Any] = {}
        if self._progress:
            status["progress"] = dict(self._progress)
        if self._metrics:
            status["metrics"] = dict(self._metrics)
        if self._checkpoints:
            status["checkpoints"] = [dict(c) for c in self._checkpoints]
        if self._samples is not None:
            status["samples"] = self._samples
        return {"status": status}

    def _run(self) -> None:
        while True:
            with self._lock:
                while True:
                    if self._dirty and (
                        self._urgent or self._closed or time.monotonic() - self._last_sent >= self.interval
                    ):
                        break
                    if self._closed:
                        return
                    wait = None
                    if self._dirty:
                        wait = max(0.0, self.interval - (time.monotonic() - self._last_sent))
                    self._wake.wait(wait)
                payload = self._payload()
                self._dirty = self._urgent = False
                self._last_sent = time.monotonic()
                closing = self._closed
            self._send(payload)
            if closing:
                with self._lock:
                    if not self._dirty:
                        return

    def _send(self, payload: dict[str, Any]) -> None:
        assert self.url is not None
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/merge-patch+json", "Accept": "application/json"}
        try:
            token = self._token
            if token is None and self._token_path is not None:
                token = self._token_path.read_text().strip()  # re-read: projected tokens rotate
            if token:
                headers["Authorization"] = f"Bearer {token}"
            req = urllib.request.Request(self.url, data=body, headers=headers, method="PATCH")
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:
                resp.read()
            self.sent += 1
            if self.failures:
                log.info("progress reporter: status patch works again")
                self.failures = 0
        except urllib.error.HTTPError as e:
            self._failed(f"HTTP {e.code} {e.reason}: {_body(e)}")
        except Exception as e:
            self._failed(f"{type(e).__name__}: {e}")

    def _failed(self, what: str) -> None:
        self.failures += 1
        # Log the first failure and then every 10th, so an unreachable API cannot flood the pod log.
        if self.failures == 1 or self.failures % 10 == 0:
            log.warning("progress reporter: status patch failed (%d in a row): %s", self.failures, what[:500])


def _body(e: urllib.error.HTTPError) -> str:
    try:
        data = e.read()[:300].decode(errors="replace")
    except Exception:
        return ""
    try:
        return str(json.loads(data).get("message", data))
    except Exception:
        return data


# -- termination message ---------------------------------------------------------------------------

_written: dict[str, bool] = {"success": False}  # this process's record: a success was written


def termination_path() -> Path | None:
    """``$TERMINATION_MESSAGE_PATH``, else the pod's termination log if it is writable, else None."""
    env = os.environ.get(names.ENV_TERMINATION_LOG)
    if env:
        return Path(env)
    path = Path(names.TERMINATION_LOG)
    return path if path.exists() and os.access(path, os.W_OK) else None


def write_termination(result: TerminationMessage) -> None:
    """Write ``result`` where the kubelet reads it. A success is final: once this process wrote one, a later
    failure (a peer dying during the teardown, say) is logged, never written over it."""
    if _written["success"]:
        log.warning("not overwriting the verified upload's termination message with: %s", result.wire())
        return
    path = termination_path()
    if path is None:
        log.info("no termination log (not in a pod); result: %s", json.dumps(result.wire(), default=str)[:1000])
        return
    try:
        path.write_bytes(result.encode())
    except OSError as e:
        log.warning("cannot write termination message to %s: %s", path, e)
        return
    _written["success"] = result.status == SUCCEEDED
