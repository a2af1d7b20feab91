"""Speculative decoding: greedy tokens equal the target's own, sampled tokens follow the target's exact
distribution (and a wrong acceptance rule is caught), accept_draft against hand-computed cases, the cache
rollback against no-cache forwards, the theory against direct sums, and bad input."""
import copy
import math
from collections import Counter

import pytest
import torch
from checking import sharp

from slm_lab import speculative
from slm_lab.errors import SLMLabError
from slm_lab.model import SLM, SLMConfig, sample_next
from slm_lab.speculative import (
    accept_draft,
    acceptance_probability,
    break_even_cost_ratio,
    crop_cache,
    expected_speedup,
    expected_tokens_per_cycle,
    probs,
    speculative_generate,
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)    # tiny models: more threads only add overhead (and the suite shares the CPU)


def noisy_copy(model, noise, seed):
    """The model with every weight nudged by noise · its tensor's std: a draft that agrees only often."""
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * noise * p.std())
    return m


def tiny(family="llama", V=40, seed=0, scale=2.5, **kw):
    cfg = SLMConfig(**{**dict(family=family, vocab_size=V, block_size=64, n_layer=2, n_head=2, d_model=32), **kw})
    return sharp(SLM(cfg), scale, seed)


def chi2_sf(x, df):
    """P(χ²_df > x) = Q(df/2, x/2), the regularised upper incomplete gamma function."""
    a, z = torch.tensor(df / 2, dtype=torch.float64), torch.tensor(x / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(a, z))


def chi2_pvalue(counts: Counter, expected: dict, n: int) -> float:
    """Goodness of fit of observed counts to expected probabilities; cells expecting < 5 are pooled."""
    big = [c for c, pr in expected.items() if pr * n >= 5]
    obs = [counts[c] for c in big] + [n - sum(counts[c] for c in big)]
    exp = [expected[c] * n for c in big] + [n - sum(expected[c] * n for c in big)]
    if exp[-1] < 1e-9:
        obs, exp = obs[:-1], exp[:-1]
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp, strict=True))
    return chi2_sf(stat, len(obs) - 1)


def test_the_package_chi_square_test_matches_the_definition():
    counts = torch.tensor([30, 52, 18, 3, 0, 2])
    probs_ = torch.tensor([0.3, 0.5, 0.15, 0.03, 0.01, 0.01])
    p, stat, dof = speculative.chi_square_test(counts, probs_)
    n = int(counts.sum())
    expected = {i: float(probs_[i]) for i in range(6)}
    assert p == pytest.approx(chi2_pvalue(Counter({i: int(c) for i, c in enumerate(counts)}), expected, n), rel=1e-6)
    assert dof == 3                                       # cells 3, 4 and 5 expect < 5: pooled into one
    assert n == 105 and stat == pytest.approx((30 - 31.5) ** 2 / 31.5 + (52 - 52.5) ** 2 / 52.5
                                              + (18 - 15.75) ** 2 / 15.75 + (5 - 5.25) ** 2 / 5.25, rel=1e-6)
    with pytest.raises(SLMLabError, match="same length"):
        speculative.chi_square_test(counts, probs_[:5])


def test_chi2_sf_against_table_values():
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, abs=1e-9)
    assert chi2_sf(9.487729036781154, 4) == pytest.approx(0.05, abs=1e-9)
    assert chi2_sf(23.209251158954356, 10) == pytest.approx(0.01, abs=1e-9)


