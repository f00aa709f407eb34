"""Tokenisation rules around the chat templates: truncation sides, BOS, special tokens in text, templates that
refuse a conversation, tokenizers without a template, and supervised examples in a batch."""

from __future__ import annotations

import pytest
from chat_tokenizers import chatml, llama3
from ftcrd.dataset import DatasetError, parse_row
from fttrainer.data import RowTokenizer, collate, tokenize_row, tokenize_rows
from fttrainer.losses import IGNORE_INDEX

LONG = "the quick brown fox jumps over the lazy dog " * 6
PLAIN = {"prompt": LONG, "chosen": " Blue, on a clear day.", "rejected": " Green."}
CHAT = {
    "input": {"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": LONG}]},
    "preferred_output": [{"role": "assistant", "content": "Blue."}],
    "non_preferred_output": [{"role": "assistant", "content": "Green."}],
}


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_plain_prompt_truncation_keeps_the_chosen_side_and_the_bos():
    tok = llama3()
    row = parse_row(PLAIN, 1)
    prompt = [tok.bos_token_id, *ids(tok, LONG)]
    untouched = tokenize_row(row, 0, tok, max_length=512, max_prompt_length=256)
    assert untouched.chosen_input_ids[: untouched.prompt_length] == prompt

    end = tokenize_row(row, 0, tok, max_length=24, max_prompt_length=10)  # default keep_end
    assert end.prompt_length == 10
    assert end.chosen_input_ids[:10] == [tok.bos_token_id, *prompt[-9:]]  # BOS, then the prompt's end
    start = tokenize_row(row, 0, tok, max_length=24, max_prompt_length=10, truncation_side="keep_start")
    assert start.chosen_input_ids[:10] == prompt[:10]
    for ex in (end, start):
        assert len(ex.chosen_input_ids) <= 24 and ex.rejected_input_ids[-1] == tok.eos_token_id


def test_chat_prompt_truncation_sides():
    tok = llama3()
    row = parse_row(CHAT, 1)
    full = tokenize_row(row, 0, tok, max_length=1024, max_prompt_length=512)
    prompt = full.chosen_input_ids[: full.prompt_length]
    end = tokenize_row(row, 0, tok, max_length=40, max_prompt_length=20)
    assert end.chosen_input_ids[:20] == [tok.bos_token_id, *prompt[-19:]]  # ends with the assistant header
    assert tok.decode(end.chosen_input_ids[20:]) == "Blue.<|eot_id|>"
    start = tokenize_row(row, 0, tok, max_length=40, max_prompt_length=20, truncation_side="keep_start")
    assert start.chosen_input_ids[:20] == prompt[:20]
    reply = full.chosen_input_ids[full.prompt_length :]
    assert [e.chosen_input_ids[20:] for e in (end, start)] == [reply, reply]


def test_supervised_conversation_truncation_cuts_the_context_first():
    tok = chatml()
    raw = {"messages": [{"role": "user", "content": LONG}, {"role": "assistant", "content": "Blue, on a clear day."}]}
    row = parse_row(raw, 1)
    full = tokenize_row(row, 0, tok, max_length=1024, max_prompt_length=512)
    reply = full.chosen_labels[full.prompt_length :]
    assert len(reply) > 5
    cut = tokenize_row(row, 0, tok, max_length=16 + 5, max_prompt_length=16)  # context to 16, then the reply to 5
    assert cut.prompt_length == 16 and cut.chosen_labels == [IGNORE_INDEX] * 16 + reply[:5]
    assert cut.chosen_input_ids == full.chosen_input_ids[full.prompt_length - 16 : full.prompt_length] + reply[:5]
    start = tokenize_row(row, 0, tok, max_length=16 + 5, max_prompt_length=16, truncation_side="keep_start")
    assert start.chosen_input_ids == full.chosen_input_ids[:16] + reply[:5]
    fits = tokenize_row(row, 0, tok, max_length=16 + len(reply), max_prompt_length=16)
    assert fits.chosen_labels[16:] == reply


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"prompt": "Say hello.", "chosen": " Hello<|endoftext|>", "rejected": " Bye."},
            "row 3: field 'chosen': contains '<|endoftext|>', a special token of the model's tokenizer",
        ),
        (
            {**CHAT, "input": {"messages": [{"role": "user", "content": "Hi<|im_end|>"}]}},
            "row 3: field 'input.messages[0].content': contains '<|im_end|>'",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "<|im_start|>system"}]},
                    {"role": "assistant", "content": "x"},
                ]
            },
            "row 3: field 'messages[0].content[0].text': contains '<|im_start|>'",
        ),
    ],
)
def test_text_with_special_tokens_is_refused(raw, message):
    with pytest.raises(DatasetError) as err:
        tokenize_row(parse_row(raw, 3), 0, chatml(), 512, 256)
    assert str(err.value).startswith(message)


