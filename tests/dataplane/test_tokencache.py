"""Tokenize once per job (fttrainer.tokencache): the cached examples are exactly what tokenize_rows produces, only
the rows a short run uses are tokenized, a second load reuses the cache, and a row the tokenizer refuses is
invalid input on every rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.distributed as dist
from ftcrd.conditions import Reason
from ftcrd.trainer_config import TrainerConfig, TrainerDataset, TrainerModel, TrainerRun
from ftcrd.types import HyperparametersSpec
from fttrainer import tiny
from fttrainer.config import InvalidInput
from fttrainer.data import Schedule, split_indices, tokenize_rows
from fttrainer.datasource import read_dataset
from fttrainer.parallel import init_distributed
from fttrainer.tokencache import TokenizedDataset, build_part, finish, load_examples, rows_used
from transformers import AutoTokenizer

from tests.support.trainer import synthetic_rows

pytestmark = pytest.mark.process  # a process group and the tiny tokenizer: seconds, not milliseconds

CHAT = {
    "input": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a river."}]},
    "preferred_output": [{"role": "assistant", "content": "The maple river."}],
    "non_preferred_output": [{"role": "assistant", "content": "No."}],
}
SFT = {"messages": [{"role": "user", "content": "Say copper."}, {"role": "assistant", "content": "copper"}]}
HP = HyperparametersSpec.model_validate({"max_length": 40, "max_prompt_length": 16, "batch_size": 4, "seed": 3})


@pytest.fixture(scope="module")
def d():
    group = init_distributed()
    yield group
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = [t for r in synthetic_rows(50) for t in r.values()]
    return AutoTokenizer.from_pretrained(tiny.ensure(tmp_path_factory.mktemp("tiny"), texts, tiny.TinySpec()))


def dataset(tmp: Path, rows: list[dict]):
    path = tmp / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainerConfig(
        job="j",
        model=TrainerModel(preset="tiny", name_or_path="tiny"),
        hyperparameters=HP,
        dataset=TrainerDataset(path=str(path), format="jsonl"),
        run=TrainerRun(run_dir=str(tmp / "run"), checkpoint_dir=str(tmp / "ck")),
    )
    return read_dataset(cfg)


def test_cached_examples_equal_tokenize_rows(tmp_path, tokenizer, d):
    rows = [*synthetic_rows(30), CHAT, SFT, {**CHAT, "preferred_output": [{"role": "assistant", "content": "x" * 300}]}]
    info = dataset(tmp_path, rows)
    cached = load_examples(info, tokenizer, HP, d, None)
    expected = tokenize_rows(list(info.rows()), tokenizer, HP.max_length, HP.max_prompt_length)
    assert len(cached) == len(expected) == len(rows)
    assert [cached[i] for i in range(len(rows))] == expected
    assert cached[-3:] == expected[-3:] and not cached[len(rows) - 2].is_pair  # the supervised row
    folder = cached.folder
    assert folder.parent == tmp_path / "ck" / "data"  # <checkpointDir>/data by default
    meta = (folder / "meta.json").stat().st_mtime_ns
    again = load_examples(info, tokenizer, HP, d, None)
    assert again.folder == folder and (folder / "meta.json").stat().st_mtime_ns == meta  # reused, not rebuilt
    assert cached.nbytes == sum(e.n_tokens for e in expected) * 5 + len(rows) * 6 * 8  # tokens, mask, index


def test_a_short_run_tokenizes_only_the_rows_it_reads(tmp_path, tokenizer, d):
    info = dataset(tmp_path, synthetic_rows(200))
    train, evaluation = split_indices(200, 0.1, HP.seed)
    evaluation = evaluation[:5]
    short = Schedule.create(
        train, batch_size=4, gradient_accumulation_steps=1, world_size=1, seed=HP.seed, n_epochs=None, n_examples=12
    )
    used = rows_used(short, evaluation, 200)
    assert used is not None and len(used) == 12 + 5
    steps = {i for step in range(short.total_steps) for i in short.global_batch(step)}
    assert steps | set(evaluation) == set(used)
    cached = load_examples(info, tokenizer, HP, d, used)
    assert (
        isinstance(cached, TokenizedDataset) and json.loads((cached.folder / "meta.json").read_text())["examples"] == 17
    )
    full = tokenize_rows(list(info.rows()), tokenizer, HP.max_length, HP.max_prompt_length)
    assert all(cached[i] == full[i] for i in used)
    with pytest.raises(IndexError, match="not among the rows tokenized"):
        cached[next(i for i in range(200) if i not in set(used))]
    whole = Schedule.create(
        train, batch_size=4, gradient_accumulation_steps=1, world_size=1, seed=HP.seed, n_epochs=1, n_examples=None
    )
    assert rows_used(whole, evaluation, 200) is None


def test_a_row_the_tokenizer_refuses_is_invalid_input(tmp_path, tokenizer, d):
    rows = [*synthetic_rows(5), {"prompt": "p <|endoftext|>", "chosen": "c", "rejected": "r"}]
    with pytest.raises(InvalidInput) as err:
        load_examples(dataset(tmp_path, rows), tokenizer, HP, d, None)
    assert (
        err.value.reason == Reason.INVALID_DATASET and "row 6" in str(err.value) and "special token" in str(err.value)
    )


@pytest.mark.parametrize(("parts", "used"), [(3, None), (2, [1, 4, 5, 9, 17, 20])])
def test_parts_tokenized_by_the_processes_of_a_node_merge_into_one_dataset(tmp_path, tokenizer, parts, used):
    """What torchrun's local ranks do (each a share of the rows), merged by the node's first process."""
    info = dataset(tmp_path, synthetic_rows(25))
    building = tmp_path / ".building"
    building.mkdir()
    for part in range(parts):
        build_part(info, tokenizer, HP, used, out=building / f"part-{part}", part=part, parts=parts)
    meta = finish(info, building, tmp_path / "tokens", parts, 0.0)
    cached = TokenizedDataset(tmp_path / "tokens")
    full = tokenize_rows(list(info.rows()), tokenizer, HP.max_length, HP.max_prompt_length)
    wanted = range(25) if used is None else used
    assert [cached[i] for i in wanted] == [full[i] for i in wanted]
    assert meta["parts"] == parts and meta["examples"] == len(wanted) and all(n > 0 for n in meta["partTokens"])
    assert not building.exists()  # published by a rename
