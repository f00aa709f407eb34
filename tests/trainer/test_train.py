"""Acceptance tests with real torchrun processes on CPU: FSDP2 training of the tiny preset, export,
layout-independent determinism, resume after a hard kill, Hydra outputs on rank 0 only.

One 2-process baseline run (about 40 s on two shared cores) is shared by the tests of this module. It runs
under plain torchrun, which exits non-zero if any rank dies, so it also shows that the ranks leave without
the gloo teardown abort (``fttrainer.train.leave_together``) that once made this fixture flaky.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.support.trainer import BIN, Run, Trainer, synthetic_rows

STEPS = 16  # 160 rows, 20% held out, batch 8, one epoch


def export_dir(run: Run) -> Path:
    return run.run_dir / "checkpoints" / "export"  # kept with the checkpoints: a retried upload needs no training


def weights(run: Run) -> dict[str, torch.Tensor]:
    return load_file(export_dir(run) / "model.safetensors")


def step_dirs(run: Run) -> list[str]:
    return sorted(p.name for p in (run.run_dir / "checkpoints").iterdir() if p.name.startswith("step-"))


def assert_same_weights(a: Run, b: Run, atol: float) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= atol, f"max weight difference {worst:g} > {atol:g}"


def ok(run: Run) -> Run:
    assert run.returncode == 0, f"exit {run.returncode}\n{run.output[-6000:]}"
    return run


@pytest.fixture(scope="module")
def session(trainer_session: Trainer) -> Trainer:
    return trainer_session


@pytest.fixture(scope="module")
def dataset(session: Trainer) -> Path:
    return session.dataset(synthetic_rows(160), name="pairs.json")


@pytest.fixture(scope="module")
def baseline(session: Trainer, dataset: Path) -> Run:
    return ok(session.torchrun("baseline", dataset, "checkpoint_every=4"))


def test_two_process_fsdp2_training_learns(baseline: Run):
    out = baseline.output
    assert "FSDP2: sharded 2 LlamaDecoderLayer blocks + root over 2 rank(s)" in out
    assert "resumed from" not in out
    msg = baseline.termination_message()
    assert msg["status"] == "succeeded"
    assert msg["steps"] == STEPS and msg["examples"] == STEPS * 8 and msg["attemptSteps"] == STEPS
    metrics = msg["metrics"]
    assert metrics["evalRewardAccuracy"] > 0.75, metrics
    assert metrics["evalLoss"] < math.log(2) - 0.2, metrics
    assert metrics["rewardMargin"] > 0
    for key in ("loss", "rewardAccuracy", "rewardsChosen", "rewardsRejected", "logpsChosen", "logpsRejected"):
        assert math.isfinite(metrics[key]), key
    assert metrics["gradNorm"] > 0 and metrics["learningRate"] > 0 and metrics["tokens"] > 0
    print(f"baseline: {baseline.seconds:.1f}s, metrics {json.dumps(metrics)}")


def test_export_reloads_offline(baseline: Run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = export_dir(baseline)
    assert baseline.termination_message()["artifact"]["uri"] == export.resolve().as_uri() + "/"
    model = AutoModelForCausalLM.from_pretrained(export, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(export, local_files_only=True)
    ids = tok("Tell me about apple river stone.\n", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()

    policy = torch.load(export / "policy.pt", map_location="cpu", weights_only=True)
    assert set(policy) >= {"state", "step_idx", "metrics"}
    assert policy["step_idx"] == STEPS * 8
    assert policy["state"].keys() == model.state_dict().keys()
    torch.testing.assert_close(policy["state"]["lm_head.weight"], model.lm_head.weight)


def test_hydra_outputs_on_rank0_only(baseline: Run, session: Trainer):
    entries = sorted(p.name for p in baseline.run_dir.iterdir())
    assert entries == [".hydra", "checkpoints", "train.log", "trainer-config.json"], entries
    assert sorted(p.name for p in (baseline.run_dir / ".hydra").iterdir()) == [
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    ]
    log = (baseline.run_dir / "train.log").read_text()
    assert "training dpo" in log
    resolved = json.loads((baseline.run_dir / "trainer-config.json").read_text())
    assert resolved["job"] == "baseline" and resolved["hyperparameters"]["checkpointEvery"] == 4
    # no per-rank, per-timestamp output directories anywhere
    assert not (session.tmp / "outputs").exists()


def test_checkpoints_keep_last_two_complete(baseline: Run):
    ckpts = baseline.run_dir / "checkpoints"
    names = step_dirs(baseline)
    assert names == ["step-12", "step-16"], names
    marker = json.loads((ckpts / "export.json").read_text())  # the export is complete: a retry only uploads
    assert marker["job"] == "baseline" and marker["step"] == STEPS
    for name in names:
        assert (ckpts / name / "COMPLETE").exists()
        assert (ckpts / name / ".metadata").exists()


def test_two_nodes_match_one_node_two_processes(baseline: Run, session: Trainer, dataset: Path):
    run = ok(session.two_nodes("two-nodes", dataset, "checkpoint_every=4"))
    print(f"two nodes: {run.seconds:.1f}s")
    assert_same_weights(run, baseline, atol=1e-6)


def test_resume_after_hard_exit_gives_same_weights(baseline: Run, session: Trainer, dataset: Path):
    args = ("checkpoint_every=4", "exit_after_step=8")
    first = session.torchrun("resumed", dataset, *args)
    assert first.returncode != 0, first.output[-3000:]
    ckpts = first.run_dir / "checkpoints"
    assert (ckpts / "step-8" / "COMPLETE").exists()
    assert not export_dir(first).exists()
    assert "exit_after_step=8" in first.output

    second = ok(session.torchrun("resumed", dataset, *args))  # the same command, as a restarted pod runs it
    assert "resumed from step 8" in second.output
    assert second.termination_message()["steps"] == STEPS
    assert second.termination_message()["attemptSteps"] == STEPS - 8
    print(f"interrupted {first.seconds:.1f}s + resumed {second.seconds:.1f}s")
    assert_same_weights(second, baseline, atol=1e-6)


def test_precompute_reference_and_activation_checkpointing_match(baseline: Run, session: Trainer, dataset: Path):
    run = ok(
        session.torchrun(
            "precompute", dataset, "checkpoint_every=100", "precompute_reference=true", "activation_checkpointing=true"
        )
    )
    assert "reference log-probs precomputed for 160 examples" in run.output
    print(f"precompute + activation checkpointing: {run.seconds:.1f}s")
    assert_same_weights(run, baseline, atol=1e-5)


def test_sigterm_checkpoints_and_resumes(session: Trainer, dataset: Path):
    """A preempted pod: torchrun gets SIGTERM mid-run; the workers checkpoint the current step and exit,
    and the same command resumes from that step."""
    import signal
    import subprocess
    import time

    args = session.args("sigterm", dataset, ["n_examples=2400", "checkpoint_every=1000", "minimum_log_interval_secs=0"])
    cmd = [str(BIN / "torchrun"), "--standalone"]
    cmd += ["--nproc-per-node=2", "-m", "fttrainer.train", *args]
    env = session.env(session.tmp / "sigterm.termination")
    log_path = session.tmp / "sigterm.log"
    with log_path.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=session.tmp, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while "step 20/300" not in log_path.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, log_path.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)  # what the kubelet sends to the container's PID 1
        proc.wait(timeout=120)
    text = log_path.read_text()
    assert "SIGTERM: checkpointed step" in text, text[-3000:]
    step = int(text.split("SIGTERM: checkpointed step ")[1].split(",")[0])
    assert 20 <= step < 300
    assert (session.tmp / "sigterm" / "checkpoints" / f"step-{step}" / "COMPLETE").exists()

    resumed = ok(session.torchrun("sigterm", dataset, "n_examples=2400", "checkpoint_every=1000"))
    assert f"resumed from step {step}" in resumed.output
    assert resumed.termination_message()["steps"] == 300


@pytest.fixture(scope="module")
def single(session: Trainer, dataset: Path) -> Run:
    """World size 1 (plain ``python``): a plain module, no FSDP."""
    return ok(session.python("single", dataset, "checkpoint_every=4"))


def test_one_rank_is_a_plain_module_and_matches_two_ranks(single: Run, baseline: Run):
    assert "one rank: plain LlamaForCausalLM module, no FSDP" in single.output
    assert "FSDP2: sharded" not in single.output
    msg = single.termination_message()
    assert msg["status"] == "succeeded" and msg["steps"] == STEPS
    assert step_dirs(single) == ["step-12", "step-16"]
    # the same global batches, only summed in another order: same names, close weights
    assert_same_weights(single, baseline, atol=1e-4)


def test_one_rank_resume_precompute_and_activation_checkpointing(single: Run, session: Trainer, dataset: Path):
    args = ("checkpoint_every=4", "exit_after_step=8", "precompute_reference=true", "activation_checkpointing=true")
    first = session.python("single-resumed", dataset, *args)
    assert first.returncode != 0, first.output[-3000:]
    assert (first.run_dir / "checkpoints" / "step-8" / "COMPLETE").exists()
    second = ok(session.python("single-resumed", dataset, *args))
    assert "resumed from step 8" in second.output
    assert "reference log-probs precomputed for 160 examples" in second.output
    assert_same_weights(second, single, atol=1e-5)
