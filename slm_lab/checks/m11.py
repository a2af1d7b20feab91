"""Checks for lab 11 — the small model with a larger one: speculative decoding's accept/reject step, and the
threshold of a cascade.

`accept_draft` is random, so its check is statistical but deterministic: it runs the student's rule with a
generator of a fixed seed per call (the same seeds every run), hundreds of times on each of a few hand-built
(p, q, draft) cases, and compares the frequencies with the exact law the definition gives — position i's draft
kept with probability min(1, p/q), a replacement drawn from max(0, p − q) normalised, a bonus from p[k] when
all k are kept. (The law is written here because the package only draws from it; tests/test_checks_m11.py holds
it against the package's frequencies.) A frequency fits a probability when a count at least that far out has a
binomial chance of at least `LEVEL` (about 6 standard errors), so a correct rule passes whatever order it draws
its random numbers in (fewer than one set of seeds in a million would fail it); each case is built so that the
usual mistakes land far outside. The law of a
mistake is the same formula with one piece changed (the ratio inverted, the replacement drawn from p, the bonus
from the wrong row, ...): a frequency off the definition is named by the mistake whose law fits it best. The
greedy (one-hot) cases are compared with the package's `speculative.accept_draft`, output for output.

`choose_threshold`'s reference is `slm_lab.cascade.choose_threshold`. A threshold is only defined up to the
gap between two observed confidences, so an answer is right when it defers the same validation items (those
with confidence < threshold) as the reference's. A wrong answer is compared with what each usual mistake
(the budget ignored, ≤ instead of <, ties to the costlier side, ...) returns on the same items.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .. import cascade, speculative
from . import CheckFailed, call, fail, forbids, passed
from .remote import Remote

LEVEL = 1e-9          # a frequency fits a probability unless a count this far out has a smaller chance
DRAWS = 300           # calls per statistical case: the mistakes below are many standard errors away


def _type(value) -> str:
    return value.type_name if isinstance(value, Remote) else type(value).__name__


# ----------------------------------------------------------------------------------- accept_draft ----
def _case(rows_p: list, rows_q: list, draft: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.tensor(rows_p, dtype=torch.float32), torch.tensor(rows_q, dtype=torch.float32),
            torch.tensor(draft, dtype=torch.long))


# (name, p (k+1, V), q (k, V), draft (k,)). Each position is built so that a mistake changes a probability by
# far more than the noise of DRAWS draws, or gives a token the definition never gives.
_CASES = (
    # Position 0: p(x) = 0.2 < q(x) = 0.5, kept 40% of the time; the residual [0, .6, .4, 0, 0] excludes the
    # draft's own token 0, which p, q and |p - q| all give. Position 1: p(x) > q(x), always kept. The bonus
    # row p[2] gives tokens 0 and 1 no mass; p[1] gives them 70%, q[1] half.
    ("A", _case([[.2, .4, .3, .1, 0.], [.1, .6, .1, .1, .1], [0., 0., .1, .3, .6]],
                [[.5, .1, .1, .2, .1], [.2, .3, .3, .1, .1]], [0, 1])),
    # Three positions, kept 75%, 50% and 50% of the time, residuals on different tokens at each; q[0] gives
    # token 3 no mass, which the residual must still reach.
    ("B", _case([[.1, .3, .45, .15], [.3, .2, .1, .4], [.5, .2, .1, .2], [0., .1, .9, 0.]],
                [[.3, .1, .6, 0.], [.6, .1, .2, .1], [.1, .1, .4, .4]], [2, 0, 3])),
    # The target rules the draft's token out: p(x) = 0, never kept (q/p would always keep it). The check runs it
    # once first: a rule that never appends a new token is told that, not that the bonus is missing.
    ("C", _case([[.3, .2, .2, .3, 0., 0.], [1 / 6] * 6], [[.1, .1, .1, .1, .5, .1]], [4])),
)


def _one_hot(rows: list[int], V: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(rows), V).float()


# Greedy (temperature 0): p and q one-hot, the drafts the draft model's argmax.
_GREEDY = tuple((name, _one_hot(p_top, 5), _one_hot(draft, 5), torch.tensor(draft))
                for name, p_top, draft in (("greedy, the second draft wrong", [1, 3, 0, 2], [1, 4, 0]),
                                           ("greedy, every draft right", [1, 3, 0, 2], [1, 3, 0]),
                                           ("greedy, the first draft wrong", [1, 3, 0, 2], [2, 3, 0])))

ACCEPT: dict[str, tuple[Callable[[float, float], float], str]] = {
    "definition": (lambda px, qx: min(1.0, px / qx), ""),
    "inverted": (lambda px, qx: min(1.0, qx / px) if px > 0 else 1.0,
                 "the ratio is inverted — keep draft x with probability min(1, p(x)/q(x)), the target's "
                 "probability over the draft's: a token the target likes more than the draft did is always kept"),
    "p": (lambda px, qx: px,
          "keeps the draft with probability p(x) — the rule is min(1, p(x)/q(x)): divide by the draft's q(x)"),
    "flipped": (lambda px, qx: 1.0 - min(1.0, px / qx),
                "the test is the wrong way round: it keeps the draft when u ≥ p(x)/q(x); keep it when "
                "u < p(x)/q(x), for u uniform in [0, 1)"),
    "sure": (lambda px, qx: float(px >= qx),
             "keeps a draft only when p(x) ≥ q(x) — when p(x) < q(x) keep it with probability p(x)/q(x) "
             "(draw u uniform in [0, 1) and keep it if u < p(x)/q(x)), else the text is not p's"),
}


def _normalised(w: torch.Tensor) -> torch.Tensor:
    return w / w.sum()


RESIDUAL: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], str]] = {
    "definition": (lambda p, q: _normalised((p - q).clamp(min=0)), ""),
    "p": (lambda p, q: p,
          "draws the replacement from p — draw it from the residual max(0, p − q), normalised: the accepted "
          "drafts already gave p's tokens their share up to q, the replacement adds only what is missing"),
    "abs": (lambda p, q: _normalised((p - q).abs()),
            "the residual is |p − q| — it is max(0, p − q): the tokens the draft over-proposes (q > p) get no mass"),
    "q": (lambda p, q: q, "draws the replacement from q, the draft's distribution — draw it from max(0, p − q), "
                          "normalised"),
    "swapped": (lambda p, q: _normalised((q - p).clamp(min=0)),
                "the residual is max(0, q − p), the wrong way round — it is max(0, p − q), the mass the draft "
                "under-proposes"),
    "argmax": (lambda p, q: torch.nn.functional.one_hot((p - q).clamp(min=0).argmax(), p.numel()).double(),
               "the replacement is always the residual's most likely token — draw it from max(0, p − q), "
               "normalised (torch.multinomial, with the generator)"),
}

BONUS: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], str]] = {
    "definition": (lambda p, q: p[-1], ""),
    "previous row": (lambda p, q: p[-2],
                     "the bonus is drawn from p[k − 1], the last draft's row — draw it from p[k], the target's "
                     "distribution after the last draft (its one extra position)"),
    "draft": (lambda p, q: q[-1], "the bonus is drawn from the draft's q — draw it from the target's p[k]"),
    "argmax": (lambda p, q: torch.nn.functional.one_hot(p[-1].argmax(), p.shape[1]).double(),
               "the bonus is always p[k]'s most likely token — draw it from p[k] (torch.multinomial, with the "
               "generator)"),
}


def _binomial_tail(count: int, m: int, prob: float) -> float:
    """P(X ≥ count) when count is above the mean m·prob, else P(X ≤ count); X ~ Binomial(m, prob), 0 < prob < 1."""
    lp, lq, lm = math.log(prob), math.log1p(-prob), math.lgamma(m + 1)
    js = range(count, m + 1) if count >= m * prob else range(0, count + 1)
    return sum(math.exp(lm - math.lgamma(j + 1) - math.lgamma(m - j + 1) + j * lp + (m - j) * lq) for j in js)


def _fits(count: int, m: int, prob: float) -> bool:
    """Whether count in m draws fits probability prob: exactly where prob is 0 or 1, else by the binomial tail."""
    if m == 0:
        return True
    if prob <= 1e-12:
        return count == 0
    if prob >= 1 - 1e-12:
        return count == m
    return _binomial_tail(count, m, prob) >= LEVEL


def _outcome(out, p: torch.Tensor, draft: torch.Tensor, what: str) -> tuple[int, int]:
    """The (n, new token) of one result (n, tokens), after the contract's shape checks; a usual slip is named."""
    k, V = draft.shape[0], p.shape[1]
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        fail(f"{what} should return the pair (n, tokens), got {_type(out)}"
             f"{f' of length {len(out)}' if isinstance(out, (tuple, list)) else ''}.")
    n, tokens = out
    if isinstance(n, torch.Tensor) and n.numel() == 1 and not n.dtype.is_floating_point and n.dtype != torch.bool:
        n = int(n)
    if not isinstance(n, int) or isinstance(n, bool):
        fail(f"{what}: n should be an int, the number of drafts kept; got {_type(n)}.")
    if not isinstance(tokens, torch.Tensor):
        fail(f"{what}: tokens should be a 1-D tensor of token ids (the kept drafts, then one new token), "
             f"got {_type(tokens)}.")
    if tokens.dim() != 1 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        fail(f"{what}: tokens should be a 1-D tensor of integer token ids, got shape {tuple(tokens.shape)} and "
             f"dtype {tokens.dtype}.")
    t, d = tokens.tolist(), draft.tolist()
    if len(t) == n + 1 and 0 <= n <= k:
        if t[:n] != d[:n]:
            fail(f"{what}: the first n = {n} tokens should be the kept drafts themselves, {d[:n]}; got {t[:n]}.")
        if not 0 <= t[n] < V:
            fail(f"{what}: the new token {t[n]} is not an id of the vocabulary of {V}.")
        return n, t[n]
    if len(t) == n and n >= 1 and t[:n - 1] == d[:n - 1] and (n > k or t[n - 1] != d[n - 1]):
        fail(f"{what}: n counts the new token too — n is the number of drafts kept; the tokens are those n and "
             "one more.")
    if len(t) == n == k and t == d:
        fail(f"{what}: no bonus token — when all k drafts are kept, add one more, drawn from p[k] (the target "
             "scored that position anyway), so n + 1 tokens come back.")
    if len(t) == n and t == d[:n]:
        fail(f"{what}: the new token is missing — after the n kept drafts comes one more, drawn from the residual "
             "(or, when all k are kept, the bonus from p[k]): n + 1 tokens in all.")
    if len(t) == n + 2 and n == k - 1 and t[:k] == d:
        fail(f"{what}: all {k} drafts were kept but n is {n} — n is k then (a for loop's variable stops at k − 1).")
    if len(t) == n + 2 and t[:n + 1] == d[:n + 1]:
        fail(f"{what}: n is one less than the number of drafts kept ({n + 1}: n + 1 tokens are drafts).")
    fail(f"{what} returned n = {n} and {len(t)} tokens for k = {k} drafts; n must be in 0…{k} (the drafts kept) "
         "with n + 1 tokens (those drafts, then one new token).")


