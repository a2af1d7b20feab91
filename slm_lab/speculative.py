"""Speculative decoding: a small draft model proposes k tokens, the large target checks them in one pass.

Each cycle the draft guesses k tokens one at a time (cheap steps); the target scores the last accepted
token and the k guesses in ONE forward pass, which costs about as much as one of its ordinary steps
while decoding is memory-bound. `accept_draft` keeps guess i with probability min(1, p_i(x) / q_i(x))
and replaces the first rejected one with a draw from max(0, p_i − q_i), normalised. That rule makes every
emitted token follow the target's own distribution p exactly (Leviathan et al., 2023; Chen et al., 2023):
the draft changes the speed, never the text's distribution. At temperature 0, p and q are one-hot and the
rule reduces to "keep guesses while they equal the target's argmax".

Shapes: k draft tokens per cycle, V vocabulary; caches as in `slm_lab.model` (per layer (k, v), each
(B, K, S, hd)).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .errors import SLMLabError
from .model import SLM, KVCache, sample_next

# Module 11's target: 9x module 02's `small`, so that module 04's 2x64 student costs about a tenth of its
# decode step (a draft must be far cheaper than its target to pay; benchmarks/speculative.py measures it).
TARGET_PRESET = "medium"

# accept(p (k+1, V), q (k, V), draft (k,), generator) → (n accepted, (n+1,) tokens); `accept_draft` is one.
AcceptRule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Generator | None"], tuple[int, torch.Tensor]]


def _check_temperature(temperature: float) -> None:
    if temperature < 0:
        raise SLMLabError(f"temperature={temperature} must be ≥ 0 (0 means greedy).")


def probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits (..., V) → the distribution `sample_next` draws from (..., V): softmax(logits / T);
    temperature 0 → one-hot at the argmax (greedy)."""
    _check_temperature(temperature)
    if temperature == 0:
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    return (logits.float() / temperature).softmax(-1)


