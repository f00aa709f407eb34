"""Experiment tracking, the per-step metrics file and a separate validation file, with real trainer processes on CPU.

One two-process FSDP2 DPO run (torchrun) tracks to MLflow (a local file store) and W&B (offline), samples held-out
prompts at each evaluation, evaluates on a separate validation file and uploads to the GCS emulator; the tests read
back what each tracker and the upload hold. A one-process SFT run reports to an MLflow server nobody listens on:
the job succeeds and says so once.
"""

from __future__ import annotations

import json
import math
import re

import pytest
from ftcrd.names import METRICS_FILE
from ftcrd.results import parse_metrics

from tests.support.gcs import GcsEmulator
from tests.support.tracking import read_mlflow_run, read_wandb_run, wandb_offline_runs
from tests.support.trainer import Run, Trainer, free_port, synthetic_rows

TRAIN_ROWS, VALIDATION_ROWS, BATCH = 64, 10, 8
STEPS = TRAIN_ROWS // BATCH  # every training row is trained on: nothing is held out of them
EVAL_STEPS = (4, STEPS)  # eval_every=32 examples; the last step evaluates on the whole validation set
SAMPLES = 2
EXPERIMENT = "tracking-test"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, gcs: GcsEmulator) -> tuple[Run, str, str]:
    """(the run, its MLflow tracking URI, the job name)."""
    t = Trainer(tmp_path_factory.mktemp("tracking"))
    train = t.dataset(synthetic_rows(TRAIN_ROWS, seed=1), name="tracking-train.json")
    validation = t.dataset(synthetic_rows(VALIDATION_ROWS, seed=2), name="tracking-validation.json")
    uri = (t.tmp / "mlruns").as_uri()
    t.extra_env.update(gcs.env(), WANDB_MODE="offline")
    job = "tracked"
    run = t.torchrun(
        job,
        train,
        f"dataset.validation_path={validation}",
        "dataset.validation_fraction=0.5",  # ignored: the validation file replaces the held-out share
        "eval_every=32",
        "checkpoint_every=4",
        f"upload.bucket={gcs.bucket}",
        "upload.prefix=tracking",
        "wandb.enabled=true",
        "wandb.project=ftj-tests",
        f"mlflow.tracking_uri={uri}",
        f"mlflow.experiment={EXPERIMENT}",
        "sample_during_eval=true",
        f"n_eval_model_samples={SAMPLES}",
        "sample_max_new_tokens=6",
        timeout=600,
    )
    assert run.returncode == 0, run.output[-6000:]
    return run, uri, job


def test_trains_on_every_training_row_and_evaluates_on_exactly_the_validation_rows(tracked):
    run, _, _ = tracked
    msg = run.termination_message()
    assert msg["steps"] == STEPS and msg["examples"] == TRAIN_ROWS
    assert f"{TRAIN_ROWS} train / {VALIDATION_ROWS} eval rows" in run.output
    evaluated = re.findall(r"evaluation at step (\d+) on (\d+) held-out examples", run.output)
    assert [(int(s), int(n)) for s, n in evaluated] == [(s, VALIDATION_ROWS) for s in EVAL_STEPS]
    assert msg["metrics"]["evalExamples"] == VALIDATION_ROWS


def test_metrics_file_has_one_line_per_step_and_is_uploaded(tracked, gcs: GcsEmulator):
    run, _, job = tracked
    local = (run.run_dir / "checkpoints" / "export" / METRICS_FILE).read_bytes()
    lines = [json.loads(line) for line in local.decode().splitlines()]
    assert [row["step"] for row in lines] == list(range(1, STEPS + 1))
    for row in lines:
        assert math.isfinite(row["train_loss"]) and 0 <= row["train_accuracy"] <= 1
        evaluated, last = row["step"] in EVAL_STEPS, row["step"] == STEPS
        assert (row["valid_loss"] is not None) == evaluated and (row["full_valid_loss"] is not None) == last
        assert (row["valid_mean_token_accuracy"] is not None) == evaluated
    assert lines[-1]["full_valid_loss"] == pytest.approx(run.termination_message()["metrics"]["evalLoss"], rel=1e-3)
    folder = f"tracking/default/{job}/"
    assert gcs.download(folder + METRICS_FILE) == local
    manifest = json.loads(gcs.download(folder + "manifest.json"))
    assert METRICS_FILE in json.dumps(manifest["files"])
    assert len(parse_metrics(local)) == STEPS


