"""Pure pieces of tracking and the metrics file: the held-out count shared with the API, the metrics-file lines
and their resume, sft's token hits through every scoring path, the tracker fan-out's failure rule, the shortened
samples, the Hydra keys, and the operator's side (validation mount, tracker credentials by reference, the samples
Event)."""

from __future__ import annotations

import copy
import datetime as dt
import logging
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from ftcrd.dataset import held_out_rows
from ftcrd.names import METRICS_FILE, VALIDATION_DIR
from ftcrd.results import parse_metrics
from ftcrd.status import SAMPLE_TEXT_CHARS
from ftcrd.types import EvalSamples
from ftoperator import builders, samples
from fttrainer.data import split_indices
from fttrainer.logprobs import sequence_logps, sequence_logps_and_hits
from fttrainer.metrics_file import MetricsLog, step_metrics
from fttrainer.packing import layout
from fttrainer.sampling import Completion
from fttrainer.tracking import Tracking, redact, status_sample
from packing_cases import PAD, skewed_examples, tiny_llama

# ---------------------------------------------------------------------------------------------- data split


def test_the_trainer_holds_out_exactly_what_the_api_counts():
    rng = random.Random(0)
    for _ in range(300):
        n, fraction = rng.randint(1, 500), rng.choice([0.0, 0.01, 0.05, 0.125, 0.3, 0.99])
        train, held = split_indices(n, fraction, seed=rng.randint(0, 9))
        assert len(held) == held_out_rows(n, fraction) and len(train) == n - len(held)
        assert sorted(train + held) == list(range(n))


# ---------------------------------------------------------------------------------------------- metrics file


def test_step_metrics_use_reward_accuracy_for_pairs_and_token_accuracy_for_sft():
    dpo = step_metrics(3, {"loss": 0.5, "rewardAccuracy": 0.75}, {}, final=False)
    assert (dpo.train_loss, dpo.train_accuracy, dpo.valid_loss, dpo.full_valid_loss) == (0.5, 0.75, None, None)
    sft = step_metrics(5, {"loss": 1.5, "tokenAccuracy": 0.4}, {"evalLoss": 1.7, "evalTokenAccuracy": 0.35}, final=True)
    assert (sft.train_accuracy, sft.valid_loss, sft.valid_mean_token_accuracy) == (0.4, 1.7, 0.35)
    assert (sft.full_valid_loss, sft.full_valid_mean_token_accuracy) == (1.7, 0.35)
    diverged = step_metrics(1, {"loss": float("nan"), "rewardAccuracy": 0.0}, {}, final=False)
    assert '"train_loss": null' in diverged.line()


def test_metrics_log_resumes_at_its_checkpoint_and_merges_a_step_recorded_again(tmp_path: Path):
    log = MetricsLog.open(tmp_path, None)
    for step in (1, 2, 3):
        log.write(step_metrics(step, {"loss": 1.0 / step, "rewardAccuracy": 0.5}, {}, final=False))
    # resumed from the checkpoint of step 2: step 3 is trained again
    log = MetricsLog.open(tmp_path, 2)
    assert [r.step for r in parse_metrics((tmp_path / METRICS_FILE).read_bytes())] == [1, 2]
    # resumed at the last step (its checkpoint existed, the export did not): only the final evaluation is new
    log = MetricsLog.open(tmp_path, 2)
    log.write(step_metrics(2, None, {"evalLoss": 0.25, "evalRewardAccuracy": 1.0}, final=True))
    rows = parse_metrics((tmp_path / METRICS_FILE).read_bytes())
    assert [r.step for r in rows] == [1, 2]
    assert (rows[1].train_loss, rows[1].full_valid_loss, rows[1].valid_mean_token_accuracy) == (0.5, 0.25, 1.0)
    assert MetricsLog.open(tmp_path, None).rows == {}  # a fresh run starts the file again
    assert (tmp_path / METRICS_FILE).read_text() == ""


