"""Task accuracy: the Wilson interval against published values, choice scoring against one-sequence-at-a-time
scoring, exact match's normalisation, and the instruction data's split."""
import math

import pytest
import torch
import torch.nn.functional as F

from slm_lab import chat, instruct, task_eval
from test_chat import tiny


@pytest.mark.parametrize("k, n, low, high", [
    (50, 100, 0.4038, 0.5962),            # Wilson (1927); also Newcombe (1998), Table I
    (0, 10, 0.0, 0.2775),                 # z² / (n + z²) at k = 0
    (10, 10, 0.7225, 1.0),
    (81, 263, 0.2553, 0.3662),            # Newcombe (1998), Table I, example (e)
])
def test_wilson_interval_matches_published_values(k, n, low, high):
    lo, hi = task_eval.wilson(k, n)
    assert abs(lo - low) < 6e-4 and abs(hi - high) < 6e-4, (lo, hi)


def test_choice_scores_equal_one_sequence_at_a_time():
    model, tok = chat.add_chat_tokens(*tiny(seed=4))
    prompt, choices = "the fox?", ["dog", "lazy brown", "s"]
    got_mean = task_eval.choice_logprobs(model, tok, prompt, choices)
    got_sum = task_eval.choice_logprobs(model, tok, prompt, choices, length_norm=False)
    head = tok.encode(chat.format_turn(prompt))
    for i, c in enumerate(choices):                        # no padding, no batching: the plain definition
        body = tok.encode(c + chat.END)
        ids = torch.tensor([head + body])
        with torch.no_grad():
            logp = F.log_softmax(model(ids[:, :-1]).logits[0], -1)
        lps = [logp[len(head) - 1 + j, t].item() for j, t in enumerate(body)]
        assert math.isclose(got_sum[i].item(), sum(lps), rel_tol=1e-5, abs_tol=1e-5)
        assert math.isclose(got_mean[i].item(), sum(lps) / len(lps), rel_tol=1e-5, abs_tol=1e-5)
    assert task_eval.choose(model, tok, prompt, choices) == choices[int(got_mean.argmax())]


def test_normalise_ignores_case_space_and_end_punctuation_only():
    assert task_eval.normalise("  And. ") == task_eval.normalise("and") == "and"
    assert task_eval.normalise("o'er") != task_eval.normalise("oer")
    assert task_eval.normalise("good  morrow") == "good morrow"


def test_instruction_data_is_deterministic_disjoint_and_fits_the_context():
    from slm_lab.tokenizer import CharTokenizer
    from slm_lab.data import load_corpus

    tok = chat.ChatTokenizer(CharTokenizer(load_corpus("shakespeare")), chat.SPECIALS)
    a, b = instruct.build(set(tok.base.chars)), instruct.build(set(tok.base.chars))
    assert a == b and len(a.train) >= 1000
    for family in instruct.FAMILIES:
        assert len(a.family(family, "train")) >= 300 and len(a.family(family)) >= 150, family
    quoted = lambda e: e.prompt.split(": ", 1)[-1].split("? ", 1)[-1].split(" ... (")[0]   # noqa: E731
    train_items = {quoted(e) for e in a.train}
    val_items = {quoted(e) for e in a.val}
    assert not [e for e in a.test if quoted(e) in train_items | val_items]  # no test item is a training item
    assert not val_items & train_items and len(a.family("last_word", "val")) >= 50
    for e in a.train + a.test + a.val:
        for answer in e.choices or (e.answer,):             # every choice is scored after the prompt
            assert len(chat.encode_example(tok, e.prompt, answer)[0]) <= 128, e
        if e.choices:
            assert e.answer in e.choices and len(set(e.choices)) == len(e.choices)
    sources = [e.answer for e in a.family("source")]
    assert sources.count("Python") == sources.count("Shakespeare")          # chance is 50%


def test_pick_length_norm_follows_whichever_rule_gets_the_validation_items_right():
    model, tok = chat.add_chat_tokens(*tiny(seed=4))
    prompts = ["the fox?", "a dog", "lazy?", "brown fox", "over the", "dog?"]
    choices = ("s", "lazy brown dog", "fox", "over the lazy dog")
    by_mean, by_sum = [], []
    for p in prompts:                        # answers set by each rule in turn, from the scores themselves
        mean = task_eval.choice_logprobs(model, tok, p, choices)
        total = task_eval.choice_logprobs(model, tok, p, choices, length_norm=False)
        by_mean.append(instruct.Example("m", p, choices[int(mean.argmax())], choices))
        by_sum.append(instruct.Example("s", p, choices[int(total.argmax())], choices))
    assert any(m.answer != s.answer for m, s in zip(by_mean, by_sum))     # the rules disagree somewhere
    assert task_eval.pick_length_norm(model, tok, by_mean + by_sum) == {"m": True, "s": False}
    res = task_eval.evaluate_tasks(model, tok, by_sum, {"s": 0.25}, {"s": False})
    assert res["s"].accuracy == 1.0 and res["s"].how == "multiple choice (sum)"
    assert task_eval.evaluate_tasks(model, tok, by_sum, {"s": 0.25})["s"].accuracy < 1.0
