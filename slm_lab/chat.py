"""The chat format: special tokens, a model grown to hold them, prompts and answers as training examples
with the loss on the answer only, and `chat()`.

A conversation turn is written  <|user|>PROMPT<|assistant|>ANSWER<|end|>  — three special tokens, each one
new id (`ChatTokenizer`, below). `add_chat_tokens` grows the model's embedding (and its tied output
head) by three rows, initialised to the mean of the existing rows: a new token then starts as an
"average character", so the model's first predictions after it are sensible and the loss starts where
the pretrained model's does, not at a random spike.

Supervised fine-tuning trains on a stream of such examples with `train()`, through `masked_loss`: the
targets of the prompt's positions are ignored (label -100), so the model is graded only on what the
assistant says (the answer and its end-of-turn token), not on predicting the instruction.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import regex
import torch
import torch.nn.functional as F

from . import tokenizer as _tokenizers
from .data import get_batch, step_generator
from .errors import SLMLabError
from .model import SLM
from .tokenizer import _ids, _save_json, tokenizer_from_dict


# The tokenizer of a chat model: any course tokenizer plus special tokens. It lives here, not in
# slm_lab.tokenizer, and registers its kind there, so `load_tokenizer` / `load_checkpoint` read a chat model's
# tokenizer.json once this module is imported (slm_lab.chat, slm_lab.sft and slm_lab.task_eval import it).
class ChatTokenizer:
    """A base tokenizer plus special tokens: `specials[i]` has id base.vocab_size + i. In text, a special
    token is written as itself (e.g. "<|user|>") and encodes to its one id; the rest goes to the base."""

    kind = "chat"

    def __init__(self, base, specials: Iterable[str]):
        self.base, self.specials = base, list(specials)
        if len(set(self.specials)) != len(self.specials) or not all(self.specials):
            raise SLMLabError(f"special tokens must be distinct non-empty strings, got {self.specials}.")
        self.special_ids = {t: base.vocab_size + i for i, t in enumerate(self.specials)}
        self._split = regex.compile("(" + "|".join(regex.escape(t) for t in self.specials) + ")")

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size + len(self.specials)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for part in self._split.split(text):
            if part in self.special_ids:
                ids.append(self.special_ids[part])
            elif part:
                ids += self.base.encode(part)
        return ids

    def decode(self, ids) -> str:
        out: list[str] = []
        run: list[int] = []
        for i in _ids(ids):
            if i >= self.base.vocab_size:
                out.append(self.base.decode(run))
                run = []
                out.append(self.specials[i - self.base.vocab_size])
            else:
                run.append(i)
        return "".join(out) + self.base.decode(run)

    def to_dict(self) -> dict:
        return {"type": self.kind, "base": self.base.to_dict(), "specials": self.specials}

    @classmethod
    def from_dict(cls, d: dict) -> ChatTokenizer:
        return cls(tokenizer_from_dict(d["base"]), d["specials"])

    def save(self, path: str | Path) -> None:
        _save_json(self.to_dict(), path)



_tokenizers.KINDS[ChatTokenizer.kind] = ChatTokenizer  # type: ignore[assignment]

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


def chat_box(model, tokenizer, prompt: str, max_new_tokens: int = 40):
    """A prompt box over slm_lab.chat.chat; prints the answer to the default prompt."""
    import ipywidgets as w
    from IPython.display import display

    from .chat import chat

    text = w.Text(value=prompt, description="you", layout={"width": "90%"})
    out = w.Output(layout={"border": "1px solid #ddd"})

    def answer(prompt_: str) -> str:
        try:
            return chat(model, tokenizer, prompt_, max_new_tokens)
        except Exception as exc:  # a character outside the vocabulary, a prompt longer than the context
            return f"⚠ {exc}"

    def refresh(_=None):
        out.clear_output()
        with out:
            print("assistant:", answer(text.value))

    text.observe(refresh, names="value")
    print(f"you: {prompt}\nassistant: {answer(prompt)}")
    display(w.VBox([text, out]))
    refresh()
