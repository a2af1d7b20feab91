"""Cascades: the confidence against hand-computed values, every cascade against a brute-force count, the
threshold chosen on validation items only, and the answers against task_eval's own scoring."""
import math
import random

import pytest
import torch
import torch.nn.functional as F

from slm_lab import cascade, chat, instruct, task_eval
from slm_lab.errors import SLMLabError
from test_chat import tiny


def answers(correct, confidence):
    return cascade.Answers([""] * len(correct), torch.tensor(correct, dtype=torch.bool),
                           torch.tensor(confidence, dtype=torch.float64))


def brute_force(correct_small, correct_large, confidence, threshold):
    """The definition, one item at a time."""
    right = deferred = 0
    for s, big, c in zip(correct_small, correct_large, confidence, strict=True):
        if c < threshold:
            deferred += 1
            right += big
        else:
            right += s
    return deferred / len(confidence), right / len(confidence)


def test_choice_margin_is_the_gap_between_the_top_two_probabilities():
    assert math.isclose(cascade.choice_margin(torch.tensor([0.6, 0.3, 0.1]).log()), 0.3, abs_tol=1e-6)
    assert math.isclose(cascade.choice_margin(torch.tensor([2.0, 2.0])), 0.0, abs_tol=1e-7)


def test_every_cascade_matches_a_brute_force_count():
    rng = random.Random(0)
    n = 40
    small_ok = [rng.random() < 0.6 for _ in range(n)]
    large_ok = [rng.random() < 0.8 for _ in range(n)]
    conf = [round(rng.random(), 2) for _ in range(n)]           # rounded: ties between items happen
    small = answers(small_ok, conf)
    points = cascade.frontier(small, torch.tensor(large_ok))
    assert points[0].deferred == 0.0 and math.isclose(points[0].accuracy, sum(small_ok) / n)
    assert points[-1].deferred == 1.0 and math.isclose(points[-1].accuracy, sum(large_ok) / n)
    assert [p.deferred for p in points] == sorted(p.deferred for p in points)
    got = {(round(p.deferred, 9), round(p.accuracy, 9)) for p in points}
    for t in [i / 200 for i in range(201)] + [math.inf]:
        d, a = brute_force(small_ok, large_ok, conf, t)
        assert (round(d, 9), round(a, 9)) in got, t


def test_threshold_is_chosen_on_validation_within_the_deferral_budget():
    # validation: deferring the two least confident items helps; deferring more only costs
    val = answers([False, False, True, True, True, True], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    t = cascade.choose_threshold(val, torch.tensor([True, True, True, False, False, False]), max_deferred=0.5)
    assert math.isclose(t, 0.3)                                   # defers exactly the items below 0.3
    # with no room to defer, the small model answers everything
    assert cascade.choose_threshold(val, torch.tensor([True] * 6), max_deferred=0.0) == 0.0
    # on a tie the cheaper cascade wins: the large model is never better, so defer nothing
    assert cascade.choose_threshold(val, torch.tensor([False, False, True, True, True, True])) == 0.0
    with pytest.raises(SLMLabError, match="fraction"):
        cascade.choose_threshold(val, torch.tensor([True] * 6), max_deferred=1.5)
    with pytest.raises(SLMLabError, match="same items"):
        cascade.cascade(val, torch.tensor([True] * 5), 0.3)


def test_answers_and_confidence_follow_the_scoring_they_come_from():
    model, tok = chat.add_chat_tokens(*tiny(seed=4))
    mc = instruct.Example("m", "the fox?", "dog", ("dog", "lazy brown", "s"))
    gen = instruct.Example("g", "a dog", "the")
    got = cascade.answer_all(model, tok, [mc, gen], {"m": False})
    assert got.answers[0] == task_eval.choose(model, tok, mc.prompt, mc.choices, length_norm=False)
    assert got.correct[0] == (got.answers[0] == "dog")
    # the generated answer's confidence: the product of its tokens' probabilities and END's, computed directly
    answer = chat.chat(model, tok, gen.prompt)
    assert got.answers[1] == answer
    head = tok.encode(chat.format_turn(gen.prompt))
    body = tok.encode(answer + chat.END)
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([head + body])).logits[0], -1)
    direct = math.exp(sum(logp[len(head) - 1 + j, t].item() for j, t in enumerate(body)))
    assert math.isclose(float(got.confidence[1]), direct, rel_tol=1e-4)


def test_cost_counts_the_small_model_always_and_the_large_one_when_deferred():
    assert cascade.cost_per_item(0.0, 1.0, 8.0) == 1.0
    assert cascade.cost_per_item(0.25, 1.0, 8.0) == 3.0
