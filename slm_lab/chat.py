"""The chat format: special tokens, a model grown to hold them, prompts and answers as training examples
with the loss on the answer only, and `chat()`.

A conversation turn is written  <|user|>PROMPT<|assistant|>ANSWER<|end|>  — three special tokens, each one
new id (`tokenizer.ChatTokenizer`). `add_chat_tokens` grows the model's embedding (and its tied output
head) by three rows, initialised to the mean of the existing rows: a new token then starts as an
"average character", so the model's first predictions after it are sensible and the loss starts where
the pretrained model's does, not at a random spike.

Supervised fine-tuning trains on a stream of such examples with `train()`, through `masked_loss`: the
targets of the prompt's positions are ignored (label -100), so the model is graded only on what the
assistant says (the answer and its end-of-turn token), not on predicting the instruction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import get_batch, step_generator
from .errors import SLMLabError
from .model import SLM
from .tokenizer import ChatTokenizer

USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
SPECIALS = (USER, ASSISTANT, END)
IGNORE = -100                      # the label F.cross_entropy skips (its ignore_index default)


def add_chat_tokens(model: SLM, tokenizer) -> tuple[SLM, ChatTokenizer]:
    """Grow `model` in place by one embedding row (and output row: the head is tied) per chat token; return
    it with the chat tokenizer. The new rows are the mean of the old ones (see the module docstring)."""
    if isinstance(tokenizer, ChatTokenizer):
        raise SLMLabError("this tokenizer already has the chat tokens; add them once, to the base tokenizer.")
    if model.cfg.vocab_size != tokenizer.vocab_size:
        raise SLMLabError(f"the model's vocabulary ({model.cfg.vocab_size}) is not the tokenizer's "
                          f"({tokenizer.vocab_size}); pass the tokenizer the model was trained with.")
    chat_tok = ChatTokenizer(tokenizer, SPECIALS)
    old = model.tok_emb.weight.data
    new = torch.cat([old, old.mean(dim=0, keepdim=True).expand(len(SPECIALS), -1)])       # (V + 3, D)
    model.tok_emb = torch.nn.Embedding.from_pretrained(new.clone(), freeze=False)
    head = torch.nn.Linear(new.shape[1], new.shape[0], bias=False).to(old.device)
    if model.cfg.tie_weights:
        head.weight = model.tok_emb.weight
    else:
        old_head = model.lm_head.weight.data
        head.weight.data = torch.cat([old_head, old_head.mean(dim=0, keepdim=True).expand(len(SPECIALS), -1)])
    model.lm_head = head
    model.cfg.vocab_size = chat_tok.vocab_size
    return model, chat_tok


def format_turn(prompt: str, answer: str | None = None) -> str:
    """The text of one turn; without an answer, the prompt the model is to continue."""
    return f"{USER}{prompt}{ASSISTANT}" + ("" if answer is None else f"{answer}{END}")


def _require_chat(tokenizer) -> ChatTokenizer:
    if not isinstance(tokenizer, ChatTokenizer) or not set(SPECIALS) <= set(tokenizer.specials):
        raise SLMLabError("this tokenizer has no chat tokens; call add_chat_tokens(model, tokenizer) first "
                          "(or load a checkpoint saved after it).")
    return tokenizer


def encode_example(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(ids, labels) of one turn: labels[j] = ids[j] for the answer and its end token, IGNORE elsewhere.
    A label says whether token j is a target: with targets shifted by one, position j-1 learns to predict it."""
    tok = _require_chat(tokenizer)
    if not answer:
        raise SLMLabError(f"the answer to {prompt[:40]!r} is empty; every example needs an answer to learn.")
    head, body = tok.encode(format_turn(prompt)), tok.encode(answer + END)
    return head + body, [IGNORE] * len(head) + body


def sft_stream(tokenizer, examples: list[tuple[str, str]], block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All examples, one after the other: (ids, labels), 1-D int64, for train() and masked_loss."""
    ids: list[int] = []
    labels: list[int] = []
    for prompt, answer in examples:
        i, lab = encode_example(tokenizer, prompt, answer)
        if len(i) > block_size:
            raise SLMLabError(f"an example is {len(i)} tokens long, more than the context of {block_size}; "
                              f"shorten it (prompt {prompt[:40]!r}…) or use a model with a longer context.")
        ids += i
        labels += lab
    return torch.tensor(ids), torch.tensor(labels)


def masked_loss(labels: torch.Tensor, cfg):
    """A train() loss_fn for a run with TrainConfig cfg over sft_stream's ids: cross-entropy on the answer
    tokens only. It draws the labels' window with the same generator as train()'s batch
    (data.step_generator(cfg.seed, step, micro)), so the labels line up with the batch's targets."""
    def loss_fn(model, x, y, step, micro):
        block = x.shape[1]
        _, target = get_batch(labels, cfg.batch_size, block, step_generator(cfg.seed, step, micro), x.device)
        logits = model(x).logits
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE)
    return loss_fn


def answer_loss(model: SLM, tokenizer, examples: list[tuple[str, str]]) -> float:
    """Mean cross-entropy on the answer tokens of examples (one forward pass each), the number SFT lowers."""
    total, count = 0.0, 0
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for prompt, answer in examples:
            ids, labels = encode_example(tokenizer, prompt, answer)
            x = torch.tensor([ids[:-1]], device=device)
            y = torch.tensor([labels[1:]], device=device)
            loss = F.cross_entropy(model(x).logits[0], y[0], ignore_index=IGNORE, reduction="sum")
            total, count = total + loss.item(), count + int((y != IGNORE).sum())
    return total / max(count, 1)


@torch.no_grad()
def chat(model: SLM, tokenizer, prompt: str, max_new_tokens: int = 40) -> str:
    """The assistant's greedy answer to prompt (up to its end-of-turn token or max_new_tokens)."""
    tok = _require_chat(tokenizer)
    if model.cfg.vocab_size != tok.vocab_size:
        raise SLMLabError(f"the model has {model.cfg.vocab_size} tokens but the chat tokenizer {tok.vocab_size}; "
                          "use the model add_chat_tokens grew (or the checkpoint saved after it).")
    ids = tok.encode(format_turn(prompt))
    if len(ids) + 1 > model.cfg.block_size:
        raise SLMLabError(f"the prompt takes {len(ids)} tokens but the model's context is {model.cfg.block_size}; "
                          "shorten it.")
    model.eval()
    device = next(model.parameters()).device
    end = tok.special_ids[END]
    out = model(torch.tensor([ids], device=device), use_cache=True)
    cache, new = out.kv_cache, []
    for _ in range(min(max_new_tokens, model.cfg.block_size - len(ids))):
        nxt = int(out.logits[0, -1].argmax())
        if nxt == end:
            break
        new.append(nxt)
        out = model(torch.tensor([[nxt]], device=device), kv_cache=cache)
        cache = out.kv_cache
    return tok.decode(new)