def test_a_template_that_refuses_the_conversation_names_the_row():
    tok = chatml()
    tok.chat_template = "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}"
    with pytest.raises(
        DatasetError, match=r"^row 7: the model's chat template refused this conversation: Conversation roles"
    ):
        tokenize_row(parse_row(CHAT, 7), 0, tok, 512, 256)


def test_a_template_that_rewrites_earlier_turns_is_refused_for_multi_turn_training():
    tok = chatml()  # drops every assistant turn but the last, as reasoning templates do with their thoughts
    tok.chat_template = (
        "{% for m in messages %}{% if m.role != 'assistant' or loop.last %}"
        "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    hello: dict = {"role": "assistant", "content": "Hello there!"}
    again = [{"role": "user", "content": "Again?"}, {"role": "assistant", "content": "Hi."}]
    row = parse_row({"messages": [{"role": "user", "content": "Say hello."}, hello, *again]}, 2)
    with pytest.raises(DatasetError, match=r"^row 2: field 'messages\[1\]': the model's chat template renders"):
        tokenize_row(row, 0, tok, 512, 256)
    context_only = {"messages": [{"role": "user", "content": "Say hello."}, {**hello, "weight": 0}, *again]}
    ok = tokenize_row(parse_row(context_only, 2), 0, tok, 512, 256)  # the earlier turn as context: fine
    assert tok.decode([t for t in ok.chosen_labels if t != IGNORE_INDEX]) == "Hi.<|im_end|>\n"


def test_without_a_template_the_reference_rendering_with_eos():
    tok = chatml()
    tok.chat_template = None
    rt = RowTokenizer(tok)
    ex = tokenize_row(parse_row(CHAT, 1), 0, rt, 512, 256)
    p = ex.prompt_length
    assert tok.decode(ex.chosen_input_ids[:p]) == f"system: Answer briefly.\nuser: {LONG}\nassistant: "
    assert ex.chosen_input_ids[p:] == [*ids(tok, "Blue."), tok.eos_token_id]
    raw = {
        "messages": [
            {"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": "Hello there!"},
            {"role": "user", "content": "Again?"},
            {"role": "assistant", "content": "Hi.", "weight": 1},
        ]
    }
    conv = tokenize_row(parse_row(raw, 1), 0, rt, 512, 256)
    assert tok.decode(conv.chosen_input_ids) == (
        "user: Say hello.\nassistant: Hello there!<|endoftext|>\nuser: Again?\nassistant: Hi.<|endoftext|>"
    )
    trained = [t for t in conv.chosen_labels if t != IGNORE_INDEX]
    assert trained == [*ids(tok, "Hello there!"), tok.eos_token_id, *ids(tok, "Hi."), tok.eos_token_id]


def test_supervised_examples_batch_with_pairs():
    tok = chatml()
    rows = [
        parse_row(CHAT, 1),
        parse_row({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}, 2),
    ]
    exs = tokenize_rows(rows, tok, 1024, 512, truncation_side="keep_start")
    assert [e.is_pair for e in exs] == [True, False]
    batch = collate(exs, tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 4
    assert batch["attention_mask"][3].sum() == 0 and (batch["labels"][3] == IGNORE_INDEX).all()
    assert batch["input_ids"][1, : len(exs[1].chosen_input_ids)].tolist() == exs[1].chosen_input_ids


def test_a_template_that_drops_the_reply_is_refused():
    tok = chatml()
    tok.chat_template = (
        "{% for m in messages %}{% if m.role != 'assistant' %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(DatasetError, match=r"^row 4: the model's chat template renders no tokens for the chosen reply"):
        tokenize_row(parse_row(CHAT, 4), 0, tok, 512, 256)
    conversation = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    with pytest.raises(DatasetError, match=r"^row 5: field 'messages\[1\]': the model's chat template renders no"):
        tokenize_row(parse_row(conversation, 5), 0, tok, 512, 256)
