"""The trained model: downloaded from the bucket, checked against its manifest, and compared with the model training
started from on held-out pairs (the trainer's own tokenisation and log-prob sums: :mod:`fttrainer.scoring`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ftcrd.names import MANIFEST_NAME

from ftdev.demo import DemoError
from ftdev.gcs import GcsEmulator


def download_verified(emulator: GcsEmulator, uri: str, dest: Path) -> tuple[list[Path], dict[str, Any]]:
    """Every file of the artifact at ``uri``, each checked against the sha256 in its manifest."""
    try:
        files = emulator.download_tree(uri, dest)
    except ValueError as exc:
        raise DemoError(str(exc)) from None
    manifest: dict[str, Any] = json.loads((dest / MANIFEST_NAME).read_text())
    for f in manifest["files"]:
        digest = hashlib.sha256((dest / f["path"]).read_bytes()).hexdigest()
        if digest != f["sha256"]:
            raise DemoError(f"{f['path']}: sha256 {digest} != manifest {f['sha256']}")
    return files, manifest


def evaluate(model_dir: Path, pairs: list[dict[str, str]], hyperparameters: dict[str, Any]) -> tuple[Any, Any]:
    """(before, after) :class:`fttrainer.scoring.Preference` on ``pairs``: the initial model is the tiny preset's
    seeded initialisation (:func:`fttrainer.tiny.seeded_model`) rebuilt from the trained model's config."""
    from ftcrd.dataset import PreferenceRow, parse_row
    from ftcrd.types import HyperparametersSpec
    from fttrainer import tiny
    from fttrainer.scoring import pair_margins, preference
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    rows = [row for i, p in enumerate(pairs) if isinstance(row := parse_row(p, i), PreferenceRow)]
    if len(rows) != len(pairs):
        raise ValueError("held-out rows must be preference pairs {prompt, chosen, rejected}")
    tok = AutoTokenizer.from_pretrained(model_dir)
    trained = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    hp = HyperparametersSpec.model_validate(hyperparameters)  # the job's values, the contract's defaults
    base = tiny.seeded_model(AutoConfig.from_pretrained(model_dir), hp.seed).eval()
    before = preference(pair_margins(base, tok, rows, max_length=hp.max_length, max_prompt_length=hp.max_prompt_length))
    after = preference(
        pair_margins(trained, tok, rows, max_length=hp.max_length, max_prompt_length=hp.max_prompt_length)
    )
    return before, after