# ------------------------------------------------------------------------------------------ probs ----
def test_probs_is_the_rule_sample_next_draws_from():
    logits = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(probs(logits, 0.0), torch.eye(7)[logits.argmax(-1)])
    assert torch.allclose(probs(logits, 0.5), torch.softmax(2 * logits, -1))
    assert torch.equal(probs(logits, 0.0).argmax(-1, keepdim=True), sample_next(logits, 0.0))
    a = sample_next(logits, 0.7, generator=torch.Generator().manual_seed(1))
    b = torch.multinomial(probs(logits, 0.7), 1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with pytest.raises(SLMLabError, match="temperature"):
        probs(logits, -1.0)


# ----------------------------------------------------------------------------------- accept_draft ----
def dists(rows, V, seed):
    return torch.softmax(torch.randn(rows, V, generator=torch.Generator().manual_seed(seed)) * 2, -1)


def test_equal_distributions_accept_every_draft():
    p = dists(4, 6, seed=0)
    for s in range(200):
        g = torch.Generator().manual_seed(s)
        draft = torch.multinomial(p[:3], 1, generator=g).view(-1)
        n, tokens = accept_draft(p, p[:3].clone(), draft, g)
        assert n == 3 and tokens.shape == (4,) and torch.equal(tokens[:3], draft)


def test_a_token_the_target_rules_out_is_never_accepted():
    p, q = dists(2, 5, seed=1), dists(1, 5, seed=2)
    p[0, 3] = 0.0
    p[0] /= p[0].sum()
    for s in range(200):
        n, tokens = accept_draft(p, q, torch.tensor([3]), torch.Generator().manual_seed(s))
        assert n == 0 and tokens.shape == (1,) and int(tokens[0]) != 3


def test_acceptance_probability_is_min_one_p_over_q():
    # p(x) = 0.3, q(x) = 0.6 → accepted half the time.
    p = torch.tensor([[0.3, 0.7], [0.5, 0.5]])
    q = torch.tensor([[0.6, 0.4]])
    g = torch.Generator().manual_seed(0)
    N = 4000
    kept = sum(accept_draft(p, q, torch.tensor([0]), g)[0] for _ in range(N))
    assert abs(kept / N - 0.5) < 4 * math.sqrt(0.25 / N)
    assert float(acceptance_probability(p[0], q[0])) == pytest.approx(0.3 + 0.4)


def test_replacement_follows_the_normalised_residual():
    # The draft token 3 has p = 0: always rejected. max(0, p − q) = [.4, 0, .1, 0] → [.8, 0, .2, 0].
    p = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.25, 0.25, 0.25, 0.25]])
    q = torch.tensor([[0.1, 0.6, 0.1, 0.2]])
    g = torch.Generator().manual_seed(0)
    N = 4000
    counts = Counter(int(accept_draft(p, q, torch.tensor([3]), g)[1][0]) for _ in range(N))
    assert counts[1] == counts[3] == 0
    assert chi2_pvalue(counts, {0: 0.8, 2: 0.2}, N) > 1e-3


def test_first_token_follows_p_whatever_q():
    """Draw x ~ q, run the rule: the emitted token is distributed as p (the theorem, without any model)."""
    p, q = dists(2, 6, seed=3), dists(1, 6, seed=4)
    assert float(acceptance_probability(p[0], q[0])) < 0.8      # the draft is wrong often enough to matter
    g = torch.Generator().manual_seed(0)
    N = 6000
    counts = Counter(int(accept_draft(p, q, torch.multinomial(q[0], 1, generator=g), g)[1][0]) for _ in range(N))
    assert chi2_pvalue(counts, dict(enumerate(p[0].tolist())), N) > 1e-3
    from_q = Counter(torch.multinomial(q[0], N, replacement=True, generator=g).tolist())
    assert chi2_pvalue(from_q, dict(enumerate(p[0].tolist())), N) < 1e-6     # the test can tell p from q


def test_greedy_is_one_hot_accept_while_equal_to_the_argmax():
    target_logits = torch.full((4, 5), -1.0)
    for i, best in enumerate([2, 0, 1, 3]):
        target_logits[i, best] = 1.0
    p = probs(target_logits, 0.0)
    q = probs(torch.eye(5)[[2, 0, 4]], 0.0)                       # the draft's argmaxes: 2, 0, 4
    n, tokens = accept_draft(p, q, torch.tensor([2, 0, 4]))
    assert n == 2 and tokens.tolist() == [2, 0, 1]                # 4 rejected → the target's argmax 1
    n, tokens = accept_draft(p, probs(torch.eye(5)[[2, 0, 1]], 0.0), torch.tensor([2, 0, 1]))
    assert n == 3 and tokens.tolist() == [2, 0, 1, 3]             # all kept → bonus: argmax of the last row


def test_an_empty_residual_falls_back_to_p():
    # p == q, one-hot at 2, and a draft token both rule out: rejected, max(0, p − q) = 0 → draw from p.
    p = torch.eye(4)[[2, 1]]
    n, tokens = accept_draft(p, p[:1].clone(), torch.tensor([1]))
    assert n == 0 and tokens.tolist() == [2]


def test_accept_draft_rejects_mismatched_shapes():
    with pytest.raises(SLMLabError, match="p \\(k\\+1, V\\)"):
        accept_draft(dists(3, 5, 0), dists(3, 5, 1), torch.tensor([0, 1, 2]))