def _run(rule, p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor, seed: int, what: str) -> tuple[int, int]:
    gen = torch.Generator().manual_seed(seed)
    try:
        out = call(rule, p.clone(), q.clone(), draft.clone(), gen, what=what)
    except CheckFailed as exc:        # torch's own words for the usual slips, said in the lab's terms
        text = str(exc)
        if "probability tensor contains" in text:
            fail(f"{what}: torch.multinomial refused the residual — p − q is negative where the draft "
                 "over-proposes: clip it at 0, max(0, p − q), then normalise.")
        if "invalid multinomial distribution" in text:
            fail(f"{what}: torch.multinomial got weights that sum to 0 — max(0, p − q) has no mass only when p(x) ≥ "
                 "q(x) at the draft, and such a draft is always kept: was it rejected?")
        if "p_in >= 0 && p_in <= 1" in text:
            fail(f"{what}: torch.bernoulli got p(x)/q(x) above 1 — the chance to keep a draft is min(1, p(x)/q(x)).")
        raise
    return _outcome(out, p, draft, what)


def _laws(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor):
    """The law of each rule: {name: [P(keep) at each position]}, {name: [(V,) replacement law per position]},
    {name: (V,) bonus law}, from the float32 inputs in float64."""
    p64, q64 = p.double(), q.double()
    pairs = [(float(p64[i, x]), float(q64[i, x])) for i, x in enumerate(draft.tolist())]
    keep = {name: [rule(px, qx) for px, qx in pairs] for name, (rule, _) in ACCEPT.items()}
    resid = {name: [rule(p64[i], q64[i]) for i in range(len(pairs))] for name, (rule, _) in RESIDUAL.items()}
    bonus = {name: rule(p64, q64) for name, (rule, _) in BONUS.items()}
    return keep, resid, bonus


