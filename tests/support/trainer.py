"""The trainer as a test dependency: a learnable synthetic preference set and a runner for real ``torchrun`` (or
plain ``python``) trainer processes on CPU (fixtures ``trainer``, ``trainer_session``)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from ftdev import free_port

from tests.support import PYTHONPATH, ROOT

__all__ = ["BIN", "ROOT", "Run", "Trainer", "free_port", "synthetic_rows"]

BIN = Path(sys.executable).parent
WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "maple",
    "ember",
    "frost",
    "willow",
    "harbor",
    "meadow",
    "lantern",
    "copper",
    "velvet",
    "orbit",
    "canyon",
]


def synthetic_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Chosen answers agree politely and echo the prompt's last word; rejected ones refuse."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(WORDS, 3)
        k = rng.randint(1, 3)
        rows.append(
            {
                "prompt": f"Tell me about {' '.join(words)}.\n",
                "chosen": "yes " * k + f"the {words[-1]} is lovely.",
                "rejected": "no " * k + f"I refuse {rng.choice(WORDS)}.",
            }
        )
    return rows


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    run_dir: Path
    termination: Path

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def termination_message(self) -> dict:
        return json.loads(self.termination.read_text())


# Small, fast defaults: a few dozen steps of the tiny preset.
TINY_ARGS = [
    "model=tiny",
    "datasets=[novalto]",
    "loss=dpo",
    "loss.beta=0.1",
    "batch_size=8",
    "eval_batch_size=16",
    "lr=3e-3",
    "optimizer=AdamW",
    "warmup_steps=2",
    "max_length=48",
    "max_prompt_length=24",
    "dataset.validation_fraction=0.2",
    "eval_every=100000",
    "do_first_eval=false",
    "minimum_log_interval_secs=0",
]


class Trainer:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.tiny_cache = tmp / "tiny-cache"
        self.extra_env: dict[str, str] = {}

    def dataset(self, rows: list | None = None, name: str = "pairs.json", raw: str | bytes | None = None) -> Path:
        path = self.tmp / name
        if raw is not None:
            path.write_bytes(raw if isinstance(raw, bytes) else raw.encode())
        else:
            path.write_text(json.dumps(rows if rows is not None else synthetic_rows(160)))
        return path

    def env(self, termination: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FTJ_", "RANK", "WORLD_SIZE", "MASTER_"))}
        env.update(
            PYTHONPATH=PYTHONPATH,
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            OMP_NUM_THREADS="1",
            TOKENIZERS_PARALLELISM="false",
            TERMINATION_MESSAGE_PATH=str(termination),
            FTT_TINY_CACHE=str(self.tiny_cache),
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        )
        env.update(self.extra_env)
        return env

    def _paths(self, name: str) -> tuple[Path, Path]:
        run_dir = self.tmp / name
        return run_dir, self.tmp / f"{name}.termination"

    def args(self, name: str, dataset: Path, extra: list[str]) -> list[str]:
        run_dir, _ = self._paths(name)
        return [
            *TINY_ARGS,
            f"exp_name={name}",
            f"dataset.path={dataset}",
            f"run_dir={run_dir}",
            f"checkpoint_dir={run_dir}/checkpoints",
            *extra,
        ]

    def python(self, name: str, dataset: Path, *extra: str, timeout: float = 300) -> Run:
        return self._run(
            name, [str(BIN / "python"), "-m", "fttrainer.train", *self.args(name, dataset, list(extra))], timeout
        )

    def torchrun(self, name: str, dataset: Path, *extra: str, nproc: int = 2, timeout: float = 300) -> Run:
        cmd = [str(BIN / "torchrun"), "--standalone", "--nnodes", "1", f"--nproc-per-node={nproc}"]
        cmd += ["-m", "fttrainer.train", *self.args(name, dataset, list(extra))]
        return self._run(name, cmd, timeout)

    def launch(self, name: str, dataset: Path, *extra: str, nproc: int = 2, timeout: float = 300) -> Run:
        """What a pod runs: ``python -m fttrainer.launch`` (torchrun deciding the exit code) around the trainer."""
        cmd = [str(BIN / "python"), "-m", "fttrainer.launch", "--standalone", "--nnodes=1", f"--nproc-per-node={nproc}"]
        cmd += ["-m", "fttrainer.train", *self.args(name, dataset, list(extra))]
        return self._run(name, cmd, timeout)

    def two_nodes(self, name: str, dataset: Path, *extra: str, timeout: float = 300) -> Run:
        """Two torchrun invocations (--nnodes 2 --node-rank 0/1) rendezvousing on loopback."""
        run_dir, termination = self._paths(name)
        port = free_port()
        env = self.env(termination)
        t0 = time.monotonic()
        procs = []
        for node in (0, 1):
            cmd = [str(BIN / "torchrun"), "--nnodes", "2", f"--node-rank={node}", "--nproc-per-node=1"]
            cmd += ["--master-addr", "127.0.0.1", f"--master-port={port}"]
            cmd += ["-m", "fttrainer.train", *self.args(name, dataset, list(extra))]
            procs.append(
                subprocess.Popen(cmd, env=env, cwd=self.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            )
        outs = [p.communicate(timeout=timeout) for p in procs]
        code = max(abs(p.returncode) for p in procs)
        return Run(code, outs[0][0] + outs[1][0], outs[0][1] + outs[1][1], time.monotonic() - t0, run_dir, termination)

    def run_command(self, name: str, cmd: list[str], timeout: float = 300) -> Run:
        return self._run(name, cmd, timeout)

    def _run(self, name: str, cmd: list[str], timeout: float) -> Run:
        run_dir, termination = self._paths(name)
        t0 = time.monotonic()
        p = subprocess.run(
            cmd, check=False, env=self.env(termination), cwd=self.tmp, capture_output=True, text=True, timeout=timeout
        )
        return Run(p.returncode, p.stdout, p.stderr, time.monotonic() - t0, run_dir, termination)


@pytest.fixture
def trainer(tmp_path: Path) -> Trainer:
    return Trainer(tmp_path)


@pytest.fixture(scope="session")
def trainer_session(tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    """One directory for the whole session, so the tiny model is built once and runs can be compared."""
    return Trainer(tmp_path_factory.mktemp("trainer"))
