"""Lab 11 checks accept a student's answers, reject the unsolved stub and name each planted mistake in the
accept/reject step of speculative decoding and in the cascade's threshold rule."""
import math

import pytest
import torch
from checking import rejects, todo

from slm_lab import cascade, speculative
from slm_lab.checks import m11


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)    # hundreds of tiny calls: more threads only add overhead


# ------------------------------------------------------------------------------------------ accept_draft ----
def inverse_cdf(weights, num_samples, generator=None):
    """torch.multinomial's job by hand (one draw): the first index whose cumulative weight exceeds u · total."""
    cdf = weights.cumsum(0)
    u = torch.rand((), generator=generator) * cdf[-1]
    return torch.searchsorted(cdf, u.view(1), right=True).clamp(max=weights.numel() - 1)


def make_accept(keep="ratio", residual="clip", bonus="p[k]", count="right", replacement=True, rng="generator",
                sample=torch.multinomial):
    """A student's accept_draft, written the way the lab's solution is, with one knob per plausible mistake."""
    def accept_draft(p, q, draft, generator=None):
        gen = generator if rng == "generator" else None           # None: torch's global generator
        multinomial = sample if residual not in ("raw", "raw normalised") else torch.multinomial
        k = draft.shape[0]
        i = 0
        for i in range(k):
            x = int(draft[i])
            u = torch.rand((), generator=gen)
            ratio = p[i, x] / q[i, x]
            kept = {"ratio": u < ratio, "inverted": u < q[i, x] / p[i, x], "p": u < p[i, x], "flipped": u >= ratio,
                    "sure": p[i, x] >= q[i, x],
                    "bernoulli": lambda r=ratio: torch.bernoulli(r, generator=gen) == 1,
                    "bernoulli clipped": lambda r=ratio: torch.bernoulli(r.clamp(max=1), generator=gen) == 1,
                    "no division": u * q[i, x] < p[i, x]}[keep]
            if bool(kept() if callable(kept) else kept):
                continue
            diff = p[i] - q[i]
            weights = {"clip": diff.clamp(min=0), "raw": diff, "raw normalised": diff / diff.sum(), "p": p[i],
                       "abs": diff.abs(), "q": q[i], "swapped": (-diff).clamp(min=0)}.get(residual)
            if residual == "argmax":
                new = diff.clamp(min=0).argmax().view(1)
            else:
                new = multinomial(weights, 1, generator=gen)
            n = i + 1 if count == "plus one" else i
            return n, torch.cat([draft[:i], new]) if replacement else draft[:i]
        row = {"p[k]": p[k], "p[k-1]": p[k - 1], "q": q[k - 1]}.get(bonus)
        extra = [p[k].argmax().view(1)] if bonus == "argmax" else [] if bonus == "none" else [
            multinomial(row, 1, generator=gen)]
        return (i if count == "loop variable" else k), torch.cat([draft, *extra])
    return accept_draft


def test_accept_draft_check_accepts_a_correct_answer(capsys):
    m11.check_accept_draft(make_accept())
    m11.check_accept_draft(make_accept(keep="bernoulli clipped"))       # other draws, the same law
    m11.check_accept_draft(make_accept(keep="no division"))
    m11.check_accept_draft(make_accept(sample=inverse_cdf))             # its own sampler, from the same generator
    assert "passed" in capsys.readouterr().out


