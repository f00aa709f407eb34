"""Durable checkpoints without a cluster: real trainer processes on CPU, real DCP, a real GCS emulator.

* a checkpoint whose writer died before the commit is never resumed from, and the resumed run ends with the
  weights of an uninterrupted one; only the newest ``keep_checkpoints`` survive;
* one process per checkpoint directory commits and prunes: on storage shared by two "nodes" only global rank 0,
  on per-node storage each node's first process (two real gloo processes);
* a model source (``spec.model.from``) is downloaded and verified against its manifest: a corrupted object, a
  manifest that differs from the pin, a file the manifest does not list all fail with ``InvalidModel``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ftcrd.conditions import ExitCode, Reason
from fttrainer.config import InvalidInput
from safetensors.torch import load_file

from tests.support import PYTHONPATH
from tests.support.gcs import GcsEmulator, free_port
from tests.support.trainer import Run, Trainer, synthetic_rows

STEPS = 8  # 80 rows, 20% held out, batch 8


def ok(run: Run) -> Run:
    assert run.returncode == 0, f"exit {run.returncode}\n{run.output[-6000:]}"
    return run


def weights(run: Run) -> dict[str, torch.Tensor]:
    return load_file(run.run_dir / "checkpoints" / "export" / "model.safetensors")


def max_difference(a: Run, b: Run) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


@pytest.fixture(scope="module")
def session(trainer_session: Trainer) -> Trainer:
    return trainer_session


@pytest.fixture(scope="module")
def dataset(session: Trainer) -> Path:
    return session.dataset(synthetic_rows(80, seed=3), name="durable-pairs.json")


def test_torn_checkpoint_is_ignored_and_the_resumed_run_matches(session: Trainer, dataset: Path):
    args = ("checkpoint_every=2", "keep_checkpoints=3")
    baseline = ok(session.python("durable-baseline", dataset, *args))
    ckpts = baseline.run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-4", "step-6", "step-8"]  # the newest 3
    record = json.loads((ckpts / "step-8" / "record.json").read_text())
    assert record["step"] == STEPS and "loss" in record["metrics"]

    torn = session.python("durable-torn", dataset, *args, "exit_during_checkpoint=4")
    assert torn.returncode == ExitCode.STOPPED_AFTER_STEP, torn.output[-3000:]
    ckpts = torn.run_dir / "checkpoints"
    assert (ckpts / ".tmp-step-4" / ".metadata").exists()  # every shard written, never committed
    assert not (ckpts / "step-4").exists() and (ckpts / "step-2" / "COMPLETE").exists()

    resumed = ok(session.python("durable-torn", dataset, *args, "exit_during_checkpoint=4"))
    assert "ignoring incomplete checkpoint(s) .tmp-step-4" in resumed.output
    assert "resumed from step 2" in resumed.output
    assert not list(ckpts.glob(".tmp-step-*"))  # removed by the one process that owns the directory
    assert resumed.termination_message()["attemptSteps"] == STEPS - 2
    assert max_difference(resumed, baseline) <= 1e-6


OWNER_SCRIPT = """
import json, os, sys
from pathlib import Path
import torch
from fttrainer.parallel import init_distributed
from fttrainer import checkpoint
d = init_distributed()
shared = checkpoint.open_store(Path(sys.argv[1]), d, keep=1)
own = checkpoint.open_store(Path(sys.argv[1]) / f"node-{d.rank}", d, keep=1)
model = torch.nn.Linear(4, 2)
opt = torch.optim.AdamW(model.parameters())
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
for step in (1, 2):  # two saves on the shared directory from both nodes: one commit each, the older pruned
    checkpoint.save(shared, checkpoint.LoopState(step=step), model=model, optimizer=opt, scheduler=sched, d=d)
print(json.dumps({"rank": d.rank, "shared_owner": shared.owner, "own_owner": own.owner}))
"""


def test_one_process_per_directory_commits_and_prunes(tmp_path: Path):
    """Two processes, each the first (LOCAL_RANK 0) of its own "node", as two pods of a multi-node job."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "WORLD_SIZE": "2", "LOCAL_RANK": "0", "OMP_NUM_THREADS": "1"}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_WORLD_SIZE="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OWNER_SCRIPT, str(tmp_path / "shared")],
            env={**env, "RANK": str(rank), "GROUP_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    result = {r["rank"]: r for r in (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)}
    assert [result[r]["shared_owner"] for r in (0, 1)] == [True, False]  # shared storage: rank 0 alone
    assert [result[r]["own_owner"] for r in (0, 1)] == [True, True]  # per-node storage: each node's first
    names = sorted(p.name for p in (tmp_path / "shared").iterdir() if p.name.startswith(("step-", ".tmp")))
    assert names == ["step-2"], names
    assert (tmp_path / "shared" / "step-2" / "COMPLETE").read_text().strip() == "2"


# ------------------------------------------------------------------------------------------- model source


@pytest.fixture
def exported(gcs: GcsEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, Path]:
    """A small export folder uploaded with the trainer's own upload (manifest and all): (uri, manifest sha256,
    the local folder)."""
    from fttrainer.upload import upload_export

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.host)
    folder = tmp_path / "export"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "policy.pt").write_bytes(os.urandom(4096))
    (folder / "sub" / "tokenizer.json").write_text("{}")
    job = f"src-{free_port()}"
    res = upload_export(
        folder, bucket=gcs.bucket, prefix="models", community_id="c", job=job, metrics={}, config={}, retries=0
    )
    return res.uri, res.sha256, folder


def test_model_source_is_verified_against_its_manifest(exported, gcs: GcsEmulator, tmp_path: Path):
    from fttrainer.source import download

    uri, sha, folder = exported
    dest, only = download(uri, sha, tmp_path / "a")
    assert only is None
    for rel in ("config.json", "policy.pt", "sub/tokenizer.json"):
        assert (dest / rel).read_bytes() == (folder / rel).read_bytes()
    # a policy.pt alone, checked against the manifest beside it; an unpinned uri is verified all the same
    dest, only = download(uri + "policy.pt", None, tmp_path / "b")
    assert only == "policy.pt" and sorted(p.name for p in dest.iterdir()) == ["manifest.json", "policy.pt"]

    with pytest.raises(InvalidInput) as wrong_pin:
        download(uri, "0" * 64, tmp_path / "c")
    assert wrong_pin.value.reason == Reason.INVALID_MODEL and "expected " + "0" * 64 in str(wrong_pin.value)

    with pytest.raises(InvalidInput) as unlisted:
        download(uri + "other.pt", sha, tmp_path / "d")
    assert "does not list other.pt" in str(unlisted.value)

    prefix = uri.removeprefix(f"gs://{gcs.bucket}/")
    gcs.client().bucket(gcs.bucket).blob(prefix + "policy.pt").upload_from_string(b"tampered")
    with pytest.raises(InvalidInput) as corrupted:
        download(uri, sha, tmp_path / "e")
    assert corrupted.value.reason == Reason.INVALID_MODEL and "policy.pt: 8 bytes" in str(corrupted.value)

    with pytest.raises(InvalidInput) as missing:
        download(f"gs://{gcs.bucket}/models/c/nothing-here/", None, tmp_path / "f")
    assert "no manifest.json" in str(missing.value)
