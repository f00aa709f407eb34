"""Activation-checkpointing policies and ``torch.compile`` of the blocks (``fttrainer.parallel``) change how a
packed forward/backward is computed, not its result: the same log-probs and gradients as the plain model."""

from __future__ import annotations

import copy

import pytest
import torch
from fttrainer.logprobs import sequence_logps
from fttrainer.packing import layout
from fttrainer.parallel import CHECKPOINT_POLICIES, apply_activation_checkpointing, compile_blocks
from packing_cases import PAD, max_abs_diff, skewed_examples, tiny_llama

BLOCK = "LlamaDecoderLayer"


def forward_backward(model, packed: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    batch = layout(skewed_examples(5, seed=21), pairs=True, packed=packed, pad_token_id=PAD)
    model.zero_grad(set_to_none=True)
    logps = sequence_logps(model, batch, chunk_tokens=16)
    (logps * torch.linspace(-1, 1, batch.rows, dtype=logps.dtype)).sum().backward()
    return logps.detach(), {n.replace("._checkpoint_wrapped_module", ""): p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("policy", CHECKPOINT_POLICIES)
def test_activation_checkpointing_policies_keep_logps_and_gradients(policy):
    model = tiny_llama(seed=20, layers=3).train()
    want = forward_backward(copy.deepcopy(model))
    wrapped = copy.deepcopy(model)
    apply_activation_checkpointing(wrapped, BLOCK, policy)
    kinds = [type(m).__name__ for m in wrapped.model.layers]
    expected = (
        ["CheckpointWrapper", BLOCK, "CheckpointWrapper"] if policy == "every_other" else ["CheckpointWrapper"] * 3
    )
    assert kinds == expected
    got = forward_backward(wrapped)
    torch.testing.assert_close(got[0], want[0], atol=1e-10, rtol=0)
    assert max_abs_diff(got[1], want[1]) <= 1e-10


def test_unknown_checkpointing_policy_is_refused():
    with pytest.raises(ValueError, match="full"):
        apply_activation_checkpointing(tiny_llama(seed=20), BLOCK, "sometimes")


def test_compiled_blocks_give_the_same_packed_logps_and_gradients():
    """float32 (inductor fuses ops, so the last bits differ): 1e-4 on gradients of order 1-10."""
    model = tiny_llama(seed=22, dtype=torch.float32).train()
    want = forward_backward(copy.deepcopy(model))
    compiled = copy.deepcopy(model)
    assert compile_blocks(compiled, BLOCK) == 2
    got = forward_backward(compiled)
    assert got[1].keys() == want[1].keys()  # names unchanged: checkpoints and export are unaffected
    torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=1e-5)
    assert max_abs_diff(got[1], want[1]) <= 1e-4


def test_the_crd_offers_exactly_the_trainers_policies():
    from typing import get_args

    from ftcrd.types import CheckpointingPolicy, HyperparametersSpec

    assert get_args(CheckpointingPolicy) == CHECKPOINT_POLICIES
    hp = HyperparametersSpec.model_validate({"packing": True, "maxTokensPerMicroBatch": 4096, "compile": True})
    assert (hp.packing, hp.max_tokens_per_micro_batch, hp.compile, hp.activation_checkpointing_policy) == (
        True,
        4096,
        True,
        "full",
    )
