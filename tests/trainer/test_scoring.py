"""fttrainer.scoring (what the demo compares before and after training) and the tiny preset's seeded start."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ftcrd.dataset import PreferenceRow
from fttrainer import tiny
from fttrainer.losses import batch_logps
from fttrainer.scoring import pair_margins, preference

ROWS = [
    PreferenceRow(prompt="How much is 1 plus 2?", chosen=" Sure! 1 plus 2 is 3.", rejected=" No."),
    PreferenceRow(prompt="Name a colour.", chosen=" Sure! Blue.", rejected=" No. I will not name anything at all."),
    PreferenceRow(prompt="Add 5 and 8.", chosen=" 13", rejected=" No. It is 15."),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    texts = [t for r in ROWS for t in (r.prompt_text(), r.chosen, r.rejected)]
    return tiny.ensure(Path(tmp_path_factory.mktemp("tiny")), texts, tiny.TinySpec(seed=3))


def test_the_seeded_start_is_the_built_model(model_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    built = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    rebuilt = tiny.seeded_model(AutoConfig.from_pretrained(model_dir), seed=3).state_dict()
    assert built.keys() == rebuilt.keys()
    assert all(torch.equal(built[k], rebuilt[k]) for k in built)
    other = tiny.seeded_model(AutoConfig.from_pretrained(model_dir), seed=4).state_dict()
    assert not all(torch.equal(built[k], other[k]) for k in built)


def test_margins_are_the_trainers_log_ratio_and_ignore_padding(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    batched = pair_margins(model, tok, ROWS, max_length=64, max_prompt_length=32, batch_size=3)
    single = pair_margins(model, tok, ROWS, max_length=64, max_prompt_length=32, batch_size=1)
    assert batched == pytest.approx(single, abs=1e-4)  # right padding changes nothing
    # One row by hand: prompt tokens masked, EOS appended to the response, log-probs summed.
    row = ROWS[0]
    prompt = tok(row.prompt, add_special_tokens=False)["input_ids"]

    def logp(response: str) -> float:
        ids = prompt + tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        labels = [-100] * len(prompt) + ids[len(prompt) :]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits
        return float(batch_logps(logits, torch.tensor([labels]))[0])

    assert single[0] == pytest.approx(logp(row.chosen) - logp(row.rejected), abs=1e-4)


def test_preference_summary():
    p = preference([2.0, -1.0, 0.5, 0.0])
    assert p.mean_margin == pytest.approx(0.375)
    assert p.chosen_share == 0.5
    with pytest.raises(ValueError, match="no pairs"):
        preference([])
