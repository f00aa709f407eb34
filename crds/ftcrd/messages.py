"""Chat messages and tool definitions as OpenAI's fine-tuning files write them, validated.

Used by :mod:`ftcrd.dataset` (the one dataset parser); pure Python. A message keeps what a chat
template needs (role, text, text parts, tool calls, name, tool call id) and, for supervised rows, its
``weight``. Every error names the field by its path in the row (``messages[2].content[0].type``).

OpenAI spellings that chat templates do not know are translated when a message is handed to a
template (:meth:`Message.template_dict`): ``developer`` becomes ``system``, the legacy ``function``
role becomes ``tool``, a legacy ``function_call`` becomes a one-element ``tool_calls``, and tool-call
``arguments`` (a JSON string on the wire) become the object the templates of Hugging Face models
expect, as vLLM does when it serves the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

ROLES = frozenset({"system", "user", "assistant", "developer", "tool", "function"})
TEMPLATE_ROLES = {"developer": "system", "function": "tool"}
IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})
PART_SEPARATOR = "\n"  # text parts are joined with a newline for templates that take strings (vLLM does the same)


class FieldError(ValueError):
    """A problem with one field of the row being parsed; :mod:`ftcrd.dataset` adds the row number."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.detail = message


def fail(field: str, message: str) -> NoReturn:
    raise FieldError(field, message)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        if self.id is not None:
            out["id"] = self.id
        return out


@dataclass(frozen=True)
class Message:
    """One chat message. ``content`` is its text (text parts joined); ``None`` only for an assistant
    turn that only calls tools. ``parts`` keeps the text parts when the file gave a list."""

    role: str
    content: str | None
    parts: tuple[str, ...] | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    name: str | None = None
    tool_call_id: str | None = None
    weight: int = 1
    path: str = field(default="", compare=False)  # where it came from, e.g. "input.messages[0]"

    def template_dict(self, parts: bool) -> dict[str, Any]:
        """The message as a chat template reads it; ``parts``: the template iterates content parts."""
        out: dict[str, Any] = {"role": TEMPLATE_ROLES.get(self.role, self.role)}
        if parts and self.parts is not None:
            out["content"] = [{"type": "text", "text": text} for text in self.parts]
        elif self.content is not None:
            out["content"] = self.content
        if self.tool_calls:
            out["tool_calls"] = [call.as_dict() for call in self.tool_calls]
        if self.name is not None:
            out["name"] = self.name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out

    def plain(self) -> str:
        """The message as plain text, for tokenizers without a chat template: the text, then one JSON
        line per tool call."""
        calls = [json.dumps({"name": c.name, "arguments": c.arguments}, ensure_ascii=False) for c in self.tool_calls]
        return "\n".join([*([self.content] if self.content else []), *calls])

    def line(self) -> str:
        return f"{self.role}: {self.plain()}"

    def text_fields(self) -> list[tuple[str, str]]:
        """(field path, text) for every piece of text the message carries."""
        out = []
        if self.parts is not None:
            out += [(f"{self.path}.content[{i}].text", text) for i, text in enumerate(self.parts)]
        elif self.content is not None:
            out.append((f"{self.path}.content", self.content))
        for i, call in enumerate(self.tool_calls):
            args = json.dumps(call.arguments, ensure_ascii=False)
            out.append((f"{self.path}.tool_calls[{i}].function", f"{call.name} {args}"))
        return out


