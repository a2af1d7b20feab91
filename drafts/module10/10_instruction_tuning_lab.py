# %% [markdown]
# # Lab 10 · Instruction tuning and task accuracy
#
# You will write the two pieces that turn a text model into an assistant you can grade, then use them on the
# course's Shakespeare model and its instruction data:
#
# 1. the chat template with its loss mask (3 points) · 2. a multiple-choice scorer (3).
#
# Each task has a code cell with `raise NotImplementedError` for you to replace, then a **check cell**
# that tests your function against a reference on fresh inputs and tells you, in one line, the first
# thing that is wrong. Do not edit the check cells: grading puts them back anyway.
# Notebook 10 (`notebooks/10_instruction_tuning.ipynb`) explains every piece and fine-tunes the model.

# %%
import torch
import torch.nn.functional as F

from slm_lab import chat, instruct, settings, task_eval
from slm_lab.checks import m10

settings.seed_everything(0)
settings.set_threads()
print(settings.summary())

# %% [markdown]
# ## 1. The chat template and its loss mask
#
# A pretrained model continues text. To make it *answer*, supervised fine-tuning (SFT) shows it turns
# written in one fixed template,
#
# `<|user|>PROMPT<|assistant|>ANSWER<|end|>`
#
# where `<|user|>`, `<|assistant|>` and `<|end|>` (`chat.USER`, `chat.ASSISTANT`, `chat.END`) are **special
# tokens**: the chat tokenizer turns each of those strings into one new id of its own, while text that merely
# looks like them (`"<|"`, `"end|>"`) stays ordinary characters. At test time the prompt is written up to
# `<|assistant|>` and the model continues; `<|end|>` is how it says it is done.
#
# The loss is **masked**: every token gets a label, its own id where it is a target and `-100`
# (`chat.IGNORE`, the index `F.cross_entropy` skips) where it is not. The targets are the answer and the
# `<|end|>` token; `<|user|>`, the prompt and `<|assistant|>` are `-100`. Why: at test time the prompt is
# given, so learning to predict it spends the model's small capacity on text it will never have to write;
# the answer is what it is graded on, and labelling `<|end|>` teaches it to stop. Labels sit on the token
# they belong to (one label per id); the training loss shifts them itself, since the logits at position
# $j-1$ predict token $j$.
#
# | token | `<\|user\|>` | `N` | `o` | `?` | `<\|assistant\|>` | `Y` | `e` | `s` | `<\|end\|>` |
# |---|---|---|---|---|---|---|---|---|---|
# | label | -100 | -100 | -100 | -100 | -100 | id of `Y` | id of `e` | id of `s` | id of `<\|end\|>` |
#
# Write `encode_turn(tokenizer, prompt, answer)`: return `(ids, labels)`, two lists of ints of the same
# length (the tokenizer is a chat tokenizer: `tokenizer.encode(text)` gives ids, special tokens included).
# Do not call `chat.encode_example`: the check switches it off while your code runs.

