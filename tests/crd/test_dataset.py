"""The one dataset parser (ftcrd.dataset): every OpenAI row shape, accepted and refused, with the message
the API returns as a 400 and the trainer as InvalidDataset."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from ftcrd.dataset import ConversationRow, DatasetError, Message, PreferenceRow, load_rows, parse_row
from ftcrd.messages import ToolCall

USER = {"role": "user", "content": "What is the weather in Paris?"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
DPO = {
    "input": {"messages": [USER]},
    "preferred_output": [{"role": "assistant", "content": "Sunny."}],
    "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
}
SFT = {"messages": [USER, {"role": "assistant", "content": "Sunny."}]}


def jsonl(*rows: Any) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def one(row: Any) -> Any:
    return parse_row(row, 1)


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**json.loads(json.dumps(base)), **changes}


# ------------------------------------------------------------------------------------------ accepted


def test_plain_pairs_are_unchanged():
    row = one({"prompt": "Two plus two?", "chosen": " Four.", "rejected": " Five."})
    assert row == PreferenceRow(prompt="Two plus two?", chosen=" Four.", rejected=" Five.")
    assert row.is_pair and row.messages is None and row.prompt_text() == "Two plus two?"
    assert row.text_fields() == [("prompt", "Two plus two?"), ("chosen", " Four."), ("rejected", " Five.")]


def test_every_container_takes_every_shape_and_counts_lines():
    plain = {"prompt": "p", "chosen": "c", "rejected": "r"}
    rows = load_rows(jsonl(plain, DPO, SFT), "jsonl")
    assert [type(r).__name__ for r in rows] == ["PreferenceRow", "PreferenceRow", "ConversationRow"]
    assert [r.number for r in rows] == [1, 2, 3]
    assert load_rows(gzip.compress(json.dumps([plain, DPO, SFT]).encode()), "novalto") == rows
    blank_lines = b"\n" + jsonl(plain) + b"\n\n" + json.dumps(with_(SFT, messages=[])).encode()
    with pytest.raises(DatasetError, match=r"^row 4: field 'messages': must be a non-empty list"):
        load_rows(blank_lines, "openai")


def test_supervised_rows_train_assistant_turns_with_weight_1():
    row = one(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                USER,
                {"role": "assistant", "content": "Let me look.", "weight": 0},
                {"role": "user", "content": "Well?"},
                {"role": "assistant", "content": "Sunny.", "weight": 1},
            ]
        }
    )
    assert isinstance(row, ConversationRow) and not row.is_pair
    assert row.trained_turns() == [4]
    assert [m.weight for m in row.messages] == [1, 1, 0, 1, 1]
    assert row.messages[2].path == "messages[2]"
    assert one(SFT).trained_turns() == [1]  # no weight: trained


def test_tools_tool_calls_and_tool_results():
    row = one(
        {
            "messages": [
                USER,
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'},
                {"role": "assistant", "content": "Sunny."},
            ],
            "tools": [TOOL],
            "parallel_tool_calls": False,
        }
    )
    assert row.tools == (TOOL,)
    call = row.messages[1]
    assert call.content is None and call.tool_calls == (ToolCall("get_weather", {"city": "Paris"}, "call_1"),)
    assert call.template_dict(parts=False) == {
        "role": "assistant",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}, "id": "call_1"}
        ],
    }
    assert row.messages[2].template_dict(parts=False) == {
        "role": "tool",
        "content": '{"sky": "clear"}',
        "tool_call_id": "call_1",
    }
    assert call.plain() == '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert row.trained_turns() == [1, 3]


def test_legacy_function_calling_becomes_tools():
    row = one(
        {
            "messages": [
                USER,
                {"role": "assistant", "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"role": "function", "name": "get_weather", "content": "sunny"},
                {"role": "assistant", "content": "Sunny."},
            ],
            "functions": [TOOL["function"]],
        }
    )
    assert row.tools == (TOOL,)
    assert row.messages[1].tool_calls == (ToolCall("get_weather", {"city": "Paris"}),)
    assert row.messages[2].template_dict(parts=False) == {"role": "tool", "content": "sunny", "name": "get_weather"}


def test_content_parts_and_developer_role():
    row = one(
        with_(
            SFT,
            messages=[
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather"}, {"type": "text", "text": "Paris?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Sunny."}]},
            ],
        )
    )
    dev, user, reply = row.messages
    assert dev.template_dict(parts=False) == {"role": "system", "content": "Be brief."}
    assert user.content == "Weather\nParis?" and user.parts == ("Weather", "Paris?")
    assert user.template_dict(parts=True)["content"] == [
        {"type": "text", "text": "Weather"},
        {"type": "text", "text": "Paris?"},
    ]
    assert user.template_dict(parts=False)["content"] == "Weather\nParis?"
    assert reply.content == "Sunny."
    assert ("messages[1].content[1].text", "Paris?") in row.text_fields()


@pytest.mark.parametrize(
    ("chosen_key", "rejected_key"),
    [
        ("preferred_output", "non_preferred_output"),
        ("preferred_completion", "non_preferred_completion"),
        ("preferred_output", "non_preferred_completion"),
    ],
)
def test_dpo_rows_take_both_spellings(chosen_key, rejected_key):
    raw = {"input": DPO["input"], chosen_key: DPO["preferred_output"], rejected_key: DPO["non_preferred_output"]}
    row = one(raw)
    assert isinstance(row, PreferenceRow) and row.is_pair
    assert (row.chosen, row.rejected) == ("Sunny.", "No idea.")
    assert row.messages == (Message("user", USER["content"]),)
    assert row.chosen_turns()[0].path == f"{chosen_key}[0]"


def test_dpo_multi_turn_tools_and_several_reply_messages_stay_messages():
    raw = {
        "input": {
            "messages": [
                {"role": "system", "content": "Be brief."},
                USER,
                {"role": "assistant", "content": "Hm?"},
                USER,
            ],
            "tools": [TOOL],
        },
        "preferred_output": [
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."},
        ],
        "non_preferred_output": [
            {"role": "assistant", "content": "First line."},
            {"role": "assistant", "content": "More."},
        ],
    }
    row = one(raw)
    assert row.tools == (TOOL,) and len(row.messages) == 4
    assert [m.role for m in row.chosen_turns()] == ["assistant", "tool", "assistant"]
    assert len(row.rejected_turns()) == 2
    # the plain-text form keeps the messages apart (it used to be "First line.More.")
    assert row.rejected == "First line.\nassistant: More."
    assert row.chosen.endswith("\ntool: sunny\nassistant: Sunny.")
    assert one(with_(raw, input={"messages": [USER]}, tools=[TOOL])).tools == (TOOL,)  # top-level tools too


def test_pairs_required_refuses_supervised_rows_by_line():
    data = jsonl(DPO, SFT)
    assert len(load_rows(data, "jsonl")) == 2
    with pytest.raises(DatasetError) as err:
        load_rows(data, "jsonl", require_pairs=True)
    assert str(err.value).startswith("row 2: field 'messages': is a supervised row without a rejected reply")
    assert "preferred_output" in str(err.value)


# ------------------------------------------------------------------------------------------ refused

ASSISTANT = {"role": "assistant", "content": "Sunny."}
REFUSED = {
    "sft-empty": (with_(SFT, messages=[]), "messages", "must be a non-empty list of messages"),
    "sft-not-list": (with_(SFT, messages="hi"), "messages", "must be a non-empty list of messages, got str"),
    "sft-assistant-first": (with_(SFT, messages=[ASSISTANT]), "messages[0].role", "must start with a system"),
    "sft-no-assistant": (with_(SFT, messages=[USER]), "messages", "has no assistant message to train on"),
    "sft-all-weight-0": (
        with_(SFT, messages=[USER, {**ASSISTANT, "weight": 0}]),
        "messages",
        "has no assistant message to train on",
    ),
    "weight-2": (with_(SFT, messages=[USER, {**ASSISTANT, "weight": 2}]), "messages[1].weight", "must be 0"),
    "weight-string": (with_(SFT, messages=[USER, {**ASSISTANT, "weight": "1"}]), "messages[1].weight", "must be 0"),
    "weight-bool": (with_(SFT, messages=[USER, {**ASSISTANT, "weight": True}]), "messages[1].weight", "must be 0"),
    "weight-on-user": (
        with_(SFT, messages=[{**USER, "weight": 1}, ASSISTANT]),
        "messages[0].weight",
        "only allowed on assistant messages",
    ),
    "weight-in-dpo": (
        with_(DPO, preferred_output=[{**ASSISTANT, "weight": 1}]),
        "preferred_output[0].weight",
        "only allowed in supervised rows",
    ),
    "image-part": (
        with_(SFT, messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        "messages[0].content[0].type",
        "image content ('image_url') is not supported",
    ),
    "audio-part": (
        with_(SFT, messages=[{"role": "user", "content": [{"type": "input_audio"}]}, ASSISTANT]),
        "messages[0].content[0].type",
        "only text content parts are supported, got 'input_audio'",
    ),
    "role-a-list": (with_(SFT, messages=[{"role": [], "content": "hi"}]), "messages[0].role", "got []"),
    "part-type-an-object": (
        with_(SFT, messages=[{"role": "user", "content": [{"type": {}}]}, ASSISTANT]),
        "messages[0].content[0].type",
        "only text content parts are supported, got {}",
    ),
    "part-not-object": (
        with_(SFT, messages=[{"role": "user", "content": ["hi"]}, ASSISTANT]),
        "messages[0].content[0]",
        "must be a content part object",
    ),
    "empty-parts": (
        with_(SFT, messages=[{"role": "user", "content": []}, ASSISTANT]),
        "messages[0].content",
        "non-empty",
    ),
    "empty-part-text": (
        with_(SFT, messages=[{"role": "user", "content": [{"type": "text", "text": " "}]}, ASSISTANT]),
        "messages[0].content[0].text",
        "must be a non-empty string",
    ),
    "user-null-content": (
        with_(SFT, messages=[{"role": "user", "content": None}, ASSISTANT]),
        "messages[0].content",
        "got null (only an assistant message with tool_calls may omit its content)",
    ),
    "assistant-no-content": (with_(SFT, messages=[USER, {"role": "assistant"}]), "messages[1].content", "is missing"),
    "content-number": (
        with_(SFT, messages=[{"role": "user", "content": 5}, ASSISTANT]),
        "messages[0].content",
        "got int",
    ),
    "bad-role": (
        with_(SFT, messages=[{"role": "robot", "content": "hi"}, ASSISTANT]),
        "messages[0].role",
        "role must be",
    ),
    "arguments-not-json": (
        with_(
            SFT,
            messages=[
                USER,
                {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{"}}]},
            ],
        ),
        "messages[1].tool_calls[0].function.arguments",
        "not valid JSON",
    ),
    "arguments-not-object": (
        with_(
            SFT,
            messages=[
                USER,
                {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "[1]"}}]},
            ],
        ),
        "messages[1].tool_calls[0].function.arguments",
        "got a JSON list",
    ),
    "call-without-name": (
        with_(SFT, messages=[USER, {"role": "assistant", "tool_calls": [{**CALL, "function": {"arguments": "{}"}}]}]),
        "messages[1].tool_calls[0].function.name",
        "must be a string, got null",
    ),
    "call-type": (
        with_(SFT, messages=[USER, {"role": "assistant", "tool_calls": [{**CALL, "type": "code"}]}]),
        "messages[1].tool_calls[0].type",
        "must be 'function'",
    ),
    "user-tool-calls": (
        with_(SFT, messages=[{**USER, "tool_calls": [CALL]}, ASSISTANT]),
        "messages[0].tool_calls",
        "only assistant messages may call tools",
    ),
    "tools-not-list": (with_(SFT, tools={"a": 1}), "tools", "must be a list of tool definitions, got dict"),
    "tool-type": (with_(SFT, tools=[{**TOOL, "type": "retrieval"}]), "tools[0].type", "must be 'function'"),
    "tool-no-name": (with_(SFT, tools=[{"type": "function", "function": {}}]), "tools[0].function.name", "non-empty"),
    "tools-twice": (with_(DPO, input={"messages": [USER], "tools": [TOOL]}, tools=[TOOL]), "tools", "once"),
    "dpo-user-reply": (
        with_(DPO, preferred_output=[{"role": "user", "content": "x"}]),
        "preferred_output[0].role",
        "must have role 'assistant'",
    ),
    "dpo-reply-ends-with-tool": (
        with_(DPO, non_preferred_output=[{**ASSISTANT, "tool_calls": [CALL]}, {"role": "tool", "content": "x"}]),
        "non_preferred_output",
        "last message must have role 'assistant'",
    ),
    "dpo-both-spellings": (
        with_(DPO, preferred_completion=DPO["preferred_output"]),
        "preferred_completion",
        "use either 'preferred_output' or 'preferred_completion', not both",
    ),
    "dpo-missing-rejected": (
        {k: v for k, v in DPO.items() if k != "non_preferred_output"},
        "non_preferred_output",
        "is missing",
    ),
    "dpo-input-not-object": (with_(DPO, input=[USER]), "input", "must be an object with a 'messages' list"),
    "dpo-and-messages": (with_(SFT, preferred_output=DPO["preferred_output"]), "preferred_output", "either 'messages'"),
    "too-long": (
        with_(SFT, messages=[{"role": "user", "content": "x" * 101}, ASSISTANT]),
        "messages[0].content",
        "101",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_rows_name_line_and_field(case):
    row, field, detail = REFUSED[case]
    data = jsonl({"prompt": "p", "chosen": "c", "rejected": "r"}, row)
    with pytest.raises(DatasetError) as err:
        load_rows(data, "jsonl", max_field_chars=100)
    assert (err.value.row, err.value.field) == (2, field)
    assert detail in err.value.detail
    assert str(err.value).startswith(f"row 2: field '{field}': ")


def test_plain_row_errors_are_unchanged():
    with pytest.raises(DatasetError, match=r"^row 1: field 'rejected': is missing$"):
        one({"prompt": "p", "chosen": "c"})
    with pytest.raises(DatasetError, match=r"^row 1: field 'chosen': must be a non-empty string$"):
        one({"prompt": "p", "chosen": " ", "rejected": "r"})
    with pytest.raises(DatasetError, match=r"^row 1: must be a JSON object, got list$"):
        one([1])
