"""Rank 0's record of a run: the per-step metrics file, the experiment trackers and the evaluation samples.

:class:`RunRecorder` is the training loop's :class:`~fttrainer.loop.StepObserver`. Per optimizer step it writes
the metrics file line (:mod:`fttrainer.metrics_file`) and hands the step's metrics (the names the status uses) to
the trackers; per evaluation with ``spec.tracking.sampleDuringEval`` it hands the completions
(:mod:`fttrainer.sampling`) to the trackers, to the log, and, shortened, to the status report
(``status.samples``, which the operator posts as an Event: the trainer's identity can only patch its job's status).

:class:`Tracking` runs the backends (:mod:`fttrainer.trackers`) on a daemon thread fed by a bounded queue, so a
slow or unreachable tracker never stalls a step. A backend that raises is logged once (URL credentials
redacted) and dropped for the rest of the run: **tracking never fails training**. ``close`` waits a bounded
time for the backends to finish.
"""

from __future__ import annotations

import logging
import math
import queue
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ftcrd.status import SAMPLE_TEXT_CHARS, Sample
from ftcrd.trainer_config import TrainerConfig

from fttrainer.metrics_file import MetricsLog, step_metrics
from fttrainer.sampling import Completion
from fttrainer.trackers import Backend, MlflowTracker, WandbTracker

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000
CLOSE_TIMEOUT = 120.0  # seconds close() waits for the backends (W&B's finish, a slow tracking server)
_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def redact(text: str) -> str:
    """``https://user:token@host`` -> ``https://***@host``: tracking URIs may carry credentials."""
    return _CREDENTIALS.sub("***@", text)


def backends(cfg: TrainerConfig) -> list[Backend]:
    """The trackers the job asks for (``spec.tracking``)."""
    tracking = cfg.tracking
    out: list[Backend] = []
    if tracking is not None and tracking.mlflow is not None:
        out.append(MlflowTracker(tracking.mlflow, cfg.job))
    if tracking is not None and tracking.wandb is not None:
        out.append(WandbTracker(tracking.wandb, cfg.job, Path(cfg.run.run_dir)))
    return out


def run_params(cfg: TrainerConfig, **extra: Any) -> dict[str, Any]:
    """The run's parameters for the trackers: method, hyperparameters, model, dataset format and ``extra``
    (training/evaluation rows, world size)."""
    params: dict[str, Any] = {"job": cfg.job, "model.name": cfg.model.name_or_path}
    if cfg.model.preset is not None:
        params["model.preset"] = cfg.model.preset
    for section in ("method", "hyperparameters"):
        for key, value in getattr(cfg, section).model_dump(mode="json", by_alias=True).items():
            params[f"{section}.{key}"] = value
    params["dataset.format"] = cfg.dataset.format
    params["dataset.validationFile"] = cfg.dataset.validation is not None
    params.update(extra)
    return params


def planned_artifact_uri(cfg: TrainerConfig, export_dir: Path) -> str:
    """Where the export will be once uploaded (:func:`fttrainer.upload.object_prefix`), or the local folder."""
    if cfg.output is None:
        return export_dir.resolve().as_uri() + "/"
    from fttrainer.upload import object_prefix

    return f"gs://{cfg.output.bucket}/{object_prefix(cfg.output.prefix, cfg.output.community_id, cfg.job)}"


def finite(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}