# ------------------------------------------------------------------------------------- crop_cache ----
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_cropped_cache_continues_like_a_fresh_forward(family):
    m = tiny(family, n_layer=2)
    x = torch.randint(0, 40, (1, 12), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 40, (1, 3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = m(x, use_cache=True).kv_cache
        cropped = crop_cache(cache, 7)
        assert [kv[0].shape[2] for kv in cropped] == [7, 7]
        got = m(y, kv_cache=cropped).logits
        want = m(torch.cat([x[:, :7], y], 1)).logits[:, 7:]
        assert torch.allclose(got, want, atol=1e-5)
        assert cache[0][0].shape[2] == 12                     # the uncropped cache was not written over
        assert torch.equal(cache[0][0], m(x, use_cache=True).kv_cache[0][0])
    for bad in (-1, 13):
        with pytest.raises(SLMLabError, match="crop a cache of 12 positions"):
            crop_cache(cache, bad)


def test_every_cycle_works_from_a_cache_of_the_accepted_prefix():
    """Spy on both models, replaying which tokens each cache holds: every cached call's logits equal a
    no-cache forward over the final sequence wherever the held tokens are the kept ones, and the target's
    cache always holds exactly the sequence but its last token."""
    target = tiny()
    draft = noisy_copy(target, 0.05, seed=1)
    calls: dict = {"target": [], "draft": []}
    for name, model in (("target", target), ("draft", draft)):
        def spy(idx, targets=None, kv_cache=None, use_cache=False, _forward=model.forward, _name=name):
            out = _forward(idx, targets, kv_cache, use_cache)
            calls[_name].append((kv_cache[0][0].shape[2] if kv_cache else 0, idx[0].tolist(), out.logits[0].clone()))
            return out
        model.forward = spy
    emitted = []

    def counting(p, q, d, g):
        n, new = accept_draft(p, q, d, g)
        emitted.append(n + 1)
        return n, new

    idx = torch.tensor([[3, 1, 4, 1, 5]])
    out, stats = speculative_generate(target, draft, idx, 40, k=4, accept=counting)
    del target.forward, draft.forward
    assert 0 < stats.accepted < stats.proposed                     # partial acceptances: real rollbacks
    final, checked = out[0].tolist(), 0
    for name, model in (("target", target), ("draft", draft)):
        with torch.no_grad():
            fresh = model(out).logits[0]                           # (T + 40, V): every prefix at once
        held: list[int] = []                                       # the tokens this model's cache holds
        for past, fed, logits in calls[name]:
            assert past <= len(held)                               # a cache is only ever cut back
            held = held[:past] + fed
            same = next((i for i, (a, b) in enumerate(zip(held, final, strict=False)) if a != b), len(held))
            if name == "target":
                assert same >= past + 1                            # cache = the accepted prefix; its last token fed again
            ok = max(0, min(same, len(held)) - past)
            assert torch.allclose(logits[:ok], fresh[past:past + ok], atol=1e-5)
            checked += ok
    assert checked > 40
    pasts = [past for past, _, _ in calls["target"][1:]]
    assert pasts[0] == idx.shape[1] - 1
    assert [b - a for a, b in zip(pasts, pasts[1:], strict=False)] == emitted[:-1]
    assert pasts[-1] + 1 + emitted[-1] == out.shape[1]


# ------------------------------------------------------------------------------------------ greedy ----
@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_tokens_equal_the_targets_own(family, k):
    target = tiny(family)
    idx = torch.tensor([[1, 5, 7, 2, 9]])
    want = target.generate(idx, 40, temperature=0)
    drafts = {"other model": tiny(family, seed=1, n_layer=1, d_model=16),
              "noisy copy": noisy_copy(target, 0.05, seed=1), "itself": target}
    for name, draft in drafts.items():
        got, stats = speculative_generate(target, draft, idx, 40, k=k)
        assert torch.equal(got, want), name
        if name == "other model":
            assert stats.acceptance_rate < 0.5
    assert stats.acceptance_rate == 1.0 and stats.alpha == 1.0
    cycles = math.ceil(40 / (k + 1))                              # k + 1 tokens a cycle; the last one shorter
    assert (stats.cycles, stats.target_calls) == (cycles, cycles + 1)
    assert stats.draft_calls == 1 + stats.proposed                # the unseen k-th draft costs no extra call
    assert stats.tokens_per_target_call == pytest.approx(40 / (cycles + 1))


def test_always_rejecting_gives_one_token_per_target_call():
    target = tiny()

    def reject_first(p, q, d, g):
        return 0, p[0].argmax().view(1)

    idx = torch.tensor([[2, 3]])
    got, stats = speculative_generate(target, tiny(seed=1), idx, 20, k=3, accept=reject_first)
    assert torch.equal(got, target.generate(idx, 20, temperature=0))
    assert stats.cycles == 20 and stats.accepted == 0 and stats.acceptance_rate == 0.0 and stats.alpha == 0.0
    assert stats.proposed == sum(min(3, r - 1) for r in range(20, 0, -1))
    assert stats.tokens_per_target_call == pytest.approx(20 / 21)
    assert stats.new_tokens / stats.cycles == expected_tokens_per_cycle(0.0, 3)


def test_stats_add_counter_by_counter_and_pool_the_rates():
    a = speculative.SpecStats(new_tokens=10, cycles=3, target_calls=4, draft_calls=13, proposed=12, accepted=9, rejected=2)
    b = speculative.SpecStats(new_tokens=6, cycles=2, target_calls=3, draft_calls=9, proposed=8, accepted=3, rejected=2)
    c = a + b
    assert (c.new_tokens, c.cycles, c.target_calls, c.draft_calls, c.proposed, c.accepted, c.rejected) == (16, 5, 7, 22, 20, 12, 4)
    assert c.alpha == pytest.approx(12 / 16) and c.acceptance_rate == pytest.approx(12 / 20)
    assert c.alpha != pytest.approx((a.alpha + b.alpha) / 2)           # pooled, not the mean of the two rates


# ------------------------------------------------------------------------------------- sampling ----
@pytest.fixture(scope="module")
def sampled():
    """The first two of 3 tokens sampled at temperature 0.8, k = 2, over many seeds, with the right rule and
    the wrong one; and the target's exact joint distribution of those two tokens."""
    torch.set_num_threads(1)
    V = 6
    target = tiny(V=V, block_size=8, n_layer=1, d_model=16, scale=1.5, seed=0)
    draft = tiny(V=V, block_size=8, n_layer=1, d_model=16, scale=1.5, seed=3)
    idx, T = torch.tensor([[1, 3]]), 0.8
    with torch.no_grad():
        p0 = (target(idx).logits[0, -1] / T).softmax(-1)                                      # (V,)
        q0 = (draft(idx).logits[0, -1] / T).softmax(-1)
        both = torch.cat([idx.repeat(V, 1), torch.arange(V).view(V, 1)], dim=1)               # (V, 3)
        p1 = (target(both).logits[:, -1] / T).softmax(-1)                                     # (V, V): p(b | a)
    joint = {(a, b): float(p0[a] * p1[a, b]) for a in range(V) for b in range(V)}
    first_kept: list[bool] = []        # per run: was the first draft of the first cycle accepted?

    def spying(p, q, d, g):
        n, new = accept_draft(p, q, d, g)
        if len(first_kept) == s:
            first_kept.append(n >= 1)
        return n, new

    runs: dict = {"right": Counter(), "wrong": Counter()}
    N = 2500
    for name, rule in (("right", spying), ("wrong", speculative.replacement_from_p)):
        for s in range(N):
            out, _ = speculative_generate(target, draft, idx, 3, k=2, temperature=T, seed=s, accept=rule)
            runs[name][tuple(out[0, 2:4].tolist())] += 1
    return dict(runs=runs, joint=joint, p0=p0, q0=q0, first_kept=first_kept, N=N)


def marginal(counts):
    out = Counter()
    for (a, _), c in counts.items():
        out[a] += c
    return out


def test_sampled_tokens_follow_the_targets_distribution(sampled):
    N, joint, p0 = sampled["N"], sampled["joint"], sampled["p0"]
    assert float(acceptance_probability(p0, sampled["q0"])) < 0.5     # the draft is often wrong
    assert chi2_pvalue(marginal(sampled["runs"]["right"]), dict(enumerate(p0.tolist())), N) > 1e-3
    assert chi2_pvalue(sampled["runs"]["right"], joint, N) > 1e-3


def test_a_wrong_acceptance_rule_is_caught(sampled):
    N, p0 = sampled["N"], sampled["p0"]
    assert chi2_pvalue(marginal(sampled["runs"]["wrong"]), dict(enumerate(p0.tolist())), N) < 1e-6
    assert chi2_pvalue(sampled["runs"]["wrong"], sampled["joint"], N) < 1e-6


def test_first_draft_is_kept_with_probability_one_minus_tv(sampled):
    kept, p0, q0 = sampled["first_kept"], sampled["p0"], sampled["q0"]
    beta = float(torch.minimum(p0, q0).sum())                     # Σ min(p, q), computed here
    assert float(acceptance_probability(p0, q0)) == pytest.approx(beta)
    assert abs(sum(kept) / len(kept) - beta) < 4 * math.sqrt(beta * (1 - beta) / len(kept))


def test_a_draft_equal_to_the_target_is_always_accepted_when_sampling():
    target = tiny()
    out, stats = speculative_generate(target, target, torch.tensor([[4, 2]]), 30, k=4, temperature=1.0, seed=0)
    assert stats.acceptance_rate == 1.0 and out.shape == (1, 32)
    again, _ = speculative_generate(target, target, torch.tensor([[4, 2]]), 30, k=4, temperature=1.0, seed=0)
    assert torch.equal(out, again)                                # a seed makes a run repeatable


# ------------------------------------------------------------------------------------------- theory ----
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7, 0.99, 1.0])
@pytest.mark.parametrize("k", [0, 1, 4, 8])
def test_expected_tokens_per_cycle_is_the_geometric_sum(alpha, k):
    assert expected_tokens_per_cycle(alpha, k) == pytest.approx(sum(alpha ** i for i in range(k + 1)))
    assert expected_speedup(alpha, k, cost_ratio=0.0) == pytest.approx(expected_tokens_per_cycle(alpha, k))