def test_accept_draft_check_rejects_planted_mistakes():
    rejects(m11.check_accept_draft, todo, match="not done yet")
    # the acceptance test
    rejects(m11.check_accept_draft, make_accept(keep="inverted"), match="the ratio is inverted")
    rejects(m11.check_accept_draft, make_accept(keep="p"), match="keeps the draft with probability p(x)")
    rejects(m11.check_accept_draft, make_accept(keep="flipped"), match="the test is the wrong way round")
    rejects(m11.check_accept_draft, make_accept(keep="sure"), match="keeps a draft only when p(x) ≥ q(x)")
    rejects(m11.check_accept_draft, make_accept(keep="bernoulli"), match="torch.bernoulli got p(x)/q(x) above 1")
    # the replacement
    rejects(m11.check_accept_draft, make_accept(residual="raw"), match="torch.multinomial refused the residual")
    rejects(m11.check_accept_draft, make_accept(residual="raw normalised"),
            match="torch.multinomial refused the residual")
    rejects(m11.check_accept_draft, make_accept(residual="p"), match="draws the replacement from p")
    rejects(m11.check_accept_draft, make_accept(residual="abs"), match="the residual is |p − q|")
    rejects(m11.check_accept_draft, make_accept(residual="q"), match="draws the replacement from q")
    rejects(m11.check_accept_draft, make_accept(residual="swapped"), match="the residual is max(0, q − p)")
    rejects(m11.check_accept_draft, make_accept(residual="argmax"), match="always the residual's most likely token")
    # the bonus token
    rejects(m11.check_accept_draft, make_accept(bonus="none"), match="no bonus token")
    rejects(m11.check_accept_draft, make_accept(bonus="p[k-1]"), match="the bonus is drawn from p[k − 1]")
    rejects(m11.check_accept_draft, make_accept(bonus="q"), match="the bonus is drawn from the draft's q")
    rejects(m11.check_accept_draft, make_accept(bonus="argmax"), match="the bonus is always p[k]'s most likely")
    # the count and the tokens
    rejects(m11.check_accept_draft, make_accept(count="plus one"), match="n counts the new token too")
    rejects(m11.check_accept_draft, make_accept(count="loop variable"), match="n is k then")
    rejects(m11.check_accept_draft, make_accept(replacement=False), match="the new token is missing")
    rejects(m11.check_accept_draft, make_accept(replacement=False, bonus="none"), match="the new token is missing")
    rejects(m11.check_accept_draft, make_accept(rng="global"), match="generator=generator")
    rejects(m11.check_accept_draft, lambda p, q, d, g: make_accept()(p, q, d, g)[1], match="should return the pair")
    rejects(m11.check_accept_draft, lambda p, q, d, g: make_accept()(p, q, d, g)[1].tolist(),
            match="should return the pair")
    rejects(m11.check_accept_draft, lambda p, q, d, g: (lambda n, t: (n, t.float()))(*make_accept()(p, q, d, g)),
            match="integer token ids")


@pytest.mark.forbidding
def test_accept_draft_check_refuses_the_package():
    rejects(m11.check_accept_draft, lambda p, q, d, g: speculative.accept_draft(p, q, d, g), match="write it yourself")


def test_the_law_is_what_the_package_draws():
    """The check's exact law (the definition, written in the check) against the package's frequencies: a check
    whose reference law were wrong would fail the package in test_checks_accept_package, and this says where."""
    for name, (p, q, draft) in m11._CASES:
        k = draft.shape[0]
        keep, resid, bonus = (law["definition"] for law in m11._laws(p, q, draft))
        outcomes = []
        for j in range(4000):
            n, tokens = speculative.accept_draft(p, q, draft, torch.Generator().manual_seed(10**6 + j))
            outcomes.append((n, int(tokens[-1])))
        law = {}
        for i in range(k + 1):
            reach = math.prod(keep[:i])
            for v in range(p.shape[1]):
                law[i, v] = reach * ((1 - keep[i]) * float(resid[i][v]) if i < k else float(bonus[v]))
        assert math.isclose(sum(law.values()), 1.0, abs_tol=1e-6), name
        for (i, v), prob in law.items():
            count = sum(o == (i, v) for o in outcomes)
            assert abs(count / 4000 - prob) <= 6 * math.sqrt(prob * (1 - prob) / 4000) + 1e-9, (name, i, v)


def test_binomial_tail_against_direct_sums():
    assert math.isclose(m11._binomial_tail(3, 3, 0.5), 1 / 8)
    assert math.isclose(m11._binomial_tail(0, 4, 0.5), 1 / 16)
    assert math.isclose(m11._binomial_tail(8, 10, 0.5), (45 + 10 + 1) / 1024)
    assert m11._fits(0, 10, 0.0) and not m11._fits(1, 10, 0.0) and m11._fits(10, 10, 1.0)
    assert m11._fits(40, 100, 0.4) and not m11._fits(90, 100, 0.4)


