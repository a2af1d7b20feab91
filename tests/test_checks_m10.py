"""Lab 10 checks accept a student's answers, reject the unsolved stub and name each planted mistake in the chat
template's loss mask and in the multiple-choice scorer."""
import pytest
import torch
import torch.nn.functional as F
from checking import rejects, todo

from slm_lab import task_eval
from slm_lab.checks import m10

USER, ASSISTANT, END, IGNORE = "<|user|>", "<|assistant|>", "<|end|>", -100


# ------------------------------------------------------------------------------------------- encode_turn ----
def make_encode_turn(ids_text=lambda p, a: (USER + p + ASSISTANT, a + END), labels=None, tensors=False, encode=None):
    """A student's encode_turn: the turn's text in two parts (the masked head, the labelled body), and how the
    labels are made from the two parts' ids; one knob per plausible mistake."""
    def encode_turn(tokenizer, prompt, answer):
        enc = encode(tokenizer) if encode else tokenizer.encode
        head_text, body_text = ids_text(prompt, answer)
        head, body = enc(head_text), enc(body_text)
        ids = head + body
        lab = labels(head, body) if labels else [IGNORE] * len(head) + body
        return (torch.tensor(ids), torch.tensor(lab)) if tensors else (ids, lab)
    return encode_turn


def test_encode_turn_check_accepts_a_correct_answer(capsys):
    m10.check_encode_turn(make_encode_turn())
    m10.check_encode_turn(make_encode_turn(tensors=True))             # tensors are fine too
    assert "passed" in capsys.readouterr().out


def test_encode_turn_check_rejects_planted_mistakes():
    rejects(m10.check_encode_turn, todo, match="not done yet")
    # the mask off by one at the assistant boundary, both ways
    rejects(m10.check_encode_turn, make_encode_turn(ids_text=lambda p, a: (USER + p, ASSISTANT + a + END)),
            match="the <|assistant|> token is labelled")
    rejects(m10.check_encode_turn, make_encode_turn(labels=lambda h, b: [IGNORE] * (len(h) + 1) + b[1:]),
            match="the first answer token is -100")
    rejects(m10.check_encode_turn, make_encode_turn(labels=lambda h, b: h + [IGNORE] * len(b)), match="the mask is inverted")
    rejects(m10.check_encode_turn, make_encode_turn(ids_text=lambda p, a: (USER + p + ASSISTANT, a)),
            match="the END token is missing")
    rejects(m10.check_encode_turn, make_encode_turn(labels=lambda h, b: [IGNORE] * len(h) + b[:-1] + [IGNORE]),
            match="the END token is not labelled")
    # labels pre-shifted the way targets are: one shorter (labels = ids[1:]), or padded back to length
    rejects(m10.check_encode_turn, make_encode_turn(labels=lambda h, b: ([IGNORE] * len(h) + b)[1:]),
            match="labels are shifted by one")
    rejects(m10.check_encode_turn, make_encode_turn(labels=lambda h, b: ([IGNORE] * len(h) + b)[1:] + [IGNORE]),
            match="labels are shifted by one")
    rejects(m10.check_encode_turn, make_encode_turn(labels=lambda h, b: [IGNORE] * (len(h) + 1) + b, tensors=True),
            match="labels has ")
    rejects(m10.check_encode_turn, make_encode_turn(labels=lambda h, b: h + b), match="every token is labelled")
    rejects(m10.check_encode_turn, make_encode_turn(labels=lambda h, b: [0] * len(h) + b),
            match="masked positions must be -100")
    rejects(m10.check_encode_turn, make_encode_turn(ids_text=lambda p, a: (p + ASSISTANT, a + END)),
            match="the <|user|> token is missing")
    rejects(m10.check_encode_turn, make_encode_turn(encode=lambda tok: tok.base.encode),
            match="spelt out character by character")
    rejects(m10.check_encode_turn, lambda tok, p, a: make_encode_turn()(tok, p, a)[0], match="should return the pair")
    rejects(m10.check_encode_turn, make_encode_turn(labels=lambda h, b: [IGNORE] * (len(h) + len(b))),
            match="nothing to learn")


@pytest.mark.forbidding
def test_encode_turn_check_refuses_the_package():
    from slm_lab import chat

    rejects(m10.check_encode_turn, lambda tok, p, a: chat.encode_example(tok, p, a), match="write it yourself")


# ----------------------------------------------------------------------------------------- score_choices ----
def make_score_choices(reduce=torch.mean, end=True, shift=1, prompt=True, probs=False, start=0, returns=None):
    """A student's score_choices, one sequence per choice: its per-token log-probabilities as the answer,
    with one knob per plausible mistake."""
    @torch.no_grad()
    def score_choices(model, tokenizer, question, choices):
        head = tokenizer.encode(USER + question + ASSISTANT) if prompt else []
        scores = []
        for choice in choices:
            body = tokenizer.encode(choice + END if end else choice)
            ids = torch.tensor(head + body)
            logits = model(ids[None]).logits[0]
            dist = F.softmax(logits, -1) if probs else F.log_softmax(logits, -1)        # (L, V)
            first = max(len(head) - start, 1)                 # the first scored token (with no prompt, its 2nd)
            tokens = torch.arange(first, len(ids))
            scores.append(reduce(dist[tokens - shift, ids[tokens]]).item())
        if returns:
            return returns(scores, choices)
        return scores
    return score_choices


def test_score_choices_check_accepts_a_correct_answer(capsys):
    m10.check_score_choices(make_score_choices())
    m10.check_score_choices(make_score_choices(returns=lambda s, c: torch.tensor(s)))
    assert "passed" in capsys.readouterr().out


def test_score_choices_check_rejects_planted_mistakes():
    rejects(m10.check_score_choices, todo, match="not done yet")
    rejects(m10.check_score_choices, make_score_choices(reduce=torch.sum), match="summed the log-probabilities")
    rejects(m10.check_score_choices, make_score_choices(end=False), match="the END token is not scored")
    rejects(m10.check_score_choices, make_score_choices(shift=0), match="off by one position")
    rejects(m10.check_score_choices, make_score_choices(probs=True), match="these are probabilities")
    rejects(m10.check_score_choices, make_score_choices(prompt=False), match="do not depend on the prompt")
    rejects(m10.check_score_choices, make_score_choices(start=1), match="the <|assistant|> token is scored too")
    rejects(m10.check_score_choices, make_score_choices(returns=lambda s, c: c[max(range(len(s)), key=s.__getitem__)]),
            match="the scores, not the chosen answer")
    rejects(m10.check_score_choices, make_score_choices(returns=lambda s, c: s[:-1]), match="one score per choice")
    rejects(m10.check_score_choices, make_score_choices(reduce=lambda lp: lp.exp().prod()), match="these are probabilities")


@pytest.mark.forbidding
def test_score_choices_check_refuses_the_package():
    rejects(m10.check_score_choices, lambda m, t, p, c: task_eval.choice_logprobs(m, t, p, c), match="write it yourself")


def test_the_check_choices_rank_differently_by_sum_and_by_mean():
    """The check's items are built so that summing instead of averaging changes the choice made."""
    model, tok = m10._scoring_model()
    for prompt, choices in m10._ITEMS:
        mean = task_eval.choice_logprobs(model, tok, prompt, choices)
        total = task_eval.choice_logprobs(model, tok, prompt, choices, length_norm=False)
        assert mean.argmax() != total.argmax(), prompt
