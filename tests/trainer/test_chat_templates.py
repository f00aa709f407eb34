"""Chat rows are tokenised through the chat template exactly as TRL 1.16 tokenises them, for three template
families shipped as test data (tests/trainer/chat_tokenizers.py): ChatML with EOS != end-of-turn (Qwen2
base), Llama 3 (BOS from the tokenizer, ``<|eot_id|>``) and the trainer's tiny preset.

TRL's own dataset preparation (``DPOTrainer._prepare_dataset``, ``SFTTrainer._prepare_dataset``) runs on
the same rows, in TRL's conversational format, on CPU; no model is involved.
"""

from __future__ import annotations

import copy
import json
import types
from pathlib import Path
from typing import Any

import chat_tokenizers
import pytest
from ftcrd.dataset import ConversationRow, PreferenceRow, parse_row
from fttrainer.data import RowTokenizer, tokenize_row
from fttrainer.losses import IGNORE_INDEX

pytest.importorskip("trl")

FAMILIES = ["chatml", "llama3", "tiny"]
USER = {"role": "user", "content": "What colour is the sky?"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Look it up.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
DPO_ROWS = {
    "single-turn": {
        "input": {"messages": [USER]},
        "preferred_output": [{"role": "assistant", "content": "Blue, on a clear day."}],
        "non_preferred_output": [{"role": "assistant", "content": "Green."}],
    },
    "multi-turn-system": {
        "input": {
            "messages": [
                {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
                {"role": "user", "content": "Say hello."},
                {"role": "assistant", "content": "Hello there!"},
                {"role": "user", "content": "Two plus two?"},
            ]
        },
        "preferred_completion": [{"role": "assistant", "content": "Four."}],
        "non_preferred_completion": [{"role": "assistant", "content": "Five, if you ask nicely, or maybe six."}],
    },
    "tools": {
        "input": {"messages": [{"role": "user", "content": "What is the weather in Paris?"}], "tools": [TOOL]},
        "preferred_output": [
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 degrees"},
            {"role": "assistant", "content": "It is sunny in Paris today, 21 degrees."},
        ],
        "non_preferred_output": [{"role": "assistant", "content": "Look it up."}],
    },
    "content-parts": {
        "input": {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "What colour"}, {"type": "text", "text": "is the sky?"}],
                }
            ]
        },
        "preferred_output": [{"role": "assistant", "content": [{"type": "text", "text": "It is blue."}]}],
        "non_preferred_output": [{"role": "assistant", "content": "Green."}],
    },
}
SFT_ROWS = {
    "single-turn": {
        "messages": [{"role": "system", "content": "Answer briefly."}, USER, {"role": "assistant", "content": "Blue."}]
    },
    "multi-turn": {
        "messages": [
            {"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": "Hello there!"},
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny in Paris today."},
        ],
        "tools": [TOOL],
    },
}
PLAIN_ROWS = [
    {"prompt": "What colour is the sky?", "chosen": " Blue, on a clear day.", "rejected": " Green."},
    {"prompt": "Two plus two?", "chosen": " Four.", "rejected": " Five, if you ask nicely, or maybe six."},
]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory) -> tuple[str, Any]:
    return request.param, chat_tokenizers.build(request.param, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def trl_args(tmp_path_factory):
    from trl import DPOConfig, SFTConfig

    common = {"bf16": False, "use_cpu": True, "report_to": [], "dataset_num_proc": None}
    out = str(tmp_path_factory.mktemp("trl"))
    return DPOConfig(output_dir=out, **common), SFTConfig(output_dir=out, **common)


def trl_messages(messages: list[dict[str, Any]], takes_parts: bool) -> list[dict[str, Any]]:
    """A message list as TRL's users write it for a Hugging Face chat template: tool-call arguments as
    objects, no ``content: null``, and text parts joined unless the template iterates parts."""
    out = copy.deepcopy(messages)
    for m in out:
        if m.get("content") is None:
            m.pop("content", None)
        elif isinstance(m["content"], list) and not takes_parts:
            m["content"] = "\n".join(p["text"] for p in m["content"])
        for call in m.get("tool_calls", []):
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return out


def trl_prepare(trainer_cls: Any, args: Any, tokenizer: Any, example: dict[str, Any], **extra: Any) -> dict[str, Any]:
    from datasets import IterableDataset

    def rows():  # an iterable dataset keeps the Python objects as they are (no Arrow schema)
        yield example

    this = types.SimpleNamespace(_tokenizer=tokenizer, chat_template=None, completion_only_loss=True)
    prepared = trainer_cls._prepare_dataset(this, IterableDataset.from_generator(rows), tokenizer, args, **extra)
    return next(iter(prepared))


def trained(ex_labels: list[int]) -> list[int]:
    return [t for t in ex_labels if t != IGNORE_INDEX]


def assert_ends_with_end_of_turn(name: str, tok: Any, reply: list[int]) -> None:
    """The trained reply carries the template's end-of-turn marker, followed by nothing but the template's
    whitespace; the EOS appears only where it is the end-of-turn."""
    eot = tok.convert_tokens_to_ids(chat_tokenizers.END_OF_TURN[name])
    assert eot in reply, tok.decode(reply)
    last = len(reply) - 1 - reply[::-1].index(eot)
    assert tok.decode(reply[last + 1 :]).strip() == "", tok.decode(reply)
    if eot != tok.eos_token_id:
        assert tok.eos_token_id not in reply


@pytest.mark.parametrize("case", DPO_ROWS)
def test_dpo_rows_equal_trl_and_end_with_end_of_turn(family, trl_args, case):
    from trl import DPOTrainer

    name, tok = family
    raw = DPO_ROWS[case]
    row = parse_row(raw, 1)
    assert isinstance(row, PreferenceRow)
    rt = RowTokenizer(tok)
    ex = tokenize_row(row, 0, rt, max_length=4096, max_prompt_length=2048)

    chosen_key = next(k for k in ("preferred_output", "preferred_completion") if k in raw)
    rejected_key = next(k for k in ("non_preferred_output", "non_preferred_completion") if k in raw)
    example = {
        "prompt": trl_messages(raw["input"]["messages"], rt.takes_parts),
        "chosen": trl_messages(raw[chosen_key], rt.takes_parts),
        "rejected": trl_messages(raw[rejected_key], rt.takes_parts),
    }
    if "tools" in raw["input"]:
        example["tools"] = json.dumps(raw["input"]["tools"])
    theirs = trl_prepare(DPOTrainer, trl_args[0], tok, example, dataset_name="train")

    p = ex.prompt_length
    assert ex.chosen_input_ids[:p] == ex.rejected_input_ids[:p] == theirs["prompt_ids"]
    assert ex.chosen_input_ids[p:] == theirs["chosen_ids"]
    assert ex.rejected_input_ids[p:] == theirs["rejected_ids"]
    assert ex.chosen_labels == [IGNORE_INDEX] * p + theirs["chosen_ids"]
    assert ex.rejected_labels == [IGNORE_INDEX] * p + theirs["rejected_ids"]
    for reply in (trained(ex.chosen_labels), trained(ex.rejected_labels)):
        assert_ends_with_end_of_turn(name, tok, reply)


TOOL_RENDERING = {  # how each template writes the tool list and a call (Llama 3.0's ignores tools)
    "chatml": ('"description": "Look it up."', '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'),
    "tiny": ('"description": "Look it up."', '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'),
}


def test_tools_and_parts_reach_the_template(family):
    """Tools and tool calls are rendered by the templates that write them (arguments as an object); parts
    reach a template that iterates them (Llama 3 here) and are joined with a newline for the others; BOS
    comes from the template alone."""
    name, tok = family
    rt = RowTokenizer(tok)
    text = tok.decode(tokenize_row(parse_row(DPO_ROWS["tools"], 1), 0, rt, 4096, 2048).chosen_input_ids)
    if name in TOOL_RENDERING:
        tools, call = TOOL_RENDERING[name]
        assert text.index(tools) < text.index("What is the weather") < text.index(call)
    assert rt.takes_parts == (name == "llama3")
    parts = tokenize_row(parse_row(DPO_ROWS["content-parts"], 1), 0, rt, 4096, 2048)
    joined = "What colouris the sky?" if name == "llama3" else "What colour\nis the sky?"  # the template trims parts
    assert joined in tok.decode(parts.chosen_input_ids)
    assert (parts.chosen_input_ids[0] == tok.bos_token_id) == (name == "llama3")
    if name == "llama3":  # the template writes it; the tokenizer's own BOS is not added on top
        assert parts.chosen_input_ids.count(tok.bos_token_id) == 1


@pytest.mark.parametrize("case", SFT_ROWS)
def test_supervised_rows_equal_trl_turn_by_turn(family, trl_args, case):
    """A conversation's labels are the union, over its trained turns, of what TRL's SFT trains for
    "prompt = the turns before, completion = this turn"; the sequence is TRL's prompt + completion."""
    from trl import SFTTrainer

    name, tok = family
    raw = SFT_ROWS[case]
    row = parse_row(raw, 1)
    assert isinstance(row, ConversationRow)
    rt = RowTokenizer(tok)
    ex = tokenize_row(row, 0, rt, max_length=4096, max_prompt_length=2048)
    assert not ex.is_pair and ex.rejected_input_ids == []

    messages = trl_messages(raw["messages"], rt.takes_parts)
    expected = [IGNORE_INDEX] * len(ex.chosen_input_ids)
    for i in row.trained_turns():
        example: dict[str, Any] = {"prompt": messages[:i], "completion": messages[i : i + 1]}
        if "tools" in raw:
            example["tools"] = json.dumps(raw["tools"])
        theirs = trl_prepare(
            SFTTrainer, trl_args[1], tok, example, packing=False, formatting_func=None, dataset_name="t"
        )
        n = len(theirs["input_ids"])
        assert ex.chosen_input_ids[:n] == theirs["input_ids"]
        for pos, label in enumerate(theirs["labels"]):
            if label != IGNORE_INDEX:
                expected[pos] = label
        assert_ends_with_end_of_turn(name, tok, trained(theirs["labels"]))
    assert ex.chosen_labels == expected
    assert ex.prompt_length == expected.index(next(t for t in expected if t != IGNORE_INDEX))


def test_weight_0_turns_are_context(family):
    _, tok = family
    raw = copy.deepcopy(SFT_ROWS["multi-turn"])
    raw["messages"][1]["weight"] = 0
    ex = tokenize_row(parse_row(raw, 1), 0, tok, 4096, 2048)
    full = tokenize_row(parse_row(SFT_ROWS["multi-turn"], 1), 0, tok, 4096, 2048)
    assert ex.chosen_input_ids == full.chosen_input_ids  # same conversation, fewer trained tokens
    assert "Hello there!" in tok.decode(trained(full.chosen_labels))
    assert "Hello there!" not in tok.decode(trained(ex.chosen_labels))
    assert tok.decode(trained(ex.chosen_labels)) in tok.decode(trained(full.chosen_labels))


def test_plain_rows_equal_trl_with_bos_as_the_tokenizer_adds_it(family, trl_args):
    """Plain rows: the reference's reply + EOS, and the BOS the tokenizer itself adds (Llama 3 only), as
    TRL's non-conversational path (which tokenises with the tokenizer's special tokens)."""
    from trl import DPOTrainer

    name, tok = family
    rt = RowTokenizer(tok)
    for raw in PLAIN_ROWS:
        ex = tokenize_row(parse_row(raw, 1), 0, rt, 512, 256)
        theirs = trl_prepare(DPOTrainer, trl_args[0], tok, dict(raw), dataset_name="train")
        p = ex.prompt_length
        assert ex.chosen_input_ids[:p] == theirs["prompt_ids"]
        assert ex.chosen_input_ids[p:] == theirs["chosen_ids"] and ex.rejected_input_ids[p:] == theirs["rejected_ids"]
        assert ex.chosen_input_ids[-1] == tok.eos_token_id
        assert (ex.chosen_input_ids[0] == tok.bos_token_id) == (name == "llama3")


def test_shipped_templates_are_the_test_data():
    assert Path(chat_tokenizers.TEMPLATES, "chatml_qwen2.jinja").exists()
    assert chat_tokenizers.chatml().eos_token == "<|endoftext|>" != chat_tokenizers.END_OF_TURN["chatml"]
    assert chat_tokenizers.llama3().bos_token == "<|begin_of_text|>"