def test_mlflow_run_holds_params_metrics_per_step_artifact_and_samples(tracked):
    run, uri, job = tracked
    ml = read_mlflow_run(uri, EXPERIMENT, job)
    assert ml.status == "FINISHED"
    assert ml.params["method.beta"] == "0.1" and ml.params["hyperparameters.batchSize"] == str(BATCH)
    assert ml.params["trainRows"] == str(TRAIN_ROWS) and ml.params["evalRows"] == str(VALIDATION_ROWS)
    assert ml.params["worldSize"] == "2" and ml.params["model.name"] == "tiny"
    for metric in ("loss", "rewardAccuracy", "gradNorm", "learningRate"):
        assert [step for step, _ in ml.history[metric]] == list(range(1, STEPS + 1)), metric
    assert [step for step, _ in ml.history["evalLoss"]] == list(EVAL_STEPS)
    assert {value for _, value in ml.history["evalExamples"]} == {VALIDATION_ROWS}
    assert ml.tags["finetune.artifact_uri"] == run.termination_message()["artifact"]["uri"]
    assert sorted(ml.artifacts) == [f"samples/step-{s:06d}.json" for s in EVAL_STEPS]
    for step in EVAL_STEPS:
        doc = ml.artifacts[f"samples/step-{step:06d}.json"]
        assert doc["step"] == step and len(doc["samples"]) == SAMPLES
        for sample in doc["samples"]:
            assert sample["prompt"].startswith("Tell me about ")  # a held-out prompt, decoded
            assert isinstance(sample["policy"], str) and isinstance(sample["reference"], str)


def test_wandb_offline_run_holds_config_metrics_samples_and_artifact(tracked, gcs: GcsEmulator, tmp_path):
    run, _, job = tracked
    files = wandb_offline_runs(run.run_dir)
    assert len(files) == 1, files
    # offline, the run is sealed into the export before the upload: it travels with the model
    uploaded = [n for n in gcs.list(f"tracking/default/{job}/wandb/") if n.endswith(".wandb")]
    assert [n.rsplit("/", 2)[-2:] for n in uploaded] == [[files[0].parent.name, files[0].name]]
    copy = tmp_path / files[0].name
    copy.write_bytes(gcs.download(uploaded[0]))
    assert read_wandb_run(copy) == read_wandb_run(files[0])
    wb = read_wandb_run(files[0])
    assert wb.name == job and wb.project == "ftj-tests"
    assert wb.config["method.type"] == "dpo" and wb.config["trainRows"] == TRAIN_ROWS
    steps = [h["_step"] for h in wb.history if "loss" in h]
    assert steps == list(range(1, STEPS + 1))
    sampled = [h["_step"] for h in wb.history if h.get("samples/_type") == "table-file"]
    assert sampled == list(EVAL_STEPS)
    assert wb.summary["artifact_uri"] == run.termination_message()["artifact"]["uri"]
    table = json.loads(next(files[0].parent.glob("files/media/table/samples_*.table.json")).read_text())
    assert table["columns"] == ["step", "prompt", "policy", "reference"] and len(table["data"]) == SAMPLES


def test_samples_are_logged_shortened(tracked):
    run, _, _ = tracked
    lines = re.findall(r"sample (\d) at step (\d+): '(.*?)' -> policy", run.output)
    assert {(int(i), int(s)) for i, s, _ in lines} == {(i, s) for i in range(1, SAMPLES + 1) for s in EVAL_STEPS}


def test_sft_token_accuracy_and_an_unreachable_tracker_never_fail_the_job(trainer: Trainer):
    """SFT's accuracies are token accuracies; an MLflow server that does not answer is logged once, not fatal."""
    dead = f"http://127.0.0.1:{free_port()}"
    run = trainer.python(
        "sft-tracked",
        trainer.dataset(synthetic_rows(40)),
        "loss=sft",
        "n_examples=24",
        "checkpoint_every=100",
        f"mlflow.tracking_uri={dead}",
    )
    assert run.returncode == 0, run.output[-4000:]
    msg = run.termination_message()
    assert msg["status"] == "succeeded" and msg["steps"] == 3
    assert 0 < msg["metrics"]["tokenAccuracy"] <= 1 and 0 <= msg["metrics"]["evalTokenAccuracy"] <= 1
    failures = re.findall(r"tracking: mlflow failed in start \((\w+)", run.output)
    assert len(failures) == 1, run.output[-4000:]
    assert run.output.count("tracking: mlflow failed") == 1
    rows = parse_metrics((run.run_dir / "checkpoints" / "export" / METRICS_FILE).read_bytes())
    assert [r.step for r in rows] == [1, 2, 3]
    assert all(r.train_accuracy is not None and 0 <= r.train_accuracy <= 1 for r in rows)
    assert rows[-1].train_accuracy == pytest.approx(msg["metrics"]["tokenAccuracy"], rel=1e-3)
    assert rows[-1].full_valid_mean_token_accuracy == pytest.approx(msg["metrics"]["evalTokenAccuracy"], rel=1e-3)