def _log_likelihood(trials: list[tuple[int, int, float]]) -> float:
    """log P(counts) of (count, m, prob) binomial trials, up to terms that do not depend on prob."""
    total = 0.0
    for count, m, prob in trials:
        for c, pr in ((count, prob), (m - count, 1 - prob)):
            if c:
                total += c * math.log(pr) if pr > 0 else -math.inf
    return total


def _judge(name: str, p, q, draft, outcomes: list[tuple[int, int]], what: str) -> None:
    """Compare the (n, new token) of the draws with the definition's law; name the mistake whose law fits (the
    likeliest, when several do)."""
    k, V = draft.shape[0], p.shape[1]
    keep_law, resid_law, bonus_law = _laws(p, q, draft)
    reached = [sum(n >= i for n, _ in outcomes) for i in range(k)]
    kept = [sum(n > i for n, _ in outcomes) for i in range(k)]
    new = [[sum(n == i and y == v for n, y in outcomes) for v in range(V)] for i in range(k + 1)]
    # Each part of the law as binomial trials (count, m, prob): kept at position i; new token v after a rejection
    # at i; bonus token v.
    Trials = Callable[[Any], list[tuple[int, int, float]]]
    parts: tuple[tuple[dict[str, tuple[Any, str]], dict[str, Any], Trials], ...] = (
        (ACCEPT, keep_law, lambda law: [(kept[i], reached[i], law[i]) for i in range(k)]),
        (RESIDUAL, resid_law, lambda law: [(new[i][v], sum(new[i]), float(law[i][v])) for i in range(k)
                                           for v in range(V)]),
        (BONUS, bonus_law, lambda law: [(new[k][v], sum(new[k]), float(law[v])) for v in range(V)]),
    )
    where = f"(case {name}, {len(outcomes)} draws)"
    for j, (rules, laws, trials) in enumerate(parts):
        if all(_fits(*t) for t in trials(laws["definition"])):
            continue
        fitting = [(_log_likelihood(trials(laws[slip])), msg) for slip, (_, msg) in rules.items()
                   if slip != "definition" and all(_fits(*t) for t in trials(laws[slip]))]
        if fitting:
            fail(f"{what}: {max(fitting)[1]} {where}.")
        if j == 0:
            i = next(i for i in range(k) if not _fits(kept[i], reached[i], keep_law["definition"][i]))
            x = int(draft[i])
            fail(f"{what} kept the draft at position {i} in {kept[i]} of the {reached[i]} draws that reached it "
                 f"({kept[i] / reached[i]:.0%}); with p(x) = {float(p[i, x]):.2f} and q(x) = {float(q[i, x]):.2f} "
                 f"it is kept with probability min(1, p/q) = {keep_law['definition'][i]:.0%} {where}.")
        if j == 1:
            i, v = next((i, v) for i in range(k) for v in range(V)
                        if not _fits(new[i][v], sum(new[i]), float(resid_law["definition"][i][v])))
            fail(f"{what}: after a rejection at position {i} the new token was {v} in {new[i][v]} of {sum(new[i])} "
                 f"draws ({new[i][v] / sum(new[i]):.0%}); max(0, p − q), normalised, gives it "
                 f"{float(resid_law['definition'][i][v]):.0%} {where}.")
        v = next(v for v in range(V) if not _fits(new[k][v], sum(new[k]), float(bonus_law["definition"][v])))
        fail(f"{what}: with all {k} drafts kept the bonus token was {v} in {new[k][v]} of {sum(new[k])} draws "
             f"({new[k][v] / sum(new[k]):.0%}); p[k] gives it {float(bonus_law['definition'][v]):.0%} {where}.")