def accept_draft(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[int, torch.Tensor]:
    """The accept/reject step. p (k+1, V): target probabilities at the k draft positions and one bonus
    position; q (k, V): the draft's probabilities; draft (k,): its tokens.
    Returns n in 0…k and (n+1,) tokens: the n accepted drafts, then one new token."""
    k = draft.shape[0]
    if p.dim() != 2 or q.dim() != 2 or draft.dim() != 1 or p.shape != (k + 1, q.shape[1]) or q.shape[0] != k:
        raise SLMLabError(f"accept_draft expects p (k+1, V), q (k, V) and draft (k,), got p {tuple(p.shape)}, "
                          f"q {tuple(q.shape)} and draft {tuple(draft.shape)}.")
    for i in range(k):
        x = int(draft[i])
        px, qx = float(p[i, x]), float(q[i, x])
        # px ≥ qx is always accepted, no draw needed; u · qx < px is u < px / qx without dividing by zero.
        if px > 0 and (px >= qx or float(torch.rand((), generator=generator, device=p.device)) * qx < px):
            continue
        residual = (p[i] - q[i]).clamp(min=0)       # the mass the draft under-proposes
        if float(residual.sum()) <= 0:              # p == q (up to rounding): nothing under-proposed
            residual = p[i]
        new = torch.multinomial(residual / residual.sum(), 1, generator=generator)
        return i, torch.cat([draft[:i], new.to(draft.dtype)])
    bonus = torch.multinomial(p[k], 1, generator=generator)    # all k kept: the target's extra position is free
    return k, torch.cat([draft, bonus.to(draft.dtype)])


def replacement_from_p(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor,
                       generator: torch.Generator | None = None) -> tuple[int, torch.Tensor]:
    """A plausible WRONG rule, kept for the exactness tests to reject: like `accept_draft`, but a rejected
    guess is replaced by a draw from p itself instead of the residual max(0, p − q). Tokens the draft
    over-proposes then come out too often."""
    for i in range(draft.shape[0]):
        x = int(draft[i])
        if float(torch.rand((), generator=generator)) * float(q[i, x]) >= float(p[i, x]):
            return i, torch.cat([draft[:i], torch.multinomial(p[i], 1, generator=generator).to(draft.dtype)])
    return draft.shape[0], torch.cat([draft, torch.multinomial(p[-1], 1, generator=generator).to(draft.dtype)])


def acceptance_probability(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """P(a draft token is accepted) = Σ_x min(p(x), q(x)) = 1 − TV(p, q). p, q (..., V) → (...)."""
    return torch.minimum(p, q).sum(-1)


def cache_length(cache: KVCache) -> int:
    """How many positions a cache holds."""
    return cache[0][0].shape[2]


def crop_cache(cache: KVCache, length: int) -> KVCache:
    """The cache cut back to its first `length` positions: the rollback after a rejection. Views, no copy:
    the next forward's torch.cat makes new tensors, so the cut positions are never written over."""
    if not 0 <= length <= cache_length(cache):
        raise SLMLabError(f"cannot crop a cache of {cache_length(cache)} positions to {length}; "
                          "the length must be between 0 and the cache's length.")
    return [(k[:, :, :length], v[:, :, :length]) for k, v in cache]


@dataclass
class SpecStats:
    """Counters of one `speculative_generate` run; the rates are derived from them."""
    new_tokens: int = 0
    cycles: int = 0
    target_calls: int = 0      # target forward passes, the prefill included
    draft_calls: int = 0       # draft forward passes, the prefill included
    proposed: int = 0          # draft tokens put to the target
    accepted: int = 0          # draft tokens the target kept
    rejected: int = 0          # cycles that ended at a rejection (the others ended with a bonus token)

    @property
    def acceptance_rate(self) -> float:
        """accepted / proposed: the share of the draft's work that survives."""
        return self.accepted / self.proposed if self.proposed else float("nan")

    @property
    def alpha(self) -> float:
        """Estimate of the per-token acceptance probability α of `expected_tokens_per_cycle`. Not the
        acceptance rate: the drafts after a rejection are proposed but never judged."""
        judged = self.accepted + self.rejected
        return self.accepted / judged if judged else float("nan")

    @property
    def tokens_per_target_call(self) -> float:
        """new_tokens / target_calls, the prefill included: below tokens per cycle for short outputs."""
        return self.new_tokens / self.target_calls if self.target_calls else float("nan")

    def __add__(self, other: SpecStats) -> SpecStats:
        """Counters of two runs summed (the rates of the sum pool both runs)."""
        return SpecStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


@torch.no_grad()
def speculative_generate(target: SLM, draft: SLM, idx: torch.Tensor, max_new_tokens: int, k: int = 4,
                         temperature: float = 0.0, seed: int | None = None,
                         accept: AcceptRule = accept_draft) -> tuple[torch.Tensor, SpecStats]:
    """Extend idx (1, T) by max_new_tokens tokens drawn from the target's distribution, with the draft
    proposing k per cycle → ((1, T + max_new_tokens), stats). temperature 0 is greedy: the same tokens
    as target.generate(idx, max_new_tokens, temperature=0)."""
    if idx.dim() != 2 or idx.shape[0] != 1:
        raise SLMLabError(f"speculative_generate decodes one sequence at a time (batch 1), got a prompt of shape "
                          f"{tuple(idx.shape)}; pass idx of shape (1, T) and loop over prompts.")
    T = idx.shape[1]
    if T == 0:
        raise SLMLabError("the prompt is empty; give at least one token.")
    if k < 1:
        raise SLMLabError(f"k={k} must be at least 1: it is how many tokens the draft proposes per cycle.")
    if max_new_tokens < 0:
        raise SLMLabError(f"max_new_tokens={max_new_tokens} must be ≥ 0.")
    _check_temperature(temperature)
    if draft.cfg.vocab_size != target.cfg.vocab_size:
        raise SLMLabError(f"the draft has a vocabulary of {draft.cfg.vocab_size} and the target of "
                          f"{target.cfg.vocab_size}; both must use the same tokenizer.")
    # The lookahead never passes the end (the last cycle drafts fewer), so the finished sequence must fit.
    for name, model in (("target", target), ("draft", draft)):
        if T + max_new_tokens > model.cfg.block_size:
            raise SLMLabError(f"{T} prompt tokens + {max_new_tokens} new ones exceed the {name}'s block_size="
                              f"{model.cfg.block_size} (no sliding window here); shorten the prompt or generate "
                              "fewer tokens.")
    stats = SpecStats()
    dev = target.tok_emb.weight.device
    seq = idx.to(dev)
    if max_new_tokens == 0:
        return seq.to(idx.device), stats
    modes = target.training, draft.training
    target.eval()
    draft.eval()
    gen = torch.Generator(device=dev).manual_seed(seed) if seed is not None else None
    # Invariant: a cache holds the sequence but its last token, which each cycle feeds again to get the
    # distribution that follows it. (A length-1 prompt has nothing else to prefill, hence the crop.)
    t_cache = crop_cache(target(seq, use_cache=True).kv_cache, T - 1)
    d_cache = crop_cache(draft(seq.to(draft.tok_emb.weight.device), use_cache=True).kv_cache, T - 1)
    stats.target_calls = stats.draft_calls = 1
    end = T + max_new_tokens
    while seq.shape[1] < end:
        start = seq.shape[1]
        n_ahead = min(k, end - start - 1)           # the last cycle drafts fewer: stop exactly at the end
        ext, d_logits = seq, []
        for _ in range(n_ahead):
            # Feed what the draft's cache lacks: the last token, or after k accepted drafts also the
            # k-th draft, which it proposed but never fed itself.
            out = draft(ext[:, cache_length(d_cache):].to(draft.tok_emb.weight.device), kv_cache=d_cache)
            d_cache, logits = out.kv_cache, out.logits[:, -1].to(dev)                     # (1, V)
            d_logits.append(logits)
            ext = torch.cat([ext, sample_next(logits, temperature, generator=gen)], dim=1)
        out = target(ext[:, start - 1:], kv_cache=t_cache)       # last token + drafts: n_ahead + 1 positions
        p = probs(out.logits[0], temperature)                                              # (n_ahead + 1, V)
        q = probs(torch.cat(d_logits), temperature) if d_logits else p[:0]                # (n_ahead, V)
        drafts = ext[0, start:]                                                            # (n_ahead,)
        n, new = accept(p, q, drafts, gen)
        if not 0 <= n <= n_ahead or new.shape != (n + 1,) or not torch.equal(new[:n].to(drafts), drafts[:n]):
            raise SLMLabError(f"the accept rule returned n={n} and tokens of shape {tuple(new.shape)}; it must "
                              f"return n in 0…{n_ahead} and the n accepted drafts followed by one new token.")
        seq = torch.cat([seq, new.to(dev).view(1, -1)], dim=1)
        t_cache = crop_cache(out.kv_cache, start + n)            # drop the rejected drafts (and the new token)
        d_cache = crop_cache(d_cache, min(cache_length(d_cache), start + n))
        stats.cycles += 1
        stats.target_calls += 1
        stats.draft_calls += n_ahead
        stats.proposed += n_ahead
        stats.accepted += n
        stats.rejected += n < n_ahead
    stats.new_tokens = max_new_tokens
    target.train(modes[0])
    draft.train(modes[1])
    return seq.to(idx.device), stats


# ------------------------------------------------------------------------------- exactness, tested ----
def chi_square_test(counts: torch.Tensor, probs_: torch.Tensor) -> tuple[float, float, int]:
    """Pearson's goodness of fit of counts (V,) to probabilities (V,) → (p-value, statistic, degrees of
    freedom). Cells expecting fewer than 5 are pooled into one, as the χ² approximation needs. The p-value is
    P(χ²_dof > statistic) = Q(dof/2, statistic/2), the regularised upper incomplete gamma (no SciPy needed)."""
    if counts.shape != probs_.shape or counts.dim() != 1:
        raise SLMLabError(f"counts {tuple(counts.shape)} and probabilities {tuple(probs_.shape)} must be two "
                          "vectors of the same length, one entry per token.")
    counts, expected = counts.double(), probs_.double() * counts.sum()
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum().view(1)])
    exp = torch.cat([expected[big], expected[~big].sum().view(1)])
    if exp[-1] < 1e-9:                                   # nothing to pool
        obs, exp = obs[:-1], exp[:-1]
    stat, dof = float(((obs - exp) ** 2 / exp).sum()), len(obs) - 1
    p = torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64))
    return float(p), stat, dof


