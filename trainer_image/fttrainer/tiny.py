"""The ``tiny`` model preset: a random-initialised small Llama and a byte-level BPE tokenizer.

Nothing is downloaded. The tokenizer is trained on the dataset's own text with ``tokenizers``, the
model is initialised from ``seed``; both are saved with ``save_pretrained`` into a cache directory
keyed by a hash of everything that determines them, so every rank (and every node, even without a
shared filesystem) builds byte-identical files and later loads go through the ordinary
``from_pretrained`` path, exactly like a real checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TINY_NAME = "tiny"
SPECIAL_TOKENS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>"]
# Zephyr-style: every turn ends with EOS, so a trained reply ends with it and the model learns to stop.
# Tools and tool calls are written as JSON (tiny models are for demos and tests, not for tool use).
CHAT_TEMPLATE = (
    "{% if tools %}<|system|>\n{{ tools | tojson }}{{ eos_token }}{% endif %}"
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] or '' }}"
    "{% for call in message['tool_calls'] or [] %}<tool_call>{{ call['function'] | tojson }}</tool_call>{% endfor %}"
    "{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    vocab_size: int = 384
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    tie_word_embeddings: bool = False
    seed: int = 0


def _digest(spec: TinySpec, texts: list[str]) -> str:
    h = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode())
    h.update(CHAT_TEMPLATE.encode())
    for text in texts:
        h.update(hashlib.sha256(text.encode()).digest())
    return h.hexdigest()[:16]


def _train_tokenizer(texts: list[str], vocab_size: int) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build(out_dir: Path, texts: list[str], spec: TinySpec) -> None:
    """Write tokenizer + random-initialised LlamaForCausalLM into ``out_dir`` (must not exist)."""
    from transformers import LlamaConfig

    tokenizer = _train_tokenizer(texts, spec.vocab_size)
    vocab = len(tokenizer)  # type: ignore[arg-type]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,  # type: ignore[attr-defined]
        eos_token_id=tokenizer.eos_token_id,  # type: ignore[attr-defined]
        pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
    )
    model = seeded_model(config, spec.seed)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)  # type: ignore[attr-defined]


def seeded_model(config: Any, seed: int) -> Any:
    """``LlamaForCausalLM(config)`` initialised from ``seed`` (the global RNG is left as it was): the preset's
    untrained weights, which the demo rebuilds from a trained model's config to compare before and after."""
    import torch
    from transformers import LlamaForCausalLM

    cpu_rng = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        return LlamaForCausalLM(config)
    finally:
        torch.set_rng_state(cpu_rng)


def ensure(cache_dir: Path, texts: Iterable[str], spec: TinySpec) -> Path:
    """The directory holding the tiny model for these texts and spec, building it if needed.

    Safe to call from several processes at once: each builds into a private temporary directory and
    renames it into place; a loser of the race discards its copy (the contents are identical).
    """
    texts = list(texts)
    target = cache_dir / f"tiny-{_digest(spec, texts)}"
    if (target / "config.json").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=cache_dir))
    try:
        build(tmp, texts, spec)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
