"""Cascades: the small model answers every item; only the items it is unsure of go to the larger model.

- `answer_all`: a model's answer to each instruct.Example, whether it is right, and its **confidence**:
  for a multiple choice, the margin between the top two choices' probabilities (the choices' scores made
  a distribution over the choices by a softmax); for a generated answer, the probability the model gives
  its own greedy answer and the end-of-turn token after it.
- A threshold t **defers** every item whose confidence is below t. `frontier` lists every distinct
  outcome (each threshold between two observed confidences), from "small model only" (nothing deferred)
  to "large model only" (everything deferred); `choose_threshold` picks one on **validation** items, so the
  test accuracy it is reported with was not tuned on the test.
- `cost_per_item`: the small model's cost on every item plus the large model's on the deferred ones.

What leaves the device is exactly the deferred items: the fraction deferred is also the privacy cost.
Shapes: N items.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .chat import chat
from .errors import SLMLabError
from .task_eval import choice_logprobs, normalise


@dataclass(frozen=True)
class Answers:
    """One model's answers to N items: the answer, whether it is right, and its confidence."""
    answers: list[str]
    correct: torch.Tensor            # (N,) bool
    confidence: torch.Tensor         # (N,) in [0, 1]


def choice_margin(scores: torch.Tensor) -> float:
    """The probability margin between the two likeliest choices, softmax(scores) over (C,) choice scores."""
    top = torch.softmax(scores.float(), dim=-1).topk(min(2, scores.numel())).values
    return float(top[0] - top[1]) if top.numel() > 1 else 1.0


@torch.no_grad()
def answer_all(model, tokenizer, examples: Sequence, length_norm: bool | Mapping[str, bool] = True) -> Answers:
    """Answer every example (instruct.Example): multiple choice scored as task_eval scores it (the mean, or
    per family as `length_norm` maps it), exact match of the greedy answer otherwise."""
    answers, correct, confidence = [], [], []
    for ex in examples:
        if ex.choices:
            norm = length_norm if isinstance(length_norm, bool) else length_norm.get(ex.family, True)
            scores = choice_logprobs(model, tokenizer, ex.prompt, ex.choices, norm)
            answer = ex.choices[int(scores.argmax())]
            conf = choice_margin(scores)
            ok = answer == ex.answer
        else:
            answer = chat(model, tokenizer, ex.prompt)
            conf = math.exp(float(choice_logprobs(model, tokenizer, ex.prompt, [answer], length_norm=False)[0]))
            ok = normalise(answer) == normalise(ex.answer)
        answers.append(answer)
        correct.append(ok)
        confidence.append(conf)
    return Answers(answers, torch.tensor(correct, dtype=torch.bool), torch.tensor(confidence, dtype=torch.float64))


@dataclass(frozen=True)
class CascadePoint:
    threshold: float                 # defer the items with confidence < threshold
    deferred: float                  # fraction of items sent to the large model
    accuracy: float


def cascade(small: Answers, large_correct: torch.Tensor, threshold: float) -> CascadePoint:
    """Accuracy and fraction deferred when items with small-model confidence < threshold go to the large model."""
    if small.correct.shape != large_correct.shape:
        raise SLMLabError(f"the small model answered {small.correct.numel()} items and the large one "
                          f"{large_correct.numel()}; answer the same items with both.")
    defer = small.confidence < threshold
    right = torch.where(defer, large_correct.bool(), small.correct)
    return CascadePoint(threshold, float(defer.double().mean()), float(right.double().mean()))


def frontier(small: Answers, large_correct: torch.Tensor) -> list[CascadePoint]:
    """Every distinct cascade, by increasing fraction deferred: thresholds 0 (small only), each observed
    confidence (items strictly below it go), and +inf (large only)."""
    levels = sorted({0.0, *small.confidence.tolist(), math.inf})
    return [cascade(small, large_correct, t) for t in levels]


def choose_threshold(val_small: Answers, val_large_correct: torch.Tensor, max_deferred: float = 0.5) -> float:
    """The threshold with the best validation accuracy among those deferring at most max_deferred of the
    items; on a tie, the one that defers fewer (cheaper) — chosen on validation items, applied to test."""
    if not 0.0 <= max_deferred <= 1.0:
        raise SLMLabError(f"max_deferred={max_deferred} is a fraction of the items; give a number in [0, 1].")
    allowed = [p for p in frontier(val_small, val_large_correct) if p.deferred <= max_deferred]
    return max(allowed, key=lambda p: (p.accuracy, -p.deferred)).threshold


def cost_per_item(deferred: float, small_cost: float, large_cost: float) -> float:
    """The small model runs on every item, the large one on the deferred fraction (FLOPs, seconds or $)."""
    return small_cost + deferred * large_cost
