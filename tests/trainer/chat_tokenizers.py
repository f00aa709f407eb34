"""Small local tokenizers for three chat-template families (nothing is downloaded).

* ``chatml``: Qwen2 base style. Byte-level BPE, no BOS, EOS ``<|endoftext|>``, the ChatML template of
  Qwen2.5 (``data/chat_templates/chatml_qwen2.jinja``): turns end with ``<|im_end|>``, which is NOT the
  EOS, and tools are written into the system turn.
* ``llama3``: Llama 3 base style. BOS ``<|begin_of_text|>`` added by the tokenizer's post-processor (as
  the real one does), EOS ``<|end_of_text|>``, turns end with ``<|eot_id|>``; the template
  (``data/chat_templates/llama3.jinja``) writes ``bos_token`` itself and iterates content parts.
* ``tiny``: the trainer's own tiny preset (:mod:`fttrainer.tiny`): turns end with its EOS.

The BPE vocabularies are trained on the fly on a small corpus (deterministic), with the family's
special tokens; the templates are the test data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).resolve().parent / "data" / "chat_templates"
CORPUS = [
    "What colour is the sky? Blue, on a clear day. Green. It is blue.",
    "Two plus two? Four. Five, if you ask nicely, or maybe six.",
    "What is the weather in Paris? It is sunny in Paris today, 21 degrees.",
    "You are a helpful assistant. Answer briefly. Say hello. Hello there! Goodbye forever.",
    "get_weather city date Look it up. Thanks, and in Rome? Rome is rainy.",
    'the quick brown fox jumps over the lazy dog {"type": "object", "properties": {}}',
]
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "tiny": "<|endoftext|>"}


def template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text().strip()


def _bpe(special: list[str], vocab_size: int = 512) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


def chatml() -> Any:
    from transformers import PreTrainedTokenizerFast

    tok = _bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = template("chatml_qwen2")
    return fast


def llama3() -> Any:
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _bpe(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|end_of_text|>",
    )
    fast.chat_template = template("llama3")
    return fast


def tiny(cache: Path) -> Any:
    from fttrainer import tiny as tiny_preset
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_preset.ensure(cache, CORPUS, tiny_preset.TinySpec()))


def build(name: str, cache: Path) -> Any:
    return {"chatml": chatml, "llama3": llama3}[name]() if name != "tiny" else tiny(cache)