@forbids("slm_lab.speculative.accept_draft")
def check_accept_draft(accept_draft) -> None:
    """accept_draft(p (k+1, V), q (k, V), draft (k,), generator) → (n, (n+1,) tokens): each draft kept with
    probability min(1, p/q) until the first rejection, replaced by a draw from max(0, p − q) normalised; when
    all k are kept, a bonus token from p[k]."""
    what = "accept_draft"
    name, p, q, draft = _CASES[2][0], *_CASES[2][1]
    _run(accept_draft, p, q, draft, 0, what)           # the result's form first, on a case that always rejects
    name, p, q, draft = _CASES[0][0], *_CASES[0][1]
    again = {_run(accept_draft, p, q, draft, 12345, what) for _ in range(10)}
    if len(again) > 1:
        fail(f"{what}: the same seeded generator gave {len(again)} different results in 10 calls — draw every "
             "random number with generator=generator (torch.rand(..., generator=generator), torch.multinomial(..., "
             "generator=generator)), so a seeded run repeats itself.")
    for c, (name, (p, q, draft)) in enumerate(_CASES):
        outcomes = [_run(accept_draft, p, q, draft, 1000 * c + j, what) for j in range(DRAWS)]
        _judge(name, p, q, draft, outcomes, what)
    for name, p, q, draft in _GREEDY:
        for seed in range(3):
            n, y = _run(accept_draft, p, q, draft, seed, f"{what} ({name})")
            ref_n, ref = speculative.accept_draft(p, q, draft, torch.Generator().manual_seed(seed))
            if n != ref_n:
                fail(f"{what} ({name}): kept {n} drafts, expected {ref_n} — with one-hot p and q (temperature 0) "
                     "a draft is kept exactly when it is the target's most likely token.")
            if y != int(ref[-1]):
                if ref_n == len(draft) and y == int(p[-2].argmax()):
                    fail(f"{what} ({name}): {BONUS['previous row'][1]}.")
                if ref_n < len(draft) and y == int(draft[ref_n]):
                    fail(f"{what} ({name}): the new token is the rejected draft itself — draw it from "
                         "max(0, p − q), which gives the rejected token no mass.")
                fail(f"{what} ({name}): the new token is {y}, expected {int(ref[-1])}, the target's most likely "
                     f"token at position {ref_n}.")
    passed("accept/reject step", f"kept with min(1, p/q), residual max(0, p − q), bonus from p[k]; "
                                 f"{len(_CASES)} cases × {DRAWS} seeded draws fit the exact law, greedy as the target")