# %%
def encode_turn(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(ids, labels) of one turn: labels[j] = ids[j] on the answer and END, chat.IGNORE elsewhere."""
    ### BEGIN SOLUTION
    # HINT: encode what the user side holds (its marker, the prompt, the assistant's marker) apart from what the assistant says (the answer and the end marker); the ids are the two parts joined, the labels are the ignore value for every token of the first part, then the second part's own ids
    head = tokenizer.encode(chat.USER + prompt + chat.ASSISTANT)
    body = tokenizer.encode(answer + chat.END)
    return head + body, [chat.IGNORE] * len(head) + body
    ### END SOLUTION


# %% check id=10.encode_turn points=3
m10.check_encode_turn(encode_turn)

# %% [markdown]
# ## 2. Multiple choice by log-likelihood
#
# A question with choices needs no generation: ask the model how likely each choice is **as the assistant's
# answer**, and pick the most likely. The score of a choice $c$ with tokens $t_1 \dots t_n$ followed by
# $t_{n+1} =$ `<|end|>` is the mean log-probability per token,
#
# $$\mathrm{score}(c) = \frac{1}{n+1}\sum_{j=1}^{n+1} \log p\left(t_j \mid \text{the prompt's turn},\ t_1 \dots t_{j-1}\right),$$
#
# where the prompt's turn is everything up to and including `<|assistant|>`.
#
# - **`<|end|>` counts**: the answer must *stop* there; without it, a choice that is only the start of a
#   likely answer would score as well as the answer.
# - **The mean, not the sum** (length normalisation): each token adds a negative log-probability, so a sum
#   ranks a long choice lower for having more tokens, whatever they say. Dividing by the number of tokens
#   compares the choices per token. (Evaluation harnesses report both; EleutherAI's lm-evaluation-harness
#   calls them `acc` and `acc_norm`, the latter normalised by the choice's length.)
# - **Positions**: the logits at position $j$ are the model's distribution of token $j+1$, so a token's
#   log-probability is read in the row *before* it.
#
# Write `score_choices(model, tokenizer, prompt, choices)`: one float per choice, in order. The prompt's text
# is `chat.format_turn(prompt)`; `model(ids).logits` has shape `(1, T, V)` for `ids` of shape `(1, T)`
# (make the tensor on the model's device: `next(model.parameters()).device`). Do not call
# `task_eval.choice_logprobs` or `task_eval.choose`: the check switches them off while your code runs.

# %%
@torch.no_grad()
def score_choices(model, tokenizer, prompt: str, choices) -> list[float]:
    """The mean log-probability per token of each choice (its tokens, then END) as the answer to prompt."""
    ### BEGIN SOLUTION
    # HINT: for each choice, run the whole turn (formatted prompt, choice, end marker) through the model once; take log-softmax over the vocabulary; each answer token's score is in the row just before it, at that token's id; average those scores
    head = tokenizer.encode(chat.format_turn(prompt))
    device = next(model.parameters()).device
    scores = []
    for choice in choices:
        ids = torch.tensor([head + tokenizer.encode(choice + chat.END)], device=device)
        logp = F.log_softmax(model(ids).logits[0].float(), dim=-1)         # (T, V): row j predicts token j + 1
        rows = torch.arange(len(head) - 1, ids.shape[1] - 1, device=device)
        scores.append(logp[rows, ids[0, rows + 1]].mean().item())
    return scores
    ### END SOLUTION


# %% check id=10.score_choices points=3
m10.check_score_choices(score_choices)

# %% [markdown]
# ## 3. Your functions on the course's model and data
#
# Take the Shakespeare model of module 02, give it the three chat tokens (`chat.add_chat_tokens` adds one
# embedding row each) and build the instruction data offline from the plays and Python's documentation
# (`instruct.build`: "Shakespeare or Python?", the last word of a line among four, its first word). Here is
# one training example through **your** `encode_turn`, the way the loss sees it (`·` marks what is masked):

# %%
from slm_lab.train import pretrained

ck = pretrained("small", progress=False)
model, tok = chat.add_chat_tokens(ck.model, ck.tokenizer)
data = instruct.build(set(ck.tokenizer.chars))
print(f"{len(data.train)} training and {len(data.test)} test examples in the families {', '.join(instruct.FAMILIES)}")

example = data.train[0]
ids, labels = encode_turn(tok, example.prompt, example.answer)
pieces = [tok.decode([i]) for i in ids]
print("tokens :", "".join(pieces))
print("targets:", "".join(p if lab != chat.IGNORE else "·" * len(p) for p, lab in zip(pieces, labels)))
print(f"{sum(lab != chat.IGNORE for lab in labels)} of {len(ids)} tokens are targets")

# %% [markdown]
# Now **your** `score_choices` on 20 multiple-choice test questions, asked of the model *before* any
# instruction tuning: does it choose what the package's `task_eval.choose` chooses, how often is it right
# (with a 95% Wilson interval, `task_eval.wilson`), and how many choices would a sum instead of a mean
# change?

# %%
questions = [e for e in data.test if e.choices][:20]
mine = [e.choices[int(torch.as_tensor(score_choices(model, tok, e.prompt, e.choices)).argmax())] for e in questions]
reference = [task_eval.choose(model, tok, e.prompt, e.choices) for e in questions]
summed = [task_eval.choose(model, tok, e.prompt, e.choices, length_norm=False) for e in questions]
n = len(questions)
agree = sum(a == b for a, b in zip(mine, reference))
correct = sum(a == e.answer for a, e in zip(mine, questions))
lo, hi = task_eval.wilson(correct, n)
chance = sum(1 / len(e.choices) for e in questions) / n
print(f"your choice = task_eval.choose on {agree} of {n} questions")
print(f"untuned accuracy {correct}/{n} = {correct / n:.0%} (95% interval {lo:.0%}–{hi:.0%}); chance {chance:.0%}")
print(f"summing instead of averaging changes the choice on {sum(a != b for a, b in zip(reference, summed))} of {n}")
for e, pick in list(zip(questions, mine))[:3]:
    print(f"  {e.prompt[:70]!r}: chose {pick!r}, answer {e.answer!r}")

# %% [markdown]
# The untuned model has never seen the template, so its choices say little about what it learned from the
# plays; and with 20 questions the interval is wide — far too wide to tell two models apart. Notebook 10
# fine-tunes the model on the training examples (with the loss masked as your `encode_turn` masks it) and
# measures every task family on all its test questions, each with its interval and its chance or trivial
# baseline.
