"""Malformed datasets and configurations fail fast with exit code 2, a precise message on stderr and
a termination message, before any model is loaded and without uploading anything."""

from __future__ import annotations

import json

import pytest

from tests.support.trainer import BIN, Trainer, synthetic_rows

GOOD = synthetic_rows(4)


def rows_with(index: int, **changes):
    rows = [dict(r) for r in GOOD]
    for key, value in changes.items():
        if value is ...:
            del rows[index][key]
        else:
            rows[index][key] = value
    return json.dumps(rows)


OPENAI_BAD_ROLE = json.dumps(
    {
        "input": {"messages": [{"role": "robot", "content": "hi"}]},
        "preferred_output": [{"role": "assistant", "content": "yes"}],
        "non_preferred_output": [{"role": "assistant", "content": "no"}],
    }
)

CASES = {
    "not-json": ("novalto", '[{"prompt": "a",', "not valid JSON"),
    "missing-field": ("novalto", rows_with(0, rejected=...), "row 1: field 'rejected': is missing"),
    "empty-string": ("novalto", rows_with(1, chosen="   "), "row 2: field 'chosen': must be a non-empty string"),
    "wrong-type": ("novalto", rows_with(2, prompt=5), "row 3: field 'prompt': must be a string, got int"),
    "bad-openai-role": ("openai", OPENAI_BAD_ROLE, "row 1: field 'input.messages[0].role': role must be one of"),
    "empty-list": ("novalto", "[]", "has 0 rows; at least 1 needed"),
    "jsonl-bad-line": ("jsonl", json.dumps(GOOD[0]) + "\n{oops\n", "row 2: line is not valid JSON"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_malformed_dataset_exits_2(trainer: Trainer, case: str):
    fmt, raw, expected = CASES[case]
    path = trainer.dataset(raw=raw, name=f"{case}.data")
    run = trainer.python(case, path, f"datasets=[{fmt}]", "upload.bucket=must-not-be-used")
    assert run.returncode == 2, run.output[-3000:]
    assert expected in run.stderr
    msg = run.termination_message()
    assert msg["status"] == "failed" and msg["reason"] == "InvalidDataset"
    assert expected in msg["message"]
    # rejected before any model was built or loaded, and nothing exported or uploaded
    assert "models loaded" not in run.output
    assert not trainer.tiny_cache.exists()
    assert not (run.run_dir / "checkpoints" / "export").exists()
    assert run.seconds < 60


def test_missing_dataset_file(trainer: Trainer):
    run = trainer.python("missing", trainer.tmp / "nope.json")
    assert run.returncode == 2
    assert run.termination_message()["reason"] == "InvalidDataset"
    assert "does not exist" in run.stderr


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("loss.beta=-1", "loss.beta: Input should be greater than 0"),
        ("max_prompt_length=64", "maxPromptLength must be smaller than maxLength"),
        ("gradient_accumulation_steps=3", "must be divisible by gradient_accumulation_steps"),
        ("optimizer=Adagrad", "optimizer: Input should be 'RMSprop', 'AdamW', 'Adam' or 'SGD'"),
        ("datasets=[hh]", "datasets must be a one-element list"),
        ("batch_size=1000", "larger than the"),
    ],
)
def test_invalid_config_exits_2(trainer: Trainer, override: str, expected: str):
    run = trainer.python("badcfg", trainer.dataset(), override)
    assert run.returncode == 2, run.output[-3000:]
    assert expected in run.stderr
    msg = run.termination_message()
    assert msg["reason"] == "InvalidSpec" and expected in msg["message"]
    assert "models loaded" not in run.output


def test_malformed_dataset_under_torchrun(trainer: Trainer):
    """Every rank rejects the dataset and writes the same termination message (whichever torchrun lets finish)."""
    path = trainer.dataset(raw=rows_with(1, chosen=""), name="bad.json")
    run = trainer.torchrun("torchrun-bad", path)
    assert run.returncode != 0
    assert "exitcode  : 2" in run.output  # torchrun's own summary of the worker's exit code
    msg = run.termination_message()
    assert msg == {"status": "failed", "reason": "InvalidDataset", "message": msg["message"]}
    assert "row 2: field 'chosen': must be a non-empty string" in msg["message"]


def test_launcher_propagates_exit_code_2(trainer: Trainer):
    """``python -m fttrainer.launch`` is torchrun that exits with the workers' code (torchrun exits 1)."""
    path = trainer.dataset(raw=rows_with(0, prompt=...), name="bad.json")
    cmd = [str(BIN / "python"), "-m", "fttrainer.launch", "--standalone", "--nnodes=1", "--nproc-per-node=2"]
    cmd += ["-m", "fttrainer.train", *trainer.args("launch", path, [])]
    run = trainer.run_command("launch", cmd)
    assert run.returncode == 2, run.output[-3000:]
    assert run.termination_message()["reason"] == "InvalidDataset"