# -------------------------------------------------------------------------------- choose_threshold ----
def _answers(correct: str, confidence: list[float]) -> cascade.Answers:
    """Answers from '1'/'0' flags and confidences (the answers' text is not needed)."""
    return cascade.Answers([""] * len(correct), torch.tensor([c == "1" for c in correct]),
                           torch.tensor(confidence, dtype=torch.float64))


def _flags(correct: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in correct])


# (name, small-model answers, large model correct, max_deferred), chosen so that each mistake in SLIPS defers a
# different set of items on at least one case. Budgets are either strictly between two reachable fractions or
# exactly one with a power-of-two count of items, so a count in float32 reaches it exactly too.
_ITEMS = (
    # The two least sure are wrong and the large model knows them: defer below 0.3 (two items at 0.3 exactly,
    # which ≤ would defer as well); deferring more only costs.
    ("two unsure items", _answers("00111111", [.1, .2, .3, .3, .5, .6, .7, .9]), _flags("11100000"), 0.5),
    # Deferring 1, 2 or 3 of 8 is equally good (the second item is right either way, the third wrong either
    # way): the cheapest is the answer. Deferring 5 would be better still, but the budget allows 3.
    ("ties", _answers("01000111", [.05, .15, .25, .35, .45, .55, .65, .75]), _flags("11011000"), 0.4),
    # The small model is wrong on its surest item, which the large model knows: only deferring everything (a
    # threshold above every confidence) is better than the small model alone.
    ("defer all", _answers("11110", [.1, .2, .4, .6, .8]), _flags("11111"), 1.0),
    # The large model is worse on the unsure items: defer nothing (any threshold at or below 0.2).
    ("defer none", _answers("1110", [.2, .4, .6, .8]), _flags("0001"), 0.75),
    # The best cascade defers exactly the budget, half of the items.
    ("budget reached", _answers("0011", [.1, .2, .3, .4]), _flags("1100"), 0.5),
)