def test_expected_speedup_hand_computed():
    # α = 0.8, k = 4: (1 − 0.8⁵) / 0.2 = 3.3616 tokens a cycle, for 4 · 0.05 + 1.1 = 1.3 target steps.
    assert expected_speedup(0.8, 4, cost_ratio=0.05, verify_ratio=1.1) == pytest.approx(3.3616 / 1.3)


@pytest.mark.parametrize("alpha,k,verify,target_speedup", [(0.8, 4, 1.0, 1.0), (0.6, 3, 1.2, 1.5), (0.9, 8, 1.5, 2.0)])
def test_break_even_cost_ratio_inverts_expected_speedup(alpha, k, verify, target_speedup):
    c = break_even_cost_ratio(alpha, k, verify, target_speedup)
    assert c > 0
    assert expected_speedup(alpha, k, c, verify) == pytest.approx(target_speedup)
    assert expected_speedup(alpha, k, c * 1.01, verify) < target_speedup


def test_an_unreachable_speedup_has_a_negative_break_even():
    assert break_even_cost_ratio(0.0, 4, speedup=1.0) == 0.0      # a useless draft breaks even only if free
    assert break_even_cost_ratio(0.5, 4, speedup=2.0) < 0         # 1.94 tokens a cycle can't make 2×


def test_theory_rejects_bad_input():
    with pytest.raises(SLMLabError, match="alpha=1.5"):
        expected_tokens_per_cycle(1.5, 4)
    with pytest.raises(SLMLabError, match="cost_ratio=-0.1"):
        expected_speedup(0.5, 4, -0.1)
    with pytest.raises(SLMLabError, match="k=0"):
        break_even_cost_ratio(0.5, 0)


