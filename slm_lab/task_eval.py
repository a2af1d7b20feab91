"""Task accuracy: exact match of generated answers, multiple choice by log-likelihood, and per-task tables
with 95% intervals. Deterministic (greedy decoding, no sampling).

- `exact_match`: the model's greedy answer (`chat.chat`) equals the reference after `normalise`
  (case, surrounding spaces and punctuation do not count).
- `choose`: for each choice, the log-probability the model gives it as the answer (its tokens and the
  end-of-turn token, after the prompt); by default the mean per token, so a long choice is not penalised
  for having more tokens to be wrong about (`length_norm=False` sums instead: the probability of the whole
  answer). Which of the two ranks better depends on the task and the tokenizer — with one token per
  character, the letters after a word's first few are nearly free, so the mean flatters long choices —
  so `pick_length_norm` chooses per family on a validation split, never on the test.
- `wilson`: the Wilson score interval of k successes in n, which stays inside [0, 1] and is honest for
  small n and accuracies near 0 or 1 (unlike the normal approximation p ± 1.96·sqrt(p(1-p)/n)).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .chat import END, _require_chat, chat, format_turn
from .model import SLM

Z95 = 1.959963984540054            # the standard normal's 97.5% quantile


def normalise(text: str) -> str:
    """Lower case, inner whitespace collapsed, surrounding whitespace and punctuation removed."""
    return re.sub(r"\s+", " ", text).strip().strip(".,;:!?'\"").strip().lower()


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (low, high) for k successes in n trials."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if k == 0 else max(0.0, centre - half)          # exactly 0 and 1 at the ends, not 1e-18 off
    return low, 1.0 if k == n else min(1.0, centre + half)


@torch.no_grad()
def choice_logprobs(model: SLM, tokenizer, prompt: str, choices, length_norm: bool = True) -> torch.Tensor:
    """(len(choices),) log-probabilities of each choice as the assistant's answer (mean per token by default)."""
    tok = _require_chat(tokenizer)
    head = tok.encode(format_turn(prompt))
    seqs = [tok.encode(c + END) for c in choices]
    longest = max(len(head) + len(s) for s in seqs)
    device = next(model.parameters()).device
    ids = torch.zeros(len(seqs), longest, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        ids[i, : len(head) + len(s)] = torch.tensor(head + s)
    model.eval()
    logp = F.log_softmax(model(ids[:, :-1]).logits.float(), dim=-1)              # (C, L-1, V)
    scores = []
    for i, s in enumerate(seqs):
        pos = torch.arange(len(head) - 1, len(head) - 1 + len(s), device=device)   # positions predicting s
        lp = logp[i, pos, ids[i, pos + 1]]
        scores.append(lp.mean() if length_norm else lp.sum())
    return torch.stack(scores)


def choose(model: SLM, tokenizer, prompt: str, choices, length_norm: bool = True) -> str:
    """The choice with the highest log-likelihood as the answer."""
    return choices[int(choice_logprobs(model, tokenizer, prompt, choices, length_norm).argmax())]


def exact_match(model: SLM, tokenizer, prompt: str, answer: str, max_new_tokens: int = 24) -> bool:
    return normalise(chat(model, tokenizer, prompt, max_new_tokens)) == normalise(answer)


@dataclass
class TaskResult:
    family: str
    correct: int
    n: int
    baseline: float                # chance, or the trivial rule's accuracy on the same test items
    how: str                       # "multiple choice" or "exact match"

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.correct, self.n)

    def to_dict(self) -> dict:
        lo, hi = self.interval
        return {"family": self.family, "accuracy": self.accuracy, "low": lo, "high": hi, "n": self.n,
                "correct": self.correct, "baseline": self.baseline, "how": self.how}


def evaluate_tasks(model: SLM, tokenizer, test: list, baselines: dict[str, float],
                   length_norm: bool | Mapping[str, bool] = True) -> dict[str, TaskResult]:
    """Accuracy per family of `test` (instruct.Example): multiple choice where an example has choices (scored
    by the mean, or per family as `length_norm` maps it, e.g. from pick_length_norm), exact match of the
    generated answer otherwise."""
    results: dict[str, TaskResult] = {}
    for ex in test:
        how = "multiple choice" if ex.choices else "exact match"
        norm = length_norm if isinstance(length_norm, bool) else length_norm.get(ex.family, True)
        if ex.choices:
            how += " (mean)" if norm else " (sum)"
        ok = (choose(model, tokenizer, ex.prompt, ex.choices, norm) == ex.answer if ex.choices
              else exact_match(model, tokenizer, ex.prompt, ex.answer))
        r = results.setdefault(ex.family, TaskResult(ex.family, 0, 0, baselines.get(ex.family, float("nan")), how))
        r.correct += int(ok)
        r.n += 1
    return results


def pick_length_norm(model: SLM, tokenizer, val: list) -> dict[str, bool]:
    """Per multiple-choice family of `val`: True (score by the mean) unless the sum gets strictly more of the
    validation items right. Choose on validation items, so the test accuracy is not tuned on the test."""
    right: dict[str, list[int]] = {}
    for ex in val:
        if ex.choices:
            r = right.setdefault(ex.family, [0, 0])
            for i, norm in enumerate((True, False)):
                r[i] += choose(model, tokenizer, ex.prompt, ex.choices, norm) == ex.answer
    return {family: not (by_sum > by_mean) for family, (by_mean, by_sum) in right.items()}


def format_results(results: dict[str, TaskResult]) -> str:
    """A table: family, how, n, accuracy [95% interval], baseline."""
    lines = [f"{'task':<12} {'scored by':<22} {'n':>4} {'accuracy':>9} {'95% interval':>15} {'baseline':>9}"]
    for r in results.values():
        lo, hi = r.interval
        lines.append(f"{r.family:<12} {r.how:<22} {r.n:>4} {r.accuracy:>9.1%} {f'{lo:.1%}–{hi:.1%}':>15} "
                     f"{r.baseline:>9.1%}")
    return "\n".join(lines)