def _points(small: cascade.Answers, large: torch.Tensor, defer_le: bool = False) -> list[cascade.CascadePoint]:
    """Every distinct cascade (cascade.frontier), or with items at the threshold deferred too (≤)."""
    if not defer_le:
        return cascade.frontier(small, large)
    pts = []
    for t in sorted({0.0, *small.confidence.tolist(), math.inf}):
        defer = small.confidence <= t
        right = torch.where(defer, large, small.correct)
        pts.append(cascade.CascadePoint(t, float(defer.double().mean()), float(right.double().mean())))
    return pts


def _kept_accuracy(small: cascade.Answers, t: float) -> float:
    """The small model's accuracy on the items it keeps (−1 when it keeps none: such a loop never picks it)."""
    kept = small.confidence >= t
    return float(small.correct[kept].double().mean()) if kept.any() else -1.0


LE = ("items exactly at the threshold are counted as deferred (≤) — a threshold t defers the items with "
      "confidence < t, strictly below it")
SLIPS = {
    "budget": "the deferral budget is ignored — choose only among thresholds that defer at most max_deferred of "
              "the items",
    "le": LE,
    "tie": "a tie goes to the threshold that defers more — among equally accurate thresholds take the one that "
           "defers fewer items (the large model costs)",
    "most deferred": "it maximises the fraction deferred — maximise the validation accuracy (deferring fewer on a "
                     "tie)",
    "least accurate": "it minimises the accuracy — choose the threshold with the highest validation accuracy",
    "kept only": "the accuracy counts only the items the small model keeps — count every item, the deferred ones "
                 "with the large model's answer (val_large_correct)",
    "large ignored": "the large model's answers are ignored — a deferred item is right when val_large_correct "
                     "says so",
    "no inf": "the threshold that defers everything is missing — besides the observed confidences, a threshold "
              "above them all (math.inf) is a candidate",
    "budget strict": "the budget excludes max_deferred itself — deferring exactly max_deferred of the items is "
                     "allowed (≤)",
}


def _slips(small: cascade.Answers, large: torch.Tensor, budget: float) -> dict[str, float]:
    """What each usual mistake (SLIPS) returns on these items."""
    pts = _points(small, large)
    ok = [p for p in pts if p.deferred <= budget]
    confs = set(small.confidence.tolist())

    def best(points, key=lambda p: (p.accuracy, -p.deferred)) -> float:
        return max(points, key=key).threshold
    return {
        "budget": cascade.choose_threshold(small, large, 1.0),
        "le": best([p for p in _points(small, large, defer_le=True) if p.deferred <= budget]),
        "tie": best(ok, key=lambda p: (p.accuracy, p.deferred)),
        "most deferred": best(ok, key=lambda p: (p.deferred, p.accuracy)),
        "least accurate": best(ok, key=lambda p: (-p.accuracy, -p.deferred)),
        "kept only": best(ok, key=lambda p: (_kept_accuracy(small, p.threshold), -p.deferred)),
        "large ignored": 0.0,           # every threshold as accurate as the small model: the cheapest wins
        "no inf": best([p for p in ok if p.threshold in confs or p.threshold == 0.0]),
        "budget strict": best([p for p in pts if p.deferred < budget] or pts[:1]),
    }


