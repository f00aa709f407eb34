"""Each model preset's ``block_name`` is the decoder-layer class of its architecture (checked on tiny
random-initialised configs of the same classes; nothing is downloaded)."""

from __future__ import annotations

import pytest
import yaml
from fttrainer.parallel import find_blocks

from tests.support import ROOT

ARCHITECTURES = {
    "zephyr": ("MistralConfig", "MistralForCausalLM"),
    "pythia28": ("GPTNeoXConfig", "GPTNeoXForCausalLM"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "tiny": ("LlamaConfig", "LlamaForCausalLM"),
}


@pytest.mark.parametrize("preset", sorted(ARCHITECTURES))
def test_block_name_matches_architecture(preset: str):
    import transformers

    cfg = yaml.safe_load((ROOT / "config" / "model" / f"{preset}.yaml").read_text())
    config_cls, model_cls = (getattr(transformers, n) for n in ARCHITECTURES[preset])
    small = config_cls(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = model_cls(small)
    assert len(find_blocks(model, cfg["block_name"])) == 2
    with pytest.raises(ValueError, match="layer classes"):
        find_blocks(model, "NoSuchLayer")