# ---------------------------------------------------------------------------------------------- token hits


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_token_hits_agree_on_every_scoring_path(packed: bool):
    """The chunked head (several chunks), the one-chunk plain path and the model's own logits count the same
    greedy hits, the log-probs and gradients are unchanged by counting them, and hits never exceed the scored
    tokens."""
    model = tiny_llama(seed=3)
    batch = layout(skewed_examples(5, seed=4), pairs=True, packed=packed, pad_token_id=PAD)
    scored = torch.bincount(batch.segments, minlength=batch.rows).double()
    results = []
    for chunked, chunk in ((True, 7), (True, 100_000), (False, 0)):
        m = copy.deepcopy(model)
        logps, hits = sequence_logps_and_hits(m, batch, chunked=chunked, chunk_tokens=chunk)
        logps.sum().backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        results.append((logps.detach(), hits, grads))
        assert torch.all(hits <= scored) and torch.all(hits >= 0) and not hits.requires_grad
    for logps, hits, grads in results[1:]:
        torch.testing.assert_close(hits, results[0][1], atol=0, rtol=0)
        torch.testing.assert_close(logps, results[0][0], atol=1e-6, rtol=0)
        for name, g in grads.items():
            torch.testing.assert_close(g, results[0][2][name], atol=1e-6, rtol=0)
    plain = sequence_logps(copy.deepcopy(model), batch, chunked=True, chunk_tokens=7)
    torch.testing.assert_close(plain, results[0][0], atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------- trackers


class _Recording:
    def __init__(self, name: str, fail_in: str | None = None) -> None:
        self.name, self.fail_in, self.calls = name, fail_in, []

    def __getattr__(self, method: str) -> Any:
        def call(*args: Any) -> None:
            self.calls.append(method)
            if method == self.fail_in:
                raise ConnectionError("https://user:token@tracker.example refused the connection")

        return call


def test_a_failing_tracker_is_logged_once_and_dropped_while_the_others_go_on(caplog: pytest.LogCaptureFixture):
    broken, healthy = _Recording("mlflow", fail_in="metrics"), _Recording("wandb")
    tracking = Tracking([broken, healthy])  # type: ignore[list-item]
    with caplog.at_level(logging.WARNING, logger="fttrainer.tracking"):
        tracking.submit("start", {"a": 1})
        for step in range(1, 4):
            tracking.submit("metrics", step, {"loss": 1.0})
        tracking.close("gs://b/m/", ok=True)
    assert broken.calls == ["start", "metrics"] and tracking.failed == ["mlflow"]
    assert healthy.calls == ["start", "metrics", "metrics", "metrics", "finish"]
    warnings = [r.getMessage() for r in caplog.records if "tracking:" in r.getMessage()]
    assert len(warnings) == 1 and "mlflow failed in metrics" in warnings[0]
    assert "token" not in warnings[0] and "***@tracker.example" in warnings[0]


def test_redact_removes_url_credentials():
    assert redact("POST https://u:s3cret@ml.example:5000/api failed") == "POST https://***@ml.example:5000/api failed"
    assert redact("file:///tmp/mlruns") == "file:///tmp/mlruns"


def test_status_samples_are_shortened_prompt_keeping_its_end():
    long = "x" * 1000 + "the question?"
    s = status_sample(Completion(prompt=long, policy="p" * 1000, reference=None))
    assert len(s.prompt) == len(s.policy) == SAMPLE_TEXT_CHARS
    assert s.prompt.endswith("the question?") and s.prompt.startswith("…") and s.policy.endswith("…")
    assert s.reference is None
    assert status_sample(Completion("short", "answer", "ref")).wire() == {
        "prompt": "short",
        "policy": "answer",
        "reference": "ref",
    }


def test_hydra_tracking_keys_and_validation_file(tmp_path: Path):
    from fttrainer.config import CONFIG_DIR, from_hydra, register_resolver
    from hydra import compose, initialize_config_dir

    register_resolver()
    base = ["model=tiny", "loss=dpo", "exp_name=x", "datasets=[jsonl]"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        plain = from_hydra(compose("config", overrides=base))
        tracked = from_hydra(
            compose(
                "config",
                overrides=[
                    *base,
                    "wandb.enabled=true",
                    "wandb.entity=team",
                    "mlflow.tracking_uri=http://mlflow:5000",
                    "sample_during_eval=true",
                    "n_eval_model_samples=3",
                    "dataset.validation_path=/v.jsonl",
                ],
            )
        )
    assert plain.tracking is not None and plain.tracking.wandb is None and plain.tracking.mlflow is None
    assert plain.dataset.validation is None
    t = tracked.tracking
    assert t is not None and t.wandb is not None and t.mlflow is not None
    assert (t.wandb.project, t.wandb.entity, t.mlflow.tracking_uri, t.mlflow.experiment) == (
        "finetune-operator",
        "team",
        "http://mlflow:5000",
        "finetune",
    )
    assert t.sample_during_eval and t.samples == 3
    assert tracked.dataset.validation is not None
    assert (tracked.dataset.validation.path, tracked.dataset.validation.format) == ("/v.jsonl", "jsonl")


# ---------------------------------------------------------------------------------------------- operator


def _ftj(**spec: Any) -> Any:
    body = {
        "metadata": {"name": "j", "namespace": "ns", "uid": "u-1"},
        "spec": {
            "model": {"name": "tiny", "preset": "tiny"},
            "dataset": {"configMap": {"name": "file-a", "key": "data.jsonl.gz"}, "format": "jsonl"},
            "output": {"bucket": "bkt"},
            **spec,
        },
    }
    return builders.parse(body)


def test_validation_dataset_is_mounted_next_to_the_training_data_and_named_in_the_config():
    ftj = _ftj(
        dataset={
            "configMap": {"name": "file-a", "key": "data.jsonl.gz"},
            "format": "jsonl",
            "validation": {"configMap": {"name": "file-b", "key": "data.jsonl.gz"}, "format": "jsonl"},
        }
    )
    pod = builders.render_job(ftj)["spec"]["template"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert volumes["validation"] == {"name": "validation", "configMap": {"name": "file-b"}}
    assert mounts["validation"] == {"name": "validation", "mountPath": VALIDATION_DIR, "readOnly": True}
    cfg = builders.trainer_config(ftj.spec, "j")
    assert cfg.dataset.validation is not None
    assert cfg.dataset.validation.path == f"{VALIDATION_DIR}/data.jsonl.gz"
    assert cfg.dataset.path.endswith("/data.jsonl.gz") and not cfg.dataset.path.startswith(VALIDATION_DIR)
    assert "validation" not in {v["name"] for v in builders.render_job(_ftj())["spec"]["template"]["spec"]["volumes"]}


def test_tracker_credentials_are_passed_by_reference_and_wandb_without_a_key_is_offline():
    keyed = _ftj(
        tracking={
            "wandb": {"project": "p", "apiKeySecret": {"name": "wb", "key": "k"}},
            "mlflow": {"trackingUri": "https://ml", "tokenSecret": {"name": "ml", "key": "t"}},
        }
    )
    env = {e["name"]: e for e in builders.render_job(keyed)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WANDB_API_KEY"] == {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wb", "key": "k"}}}
    assert env["MLFLOW_TRACKING_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "ml", "key": "t"}}
    assert "WANDB_MODE" not in env
    offline = _ftj(tracking={"wandb": {"project": "p"}, "sampleDuringEval": True})
    env = {e["name"]: e for e in builders.render_job(offline)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WANDB_MODE"] == {"name": "WANDB_MODE", "value": "offline"} and "WANDB_API_KEY" not in env
    cfg = builders.trainer_config(offline.spec, "j")
    assert cfg.tracking is not None and cfg.tracking.sample_during_eval and cfg.tracking.wandb is not None


def test_samples_event_message_is_capped_and_named_per_step():
    items = [{"prompt": "q" * 300, "policy": "a" * 300, "reference": "r" * 300} for _ in range(4)]
    s = EvalSamples.model_validate({"step": 12, "items": items})
    text = samples.message(s)
    assert len(text) == samples.MESSAGE_CHARS and text.startswith("step 12: [1] 'qqq") and text.endswith("…")
    short = EvalSamples.model_validate({"step": 3, "items": [{"prompt": "hi", "policy": "yes"}]})
    assert samples.message(short) == "step 3: [1] 'hi' -> 'yes'"
    ftj = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "j", "namespace": "n"}}
    event = samples.render_event(ftj, short, dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
    assert event["metadata"] == {"name": "j.samples-3", "namespace": "n"}
    assert event["reason"] == "EvalSamples" and event["type"] == "Normal" and event["involvedObject"]["name"] == "j"