# --------------------------------------------------------------------------------------- bad input ----
def test_speculative_generate_rejects_bad_input():
    target, idx = tiny(), torch.tensor([[1, 2, 3]])
    with pytest.raises(SLMLabError, match="k=0 must be at least 1"):
        speculative_generate(target, target, idx, 5, k=0)
    with pytest.raises(SLMLabError, match="vocabulary of 30 and the target of 40.*same tokenizer"):
        speculative_generate(target, tiny(V=30), idx, 5)
    with pytest.raises(SLMLabError, match="target's block_size=64.*shorten the prompt or generate fewer"):
        speculative_generate(target, target, idx, 62)
    with pytest.raises(SLMLabError, match="draft's block_size=16.*shorten the prompt"):
        speculative_generate(target, tiny(block_size=16), idx, 20)
    with pytest.raises(SLMLabError, match="batch 1"):
        speculative_generate(target, target, idx.repeat(2, 1), 5)
    with pytest.raises(SLMLabError, match="prompt is empty"):
        speculative_generate(target, target, idx[:, :0], 5)
    with pytest.raises(SLMLabError, match="temperature=-1"):
        speculative_generate(target, target, idx, 5, temperature=-1)
    with pytest.raises(SLMLabError, match="accept rule returned n=3"):
        speculative_generate(target, target, idx, 5, k=2, accept=lambda p, q, d, g: (3, torch.zeros(4, dtype=torch.long)))
    out, stats = speculative_generate(target, target, idx, 61)    # exactly filling the block is fine
    assert out.shape == (1, 64) and stats.new_tokens == 61