class Tracking:
    """The backends, called in submission order on one daemon thread; failures logged once, never raised."""

    def __init__(self, live: Sequence[Backend], close_timeout: float = CLOSE_TIMEOUT) -> None:
        self.live = list(live)
        self.close_timeout = close_timeout
        self.failed: list[str] = []
        self._queue: queue.Queue[tuple[str, tuple[Any, ...]] | None] = queue.Queue(QUEUE_SIZE)
        self._overflowed = False
        self._thread = threading.Thread(target=self._run, name="ftj-tracking", daemon=True)
        self._thread.start()

    def submit(self, method: str, *args: Any) -> None:
        if not self.live:
            return
        try:
            self._queue.put_nowait((method, args))
        except queue.Full:
            if not self._overflowed:
                self._overflowed = True
                log.warning("tracking: the trackers fall behind; dropping updates until they catch up")

    def wait(self, timeout: float) -> bool:
        """Block until everything submitted so far has been handled (or ``timeout``); whether it was."""
        if not self.live:
            return True
        done = threading.Event()
        self._queue.put(("_done", (done,)))
        if not done.wait(timeout):
            log.warning("tracking: trackers still busy after %.0fs; not waiting any longer", timeout)
            return False
        return True

    def close(self, artifact_uri: str | None, ok: bool) -> None:
        if self.live:
            self._queue.put(("finish", (artifact_uri, ok)))
        self._queue.put(None)
        self._thread.join(self.close_timeout)
        if self._thread.is_alive():
            log.warning("tracking: trackers still busy after %.0fs; not waiting any longer", self.close_timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            method, args = item
            if method == "_done":
                args[0].set()
                continue
            for backend in list(self.live):
                try:
                    getattr(backend, method)(*args)
                except Exception as exc:  # a tracker's failure is never the run's
                    self.live.remove(backend)
                    self.failed.append(backend.name)
                    log.warning(
                        "tracking: %s failed in %s (%s: %s); training goes on without it",
                        backend.name,
                        method,
                        type(exc).__name__,
                        redact(str(exc))[:500],
                    )


def status_sample(c: Completion) -> Sample:
    """A completion shortened for the status and the Event: the prompt keeps its end, the replies their start."""

    def head(text: str) -> str:
        return text if len(text) <= SAMPLE_TEXT_CHARS else text[: SAMPLE_TEXT_CHARS - 1] + "…"

    prompt = c.prompt if len(c.prompt) <= SAMPLE_TEXT_CHARS else "…" + c.prompt[-(SAMPLE_TEXT_CHARS - 1) :]
    return Sample(prompt=prompt, policy=head(c.policy), reference=None if c.reference is None else head(c.reference))


class RunRecorder:
    """Rank 0's :class:`~fttrainer.loop.StepObserver`: metrics file, trackers, samples to the status."""

    def __init__(self, cfg: TrainerConfig, reporter: Any, tracking: Tracking) -> None:
        self.cfg, self.reporter, self.tracking = cfg, reporter, tracking
        self.metrics_log: MetricsLog | None = None
        self.closed = False

    @classmethod
    def create(cls, cfg: TrainerConfig, reporter: Any) -> RunRecorder:
        live = backends(cfg)
        if live:
            log.info("tracking to %s", ", ".join(b.name for b in live))
        return cls(cfg, reporter, Tracking(live))

    def start(self, params: dict[str, Any]) -> None:
        self.tracking.submit("start", params)

    # -- StepObserver ------------------------------------------------------------------------------

    def begin(self, resumed_step: int | None) -> None:
        self.metrics_log = MetricsLog.open(Path(self.cfg.run.checkpoint_dir), resumed_step)

    def record(self, step: int, train: dict[str, float] | None, evaluation: dict[str, float], final: bool) -> None:
        if step >= 1 and self.metrics_log is not None:
            self.metrics_log.write(step_metrics(step, train, evaluation, final))
        self.tracking.submit("metrics", step, finite({**(train or {}), **evaluation}))

    def samples(self, step: int, samples: list[Any]) -> None:
        if not samples:
            return
        self.tracking.submit("samples", step, list(samples))
        short = [status_sample(c) for c in samples]
        self.reporter.samples(step, [s.wire() for s in short])
        for i, s in enumerate(short, start=1):
            log.info("sample %d at step %d: %r -> policy %r, reference %r", i, step, s.prompt, s.policy, s.reference)

    # -- the end -----------------------------------------------------------------------------------

    def seal(self, export_dir: Path, artifact_uri: str) -> None:
        """Before the upload: what must travel with the model (an offline W&B run) goes into the export."""
        self.tracking.submit("seal", export_dir, artifact_uri)
        self.tracking.wait(CLOSE_TIMEOUT)

    def close(self, artifact_uri: str | None, ok: bool) -> None:
        if not self.closed:
            self.closed = True
            self.tracking.close(artifact_uri, ok)
