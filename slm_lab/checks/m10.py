"""Checks for lab 10 — put the SLM to work: the chat template with its loss mask, and multiple choice by
log-likelihood.

The references are the package's own: `slm_lab.chat.encode_example` for (ids, labels) and
`slm_lab.task_eval.choice_logprobs` (mean per token) for the scores. Each wrong answer is compared with what
a usual mistake gives to name it: the mask off by one at the assistant boundary, inverted, or without the
end-of-turn token; labels shifted the way targets are; scores summed, without END, read off the wrong
position, as probabilities, or without the prompt. The texts hold characters that look like the template's
markers ("<|", "|>", "user", "end") but are not, so only the three special tokens mark the boundaries.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import chat, task_eval
from ..model import SLM, SLMConfig
from ..tokenizer import CharTokenizer
from . import call, expect_close, fail, forbids, passed
from .remote import Remote

IGNORE = chat.IGNORE
# The base vocabulary: letters, digits, punctuation and the markers' own characters, which a text may hold.
_TEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'\"()<|>-_=+*/"

# (prompt, answer): a plain one, ones whose text looks like the markers, one whose prompt ends with the
# character its answer starts with (a mask off by one cannot hide behind equal ids), a one-character answer.
_TURNS = (
    ("Name a colour.", "Blue"),
    ("Is 3 < 4 | 5 > 2?", "yes <| no |>"),
    ("<|user assistant|> end|> <|end", "|>end"),
    ("Say so", "so it is."),
    ("First letter of Rome?", "R"),
)

# (prompt, choices): choices of different lengths, so that a sum and a mean rank them differently.
_ITEMS = (
    ("Which is it?", ["no", "it is the second one, surely", "a"]),
    ("Is 3 < 4 | 5 > 2?", ("yes <|", "no |> it is not so", "maybe")),         # a tuple, as instruct.Example has
    ("Pick the fruit: apple or stone", ["apple", "a stone, of course", "neither"]),
)
_OTHER_PROMPT = "Something else entirely?"


def _type(value) -> str:
    return value.type_name if isinstance(value, Remote) else type(value).__name__


def _chat_tokenizer():
    return chat.ChatTokenizer(CharTokenizer(_TEXT), chat.SPECIALS)


def _int_list(value, what: str, name: str) -> list[int]:
    """value (a list of ints or a 1-D integer tensor) as a list of ints."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 1:
            fail(f"{what}: {name} should be 1-D, one entry per token; got shape {tuple(value.shape)}.")
        if value.dtype.is_floating_point or value.dtype == torch.bool:
            fail(f"{what}: {name} should hold integers (token ids and -100), got dtype {value.dtype}.")
        return [int(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        items = [int(v) if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.dtype.is_floating_point else v
                 for v in value]
        bad = [v for v in items if not isinstance(v, int) or isinstance(v, bool)]
        if not bad:
            return items
        fail(f"{what}: {name} should be a list of ints; it holds a {_type(bad[0])}.")
    fail(f"{what}: {name} should be a list of ints (or a 1-D integer tensor), got {_type(value)}.")


# ------------------------------------------------------------------------------ encode_turn ----
def _ids_slip(ids: list[int], tok, prompt: str, answer: str) -> str | None:
    """Name the template mistake that gives these ids, if it is a usual one."""
    U, A, E = chat.USER, chat.ASSISTANT, chat.END
    slips = {
        "the END token is missing — the turn ends with <|end|> after the answer (chat.END), so the model learns "
        "to stop": U + prompt + A + answer,
        "the <|user|> token is missing — the turn starts with it (chat.USER)": prompt + A + answer + E,
        "the <|assistant|> token is missing — it goes between the prompt and the answer (chat.ASSISTANT)":
            U + prompt + answer + E,
        "the answer comes before the prompt — the turn is USER, prompt, ASSISTANT, answer, END": U + answer + A + prompt + E,
    }
    for msg, text in slips.items():
        if ids == tok.encode(text):
            return msg
    try:
        spelt = tok.base.encode(chat.format_turn(prompt, answer))
    except Exception:  # noqa: BLE001 - the base vocabulary may lack the markers' characters
        spelt = None
    if ids == spelt:
        return ("the chat tokens are spelt out character by character — encode with the chat tokenizer itself, "
                "which turns each of <|user|>, <|assistant|>, <|end|> into its one id")
    return None


def _check_ids(ids: list[int], ref: list[int], tok, prompt: str, answer: str, what: str) -> None:
    if ids == ref:
        return
    slip = _ids_slip(ids, tok, prompt, answer)
    if slip:
        fail(f"{what}: {slip}.")
    if len(ids) != len(ref):
        fail(f"{what} returned {len(ids)} ids for prompt {prompt!r} and answer {answer!r}, expected {len(ref)}: "
             "the tokens of USER + prompt + ASSISTANT + answer + END.")
    j = next(i for i, (a, b) in enumerate(zip(ids, ref, strict=True)) if a != b)
    got = tok.decode([ids[j]]) if 0 <= ids[j] < tok.vocab_size else f"id {ids[j]}"
    fail(f"{what}: ids differ from USER + prompt + ASSISTANT + answer + END at position {j} for prompt {prompt!r}: "
         f"got {got!r}, expected {tok.decode([ref[j]])!r}.")


def _check_labels(labels: list[int], ids: list[int], ref: list[int], tok, prompt: str, what: str) -> None:
    n, h = len(ids), next(j for j, v in enumerate(ref) if v != IGNORE)     # h: the first answer token
    if labels == ref:
        return
    shifted = "labels are shifted by one, the way targets are (labels[j] = ids[j + 1]) — give one label per token, " \
              "labels[j] = ids[j] on the answer and END: the loss shifts the targets itself"
    if len(labels) != n:
        if labels == ref[1:]:
            fail(f"{what}: {shifted}.")
        fail(f"{what}: labels has {len(labels)} entries but ids has {n} — give one label per token.")
    labelled = [j for j in range(n) if labels[j] != IGNORE]
    mask_ref = [j for j in range(n) if ref[j] != IGNORE]
    prompt_values = {labels[j] for j in range(h) if labels[j] != ids[j]} - {IGNORE}
    if len(prompt_values) == 1 and all(labels[j] in prompt_values for j in range(h)):
        fail(f"{what}: the prompt's labels are {prompt_values.pop()} — masked positions must be -100 (chat.IGNORE), "
             "the label F.cross_entropy ignores.")
    wrong = [j for j in labelled if labels[j] != ids[j]]
    if wrong:
        if all(j + 1 < n and labels[j] == ids[j + 1] for j in labelled):
            fail(f"{what}: {shifted}.")
        j = wrong[0]
        fail(f"{what}: labels[{j}] is {labels[j]} but ids[{j}] is {ids[j]} — a label is either the token's own id "
             "(a target) or -100 (ignored).")
    if labelled == mask_ref:
        return
    if labelled == list(range(h)):
        fail(f"{what}: the mask is inverted — the prompt is labelled and the answer is -100; the model is to learn "
             "the answer, so label it (and END) and set the prompt's labels to -100.")
    if labelled == list(range(n)):
        fail(f"{what}: every token is labelled, the prompt too — set the labels of USER, the prompt and ASSISTANT "
             "to -100 so the loss grades only the answer.")
    if not labelled:
        fail(f"{what}: every label is -100, so there is nothing to learn — label the answer's tokens and END.")
    if labelled == [h - 1, *mask_ref]:
        fail(f"{what}: the <|assistant|> token is labelled — the mask is off by one at the boundary: it belongs to "
             "the prompt; labels start at the first answer token.")
    if labelled == mask_ref[1:]:
        fail(f"{what}: the first answer token is -100 — the mask is off by one at the boundary: label from the "
             "token right after <|assistant|>.")
    if labelled == mask_ref[:-1]:
        fail(f"{what}: the END token is not labelled — label it too, so the model learns when to stop.")
    j = next(i for i in range(n) if (i in labelled) != (i in mask_ref))
    fail(f"{what}: label {j} ({tok.decode([ids[j]])!r}) should be {ref[j]}, got {labels[j]} (prompt {prompt!r}) — "
         "-100 on USER, the prompt and ASSISTANT; the token's id on the answer and END.")


@forbids("slm_lab.chat.encode_example", "slm_lab.chat.sft_stream")
def check_encode_turn(encode_turn) -> None:
    """encode_turn(tokenizer, prompt, answer) → (ids, labels): the ids of USER + prompt + ASSISTANT + answer + END,
    labels equal to ids on the answer and END and -100 (chat.IGNORE) everywhere else."""
    what = "encode_turn"
    tok = _chat_tokenizer()
    for prompt, answer in _TURNS:
        ref_ids, ref_labels = chat.encode_example(tok, prompt, answer)
        out = call(encode_turn, tok, prompt, answer, what=what)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            fail(f"{what} should return the pair (ids, labels), got {_type(out)}"
                 f"{f' of length {len(out)}' if isinstance(out, (tuple, list)) else ''}.")
        ids, labels = _int_list(out[0], what, "ids"), _int_list(out[1], what, "labels")
        _check_ids(ids, ref_ids, tok, prompt, answer, what)
        _check_labels(labels, ids, ref_labels, tok, prompt, what)
    passed("chat template", "USER/ASSISTANT/END, prompt masked with -100, answer and END labelled, one label per token")


# --------------------------------------------------------------------------- score_choices ----
def _scoring_model():
    """A small random Llama-style SLM that knows the chat tokens, its embeddings (tied to the output head) drawn
    with standard deviation 0.5 rather than 0.02, so its predictions are peaked and every scoring mistake moves
    the scores well beyond the tolerance. Seeded on its own: the student's random state is left as it was."""
    base = CharTokenizer(_TEXT)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(10)
        model = SLM(SLMConfig(family="llama", vocab_size=base.vocab_size, block_size=64, n_layer=1, n_head=2,
                              d_model=16))
        model, tok = chat.add_chat_tokens(model, base)
        with torch.no_grad():
            model.tok_emb.weight.normal_(0.0, 0.5)
    return model.eval(), tok


@torch.no_grad()
def _slips(model, tok, prompt: str, choices) -> dict[str, torch.Tensor]:
    """What the usual mistakes give → what went wrong: the package's sums, and per-token log-probabilities of the
    whole turn (one sequence at a time) read with the mistake."""
    head = tok.encode(chat.format_turn(prompt))
    h = len(head)
    out: dict[str, list[float]] = {"no_end": [], "same_position": [], "assistant_too": [], "probabilities": []}
    for c in choices:
        body = tok.encode(c + chat.END)
        ids = torch.tensor([head + body])
        logp = F.log_softmax(model(ids).logits[0].float(), dim=-1)              # (L, V): row j predicts token j + 1
        pos = torch.arange(h - 1, h - 1 + len(body))                            # the rows predicting the answer
        lp = logp[pos, ids[0, pos + 1]]
        out["no_end"].append(lp[:-1].mean().item() if len(body) > 1 else float("nan"))
        out["same_position"].append(logp[pos + 1, ids[0, pos + 1]].mean().item())
        early = torch.arange(h - 2, h - 1 + len(body))                         # from the row predicting ASSISTANT
        out["assistant_too"].append(logp[early, ids[0, early + 1]].mean().item())
        out["probabilities"].append(lp.exp().mean().item())
    return {
        "summed the log-probabilities — take the mean per token (the answer's tokens and END), so a long choice "
        "is not penalised for having more tokens": task_eval.choice_logprobs(model, tok, prompt, choices, length_norm=False),
        "the END token is not scored — score the choice followed by <|end|> (chat.END): the answer must also stop "
        "there": torch.tensor(out["no_end"]),
        "off by one position — the logits at position j predict token j + 1, so token j's log-probability is read "
        "from the row before it": torch.tensor(out["same_position"]),
        "the <|assistant|> token is scored too — it belongs to the prompt; score only the choice's tokens and END":
            torch.tensor(out["assistant_too"]),
        "these are probabilities — average the log-probabilities (log_softmax), not softmax probabilities":
            torch.tensor(out["probabilities"]),
    }


def _scores(value, n: int, what: str) -> torch.Tensor:
    """value (a list of numbers or a (n,) tensor) as a float64 tensor."""
    if isinstance(value, torch.Tensor):
        if value.numel() == n and value.dim() <= 2 and value.dim() != 0:
            return value.detach().reshape(-1).double()
        fail(f"{what} should return one score per choice ({n}), got a tensor of shape {tuple(value.shape)}.")
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            fail(f"{what} returned {len(value)} scores for {n} choices — one score per choice.")
        if all((isinstance(v, (int, float)) and not isinstance(v, bool))
               or (isinstance(v, torch.Tensor) and v.numel() == 1) for v in value):
            return torch.tensor([float(v) for v in value], dtype=torch.float64)
    if isinstance(value, (int, float, str)):
        fail(f"{what} should return one score per choice (a list or tensor of {n} numbers), got one "
             f"{type(value).__name__}: the scores, not the chosen answer.")
    fail(f"{what} should return one score per choice (a list or a tensor of {n} numbers), got {_type(value)}.")


@forbids("slm_lab.task_eval.choice_logprobs", "slm_lab.task_eval.choose")
def check_score_choices(score_choices) -> None:
    """score_choices(model, tokenizer, prompt, choices) → one score per choice: the mean log-probability per token
    of the choice's tokens followed by END as the assistant's answer after format_turn(prompt)."""
    what = "score_choices"
    model, tok = _scoring_model()
    for prompt, choices in _ITEMS:
        ref = task_eval.choice_logprobs(model, tok, prompt, choices).double()
        slips = _slips(model, tok, prompt, choices)
        out = _scores(call(score_choices, model, tok, prompt, choices, what=what), len(choices), what)
        if torch.allclose(out, ref, atol=1e-4, rtol=1e-4):
            continue
        if torch.isnan(out).any():
            fail(f"{what} returned NaN — a choice with no scored tokens? Score its tokens and END.")
        for msg, wrong in slips.items():
            if torch.allclose(out, wrong.double(), atol=1e-4, rtol=1e-4):
                fail(f"{what}: {msg}.")
        if (out >= 0).all():
            fail(f"{what}: these are probabilities, not log-probabilities (every score is ≥ 0, a log-probability is "
                 "below 0) — average log_softmax of the logits over the answer's tokens.")
        again = _scores(call(score_choices, model, tok, _OTHER_PROMPT, choices, what=what), len(choices), what)
        if torch.allclose(out, again, atol=1e-6):
            fail(f"{what}: the scores do not depend on the prompt — score the choice as the answer after "
                 "format_turn(prompt), the whole turn in one sequence.")
        if out.argmax() != ref.argmax():
            fail(f"{what} ranks the choices of {prompt!r} differently from the reference (it prefers "
                 f"{choices[int(out.argmax())]!r}, the reference {choices[int(ref.argmax())]!r}).")
        expect_close(out, ref, what=f"{what} for {prompt!r}", atol=1e-4,
                     hint="mean over the choice's tokens and END of log p(token | the prompt's turn and the tokens before)")
    passed("multiple-choice scorer", "mean log-probability per token, END included, after the prompt, positions shifted")


CHECKS = {"10.encode_turn": check_encode_turn, "10.score_choices": check_score_choices}