# ------------------------------------------------------------------------------------------- theory ----
# With each draft token accepted independently with probability α (the papers' simplification), a cycle
# emits 1 + α + … + α^k tokens: the accepted run plus one replacement or bonus token.
def _check_alpha_k(alpha: float, k: int) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise SLMLabError(f"alpha={alpha} is a probability; it must be in [0, 1].")
    if k < 0:
        raise SLMLabError(f"k={k} must be ≥ 0.")


def expected_tokens_per_cycle(alpha: float, k: int) -> float:
    """(1 − α^(k+1)) / (1 − α): tokens one target call yields on average; α = 1 → k + 1."""
    _check_alpha_k(alpha, k)
    return float(k + 1) if alpha == 1.0 else (1 - alpha ** (k + 1)) / (1 - alpha)


def expected_speedup(alpha: float, k: int, cost_ratio: float, verify_ratio: float = 1.0) -> float:
    """Tokens per unit of target-step time, relative to plain decoding: a cycle costs k draft steps
    (cost_ratio = draft step / target step) and one verify pass (verify_ratio = (k+1)-token target
    forward / 1-token step)."""
    if cost_ratio < 0 or verify_ratio <= 0:
        raise SLMLabError(f"cost_ratio={cost_ratio} must be ≥ 0 and verify_ratio={verify_ratio} > 0; "
                          "they are ratios of measured times.")
    return expected_tokens_per_cycle(alpha, k) / (k * cost_ratio + verify_ratio)


def break_even_cost_ratio(alpha: float, k: int, verify_ratio: float = 1.0, speedup: float = 1.0) -> float:
    """The largest cost_ratio at which expected_speedup still reaches `speedup`. Negative: not even a free
    draft reaches it."""
    if k < 1 or speedup <= 0:
        raise SLMLabError(f"k={k} must be ≥ 1 and speedup={speedup} > 0.")
    return (expected_tokens_per_cycle(alpha, k) / speedup - verify_ratio) / k