def _threshold(value, what: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, torch.Tensor):
            fail(f"{what} returned a tensor of shape {tuple(value.shape)} — return the threshold itself, one number "
                 "(the items with confidence below it are deferred).")
        if _type(value) == "CascadePoint":
            fail(f"{what} returned a CascadePoint — return its threshold, one number.")
        fail(f"{what} should return one number, the confidence threshold; got {_type(value)}.")
    if math.isnan(value):
        fail(f"{what} returned NaN — return a confidence threshold (0 defers nothing, math.inf everything).")
    return float(value)


def _deferred(small: cascade.Answers, t: float) -> list[int]:
    return (small.confidence < t).nonzero().flatten().tolist()


@forbids("slm_lab.cascade.choose_threshold", "slm_lab.cascade.frontier", "slm_lab.cascade.cascade")
def check_choose_threshold(choose_threshold) -> None:
    """choose_threshold(val_small, val_large_correct, max_deferred) → t: among the thresholds that defer (confidence
    < t) at most max_deferred of the validation items, the most accurate cascade's, deferring fewer on a tie."""
    what = "choose_threshold"
    answers, rounded = [], None
    for _, small, large, budget in _ITEMS:
        # fresh copies: a function that sorts or edits its inputs in place cannot change the next case
        out = call(choose_threshold, cascade.Answers(list(small.answers), small.correct.clone(),
                                                     small.confidence.clone()), large.clone(), budget, what=what)
        if isinstance(out, int) and not isinstance(out, bool) and out > 1:
            fail(f"{what} returned the int {out} — an index? Return the confidence threshold itself (the items "
                 "with confidence below it are deferred).")
        if isinstance(out, torch.Tensor) and out.dtype in (torch.float32, torch.float16, torch.bfloat16):
            rounded = out.dtype
        answers.append(_threshold(out, what))
    refs = [cascade.choose_threshold(small, large, budget) for _, small, large, budget in _ITEMS]
    wrong = [i for i, (case, t, ref) in enumerate(zip(_ITEMS, answers, refs, strict=True))
             if _deferred(case[1], t) != _deferred(case[1], ref)]
    if wrong and rounded is not None and all(
            (_ITEMS[i][1].confidence.to(rounded) < answers[i]).tolist() == (_ITEMS[i][1].confidence < refs[i]).tolist()
            for i in wrong):
        fail(f"{what} returned a {rounded} tensor: rounded to {rounded}, a threshold equal to an observed confidence "
             f"({answers[wrong[0]]:.9g}) moves above it and defers the items at it too — return a Python float "
             "(float(t)) or keep the confidences' float64.")
    if not wrong:
        passed("cascade threshold", "the most accurate cascade within the budget, ties to fewer deferred, "
                                    f"the same deferred items as the reference on {len(_ITEMS)} validation sets")
        return
    slips = [_slips(small, large, budget) for _, small, large, budget in _ITEMS]
    for slip, msg in SLIPS.items():
        if all(_deferred(small, t) == _deferred(small, s[slip])
               for (_, small, _, _), t, s in zip(_ITEMS, answers, slips, strict=True)):
            fail(f"{what}: {msg}.")
    name, small, large, budget = _ITEMS[wrong[0]]
    t, ref = answers[wrong[0]], refs[wrong[0]]
    got, best = cascade.cascade(small, large, t), cascade.cascade(small, large, ref)
    for attr, label in (("deferred", "the fraction deferred"), ("accuracy", "the accuracy")):
        if math.isclose(t, getattr(best, attr)) and not math.isclose(t, ref):
            fail(f"{what} returned {t:g}, {label} of the best cascade — return its threshold.")
    if (small.confidence <= t).tolist() == (small.confidence < ref).tolist():
        fail(f"{what}: {LE}.")
    if got.deferred > budget:
        fail(f"{what}: threshold {t:g} defers {got.deferred:.0%} of the validation items, over max_deferred = "
             f"{budget:.0%} ({name}).")
    fail(f"{what}: threshold {t:g} defers {got.deferred:.0%} of the validation items for an accuracy of "
         f"{got.accuracy:.0%}; the best within max_deferred = {budget:.0%} is {best.accuracy:.0%}, deferring "
         f"{best.deferred:.0%} ({name}).")


CHECKS = {"11.accept_draft": check_accept_draft, "11.choose_threshold": check_choose_threshold}