def check_text(value: Any, where: str, max_chars: int, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        fail(where, f"must be a string, got {type_name(value)}")
    if not allow_empty and not value.strip():
        fail(where, "must be a non-empty string")
    if len(value) > max_chars:
        fail(where, f"is {len(value)} characters long; the limit is {max_chars}")
    return value


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _parts(value: list[Any], where: str, max_chars: int) -> tuple[str, ...]:
    if not value:
        fail(where, "must be a non-empty string or a non-empty list of text parts")
    texts = []
    for i, part in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(part, dict):
            fail(at, f'must be a content part object like {{"type": "text", "text": "..."}}, got {type_name(part)}')
        kind = part.get("type")
        if isinstance(kind, str) and kind in IMAGE_PART_TYPES:  # a list or object is not hashable
            fail(
                at + ".type",
                f"image content ('{kind}') is not supported: this service fine-tunes text-only models; "
                "remove the image part or describe the image in a text part",
            )
        if kind != "text":
            fail(at + ".type", f"only text content parts are supported, got {kind!r}")
        texts.append(check_text(part.get("text"), at + ".text", max_chars))
    return tuple(texts)


def _arguments(value: Any, where: str, max_chars: int) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    text = check_text(value, where, max_chars)
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(where, f"must be a JSON object encoded as a string, but it is not valid JSON ({exc.msg})")
    if not isinstance(parsed, dict):
        fail(where, f"must be a JSON object encoded as a string, got a JSON {type_name(parsed)}")
    return parsed


def _function(value: Any, where: str, max_chars: int, call_id: str | None) -> ToolCall:
    if not isinstance(value, dict):
        fail(where, "must be an object with name and arguments")
    name = check_text(value.get("name"), where + ".name", max_chars)
    return ToolCall(
        name=name, arguments=_arguments(value.get("arguments"), where + ".arguments", max_chars), id=call_id
    )


def _tool_calls(msg: dict[str, Any], where: str, max_chars: int) -> tuple[ToolCall, ...]:
    if "function_call" in msg and msg["function_call"] is not None:  # the legacy spelling of a single call
        if msg.get("tool_calls"):
            fail(where + ".function_call", "use either tool_calls or the legacy function_call, not both")
        return (_function(msg["function_call"], where + ".function_call", max_chars, None),)
    value = msg.get("tool_calls")
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        fail(where + ".tool_calls", "must be a non-empty list of tool calls")
    calls = []
    for i, call in enumerate(value):
        at = f"{where}.tool_calls[{i}]"
        if not isinstance(call, dict):
            fail(at, "must be an object with type 'function' and a function {name, arguments}")
        if call.get("type", "function") != "function":
            fail(at + ".type", f"must be 'function', got {call.get('type')!r}")
        call_id = call.get("id")
        if call_id is not None and not isinstance(call_id, str):
            fail(at + ".id", f"must be a string, got {type_name(call_id)}")
        calls.append(_function(call.get("function"), at + ".function", max_chars, call_id))
    return tuple(calls)


def _optional_str(msg: dict[str, Any], key: str, where: str, max_chars: int) -> str | None:
    if msg.get(key) is None:
        return None
    return check_text(msg[key], f"{where}.{key}", max_chars)


def _weight(msg: dict[str, Any], where: str, role: str, allow_weight: bool) -> int:
    if "weight" not in msg:
        return 1
    at = where + ".weight"
    if not allow_weight:
        fail(
            at, 'weight is only allowed in supervised rows ({"messages": [...]}); a DPO row trains its preferred_output'
        )
    if role != "assistant":
        fail(at, f"weight is only allowed on assistant messages, not on a {role!r} message")
    value = msg["weight"]
    if isinstance(value, bool) or value not in (0, 1):
        fail(at, f"must be 0 (context, not trained) or 1 (trained), got {value!r}")
    return int(value)


def parse_message(msg: Any, where: str, max_chars: int, *, allow_weight: bool) -> Message:
    if not isinstance(msg, dict):
        fail(where, f"must be an object with role and content, got {type_name(msg)}")
    role = msg.get("role")
    if not isinstance(role, str) or role not in ROLES:  # a list or object is not hashable
        fail(where + ".role", f"role must be one of {sorted(ROLES)}, got {role!r}")
    calls = _tool_calls(msg, where, max_chars) if role == "assistant" else ()
    if role != "assistant" and (msg.get("tool_calls") or msg.get("function_call")):
        fail(where + ".tool_calls", f"only assistant messages may call tools, not a {role!r} message")
    content = msg.get("content")
    parts = None
    if isinstance(content, list):
        parts = _parts(content, where + ".content", max_chars)
        content = PART_SEPARATOR.join(parts)
    elif content is None:
        if not calls:
            problem = "is missing" if "content" not in msg else "must be a string or a list of text parts, got null"
            fail(where + ".content", problem + " (only an assistant message with tool_calls may omit its content)")
    else:
        content = check_text(content, where + ".content", max_chars, allow_empty=bool(calls)) or None
    return Message(
        role=role,
        content=content,
        parts=parts,
        tool_calls=calls,
        name=_optional_str(msg, "name", where, max_chars),
        tool_call_id=_optional_str(msg, "tool_call_id", where, max_chars),
        weight=_weight(msg, where, role, allow_weight),
        path=where,
    )


def parse_messages(
    value: Any,
    where: str,
    max_chars: int,
    *,
    allow_weight: bool = False,
    check: Callable[[Message], None] | None = None,
) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        fail(where, f"must be a non-empty list of messages, got {type_name(value) if value != [] else 'an empty list'}")
    out = []
    for i, msg in enumerate(value):
        message = parse_message(msg, f"{where}[{i}]", max_chars, allow_weight=allow_weight)
        if check is not None:
            check(message)
        out.append(message)
    return tuple(out)


def parse_tools(value: Any, where: str, *, legacy: bool = False) -> tuple[dict[str, Any], ...]:
    """OpenAI tool definitions ``[{"type": "function", "function": {"name", "description", "parameters"}}]``,
    passed to the chat template as they are; ``legacy``: the old ``functions`` list, wrapped into tools."""
    if not isinstance(value, list):
        fail(where, f"must be a list of tool definitions, got {type_name(value)}")
    tools = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            fail(at, f"must be an object, got {type_name(item)}")
        tool = {"type": "function", "function": item} if legacy else item
        if tool.get("type") != "function":
            fail(at + ".type", f"must be 'function', got {tool.get('type')!r}")
        function = tool.get("function")
        fn_at = at if legacy else at + ".function"
        if not isinstance(function, dict):
            fail(fn_at, "must be an object with name, description and parameters")
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            fail(fn_at + ".name", "must be a non-empty string")
        if "parameters" in function and not isinstance(function["parameters"], dict):
            fail(fn_at + ".parameters", f"must be a JSON schema object, got {type_name(function['parameters'])}")
        tools.append(tool)
    return tuple(tools)