# -------------------------------------------------------------------------------------- choose_threshold ----
def make_choose(candidates="all", defer="<", budget="<=", key="best", tie="fewer", accuracy="all", returns="t"):
    """A student's choose_threshold: a loop over candidate thresholds, one knob per plausible mistake."""
    def choose_threshold(val_small, val_large_correct, max_deferred=0.5):
        conf, small, large = val_small.confidence, val_small.correct, val_large_correct.bool()
        levels = sorted(set(conf.tolist()))
        levels = {"all": [0.0, *levels, math.inf], "observed": levels}[candidates]
        best = None
        for j, t in enumerate(levels):
            deferred = conf <= t if defer == "<=" else conf < t
            frac = deferred.float().mean().item()
            if (frac > max_deferred if budget == "<=" else frac >= max_deferred if budget == "<" else False):
                continue
            if accuracy == "all":
                acc = torch.where(deferred, large, small).float().mean().item()
            elif accuracy == "kept":
                acc = small[~deferred].float().mean().item() if (~deferred).any() else -1.0
            else:                                                   # the large model's answers left out
                acc = small.float().mean().item()
            score = {"best": (acc, -frac), "most deferred": (frac, acc), "worst": (-acc, -frac)}[key]
            if tie == "more" and key == "best":
                score = (acc, frac)
            if best is None or score > best[0]:
                best = (score, t, frac, acc, j)
        return {"t": best[1], "fraction": best[2], "accuracy": best[3], "index": best[4],
                "tensor": torch.tensor(best[1], dtype=torch.float64),
                "float32": torch.tensor(best[1]), "mask": conf < best[1]}[returns]
    return choose_threshold


def test_choose_threshold_check_accepts_a_correct_answer(capsys):
    m11.check_choose_threshold(make_choose())
    m11.check_choose_threshold(make_choose(returns="tensor"))           # a 0-d float64 tensor is a number too
    # thresholds between observed confidences defer the same items: any of them is right
    m11.check_choose_threshold(lambda v, lc, m=0.5: (lambda t: t - 1e-9 if math.isfinite(t) and t > 0 else t)(
        cascade.choose_threshold(v, lc, m)))
    assert "passed" in capsys.readouterr().out


def test_choose_threshold_check_rejects_planted_mistakes():
    rejects(m11.check_choose_threshold, todo, match="not done yet")
    rejects(m11.check_choose_threshold, make_choose(budget="none"), match="the deferral budget is ignored")
    rejects(m11.check_choose_threshold, make_choose(defer="<="), match="items exactly at the threshold")
    rejects(m11.check_choose_threshold, make_choose(tie="more"), match="a tie goes to the threshold that defers more")
    rejects(m11.check_choose_threshold, make_choose(key="most deferred"), match="maximises the fraction deferred")
    rejects(m11.check_choose_threshold, make_choose(key="worst"), match="minimises the accuracy")
    rejects(m11.check_choose_threshold, make_choose(accuracy="kept"), match="counts only the items the small model keeps")
    rejects(m11.check_choose_threshold, make_choose(accuracy="small"), match="the large model's answers are ignored")
    rejects(m11.check_choose_threshold, make_choose(candidates="observed"), match="defers everything is missing")
    rejects(m11.check_choose_threshold, make_choose(budget="<"), match="excludes max_deferred itself")
    rejects(m11.check_choose_threshold, make_choose(returns="fraction"), match="the fraction deferred of the best")
    rejects(m11.check_choose_threshold, make_choose(returns="accuracy"), match="the accuracy of the best")
    rejects(m11.check_choose_threshold, make_choose(returns="index"), match="an index?")
    rejects(m11.check_choose_threshold, make_choose(returns="mask"), match="return the threshold itself")
    rejects(m11.check_choose_threshold, make_choose(returns="float32"), match="returned a torch.float32 tensor")
    rejects(m11.check_choose_threshold, lambda v, lc, m=0.5: cascade.CascadePoint(0.3, 0.25, 1.0),
            match="returned a CascadePoint")


@pytest.mark.forbidding
def test_choose_threshold_check_refuses_the_package():
    rejects(m11.check_choose_threshold, lambda v, lc, m=0.5: cascade.choose_threshold(v, lc, m),
            match="write it yourself")
    # scoring each threshold with the package's cascade() does the task's heart too
    rejects(m11.check_choose_threshold, lambda v, lc, m=0.5: max(
        (t for t in [0.0, *v.confidence.tolist(), math.inf] if cascade.cascade(v, lc, t).deferred <= m),
        key=lambda t: cascade.cascade(v, lc, t).accuracy), match="write it yourself")


def test_every_threshold_slip_is_told_apart():
    """Each mistake in SLIPS defers a set different from the reference's on some case, and no two mistakes defer
    the same sets on every case (else the first would be named for the second)."""
    sigs = {}
    for slip in m11.SLIPS:
        sig = []
        for _, small, large, budget in m11._ITEMS:
            sig.append(tuple(m11._deferred(small, m11._slips(small, large, budget)[slip])))
        sigs[slip] = tuple(sig)
    ref = tuple(tuple(m11._deferred(s, cascade.choose_threshold(s, lc, b))) for _, s, lc, b in m11._ITEMS)
    assert ref not in sigs.values()
    assert len(set(sigs.values())) == len(sigs)
