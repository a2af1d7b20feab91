# %% [markdown]
# # 10 · Put the SLM to work: instruction tuning and task accuracy
#
# Every number in this course so far has been a loss, in nats per character. A loss says how surprised a
# model is by text; it does not say whether the model can **do** anything. This module turns the
# module-02 model into an assistant that answers instructions, and measures it the way models are judged
# in practice: **accuracy on tasks**, with an interval, against a baseline.
#
# - a **chat format**: three special tokens and a model grown to hold them;
# - **instruction data**, built offline from text every machine has;
# - **supervised fine-tuning** (SFT) with the course's `train()`, the loss on the answers only;
# - **task evaluation**: multiple choice by log-likelihood, exact match, 95% intervals;
# - what the loss mask, pretraining and LoRA each buy, over seeds; a smaller tuned model against a larger
#   untuned one; and whether the skill survives quantization.

# %%
import copy
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from slm_lab import chat, instruct, settings, sft, task_eval
from slm_lab.latency import time_decode
from slm_lab.quantize import model_bytes, quantize_model
from slm_lab.settings import pick
from slm_lab.sizing import forward_flops_per_token
from slm_lab.train import pretrained
from slm_lab.widgets import chat_box

settings.seed_everything(0)
settings.set_threads()
print(settings.summary())

# %% [markdown]
# ## 1. A chat format
#
# A conversation turn is written `<|user|>PROMPT<|assistant|>ANSWER<|end|>`. The three markers are **special
# tokens**: one new id each, which no text can produce by accident. The end-of-turn token matters most: it
# is how the model says "I am done", so generation can stop.
#
# The model has one embedding row (and, tied to it, one output row) per token, so it must grow by three rows.
# We initialise each new row to the **mean** of the existing ones: the new token starts as an "average
# character". A random row would be an outlier the first layers have never seen; the mean keeps the
# activations in range, and the logits of the old characters do not move at all.

# %%
ckpt = pretrained("small")
model, tok = chat.add_chat_tokens(copy.deepcopy(ckpt.model), ckpt.tokenizer)
print(f"vocabulary: {ckpt.tokenizer.vocab_size} characters + {len(chat.SPECIALS)} chat tokens = {tok.vocab_size}")
ids = torch.tensor([ckpt.tokenizer.encode("ROMEO:\nBut soft!")])
with torch.no_grad():
    moved = (model(ids).logits[..., : ckpt.tokenizer.vocab_size] - ckpt.model(ids).logits).abs().max().item()
print(f"largest change of an old character's logit after growing: {moved:.1e}")
turn = chat.format_turn("First word of: Good morrow, cousin.", "Good")
print(turn, "→", tok.encode(turn))

# %% [markdown]
# ## 2. Instruction data, offline
#
# No download: the data is built from the Shakespeare corpus the course already ships and from CPython's own
# documentation (`pydoc_data`, inside every Python). Three task families, each an instruction with one right
# answer:
#
# | family | instruction | scored by | baseline |
# |---|---|---|---|
# | `source` | is this line from Shakespeare or from Python's documentation? | multiple choice (2) | chance |
# | `last_word` | which of four words ends this line of verse? | multiple choice (4) | chance |
# | `first_word` | what is the first word of this line? | exact match of the generated answer | the commonest training answer |
#
# Each quoted line goes to training or to test, never both. What the data **cannot** teach: knowledge or
# reasoning. Every answer is in the prompt or in the style of the text; the tasks measure whether fine-tuning
# teaches a small model to follow the format and to use what pretraining gave it.

# %%
t0 = time.perf_counter()
split = instruct.build(set(ckpt.tokenizer.chars))
print(f"built in {time.perf_counter() - t0:.1f} s: {len(split.train)} training and {len(split.test)} test examples")
for family in instruct.FAMILIES:
    e = split.family(family)[0]
    print(f"\n[{family}] {len(split.family(family, 'train'))} train / {len(split.family(family))} test")
    print(f"  {e.prompt!r} → {e.answer!r}")
rule = instruct.most_common_answer(split.train, "first_word")
first_test = split.family("first_word")
baselines = {"source": 0.5, "last_word": 0.25,
             "first_word": sum(task_eval.normalise(e.answer) == task_eval.normalise(rule) for e in first_test) / len(first_test)}
print(f"\nbaselines: {baselines} (first_word: always answering {rule!r})")

# %% [markdown]
# ## 3. The loss on the answer only
#
# A training example is the whole turn, but the instruction is not what we want the model to learn to write:
# its labels are set to −100 (the value `F.cross_entropy` skips), and only the answer and its end token are
# targets. Below, the masked part in brackets: the model is graded only on the rest.

# %%
ids_, labels = chat.encode_example(tok, split.train[0].prompt, split.train[0].answer)
shown = "".join(f"[{tok.decode([i])}]" if lab == chat.IGNORE else tok.decode([i]) for i, lab in zip(ids_, labels))
print(shown)
stream_ids, stream_labels = chat.sft_stream(tok, [(e.prompt, e.answer) for e in split.train], model.cfg.block_size)
share = (stream_labels != chat.IGNORE).float().mean().item()
print(f"\n{len(stream_ids):,} tokens of training turns; {share:.1%} of them are targets under the mask")

# %% [markdown]
# ## 4. Fine-tuning with `train()`
#
# `slm_lab.sft.finetune` is module 02's `train()` with a different loss: `chat.masked_loss` draws the labels'
# window with the same random generator as the batch, so each target lines up with its label. The recipe
# (`sft.SFT`): a short run at a lower peak learning rate than pretraining, warm-up and cosine decay.

# %%
steps = pick(smoke=20, full=sft.SFT.max_steps)
val = split.test[-64:]
t0 = time.perf_counter()
history = sft.finetune(model, tok, split.train, val, max_steps=steps)
train_seconds = time.perf_counter() - t0
print(f"{steps} steps in {train_seconds:.0f} s; validation loss over whole turns {history.val_loss[0]:.3f} → {history.val_loss[-1]:.3f}")
plt.figure(figsize=(6, 3))
plt.plot(history.steps, history.train_loss, label="training loss (answers only)")
plt.plot(history.val_steps, history.val_loss, "o-", label="validation loss (whole turns)")
plt.xlabel("step"); plt.ylabel("nats per token"); plt.legend(); plt.title("instruction tuning"); plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Task accuracy
#
# `slm_lab.task_eval` scores each test example: a multiple-choice one by the **mean log-likelihood per token**
# of each choice as the answer (the sum would favour short choices: every extra token can only lower it), a
# generated one by **exact match** after normalising case, spaces and end punctuation. Each accuracy comes with
# its **95% Wilson interval**: with a few hundred items, a difference of a few points is noise.

# %%
test = split.test if not settings.is_smoke() else split.test[:30]
untuned_model, _ = chat.add_chat_tokens(copy.deepcopy(ckpt.model), ckpt.tokenizer)
t0 = time.perf_counter()
untuned = task_eval.evaluate_tasks(untuned_model, tok, test, baselines)
tuned = task_eval.evaluate_tasks(model, tok, test, baselines)
print(f"scored {2 * len(test)} answers in {time.perf_counter() - t0:.0f} s\n")
print("untuned (the pretrained model, chat tokens added):")
print(task_eval.format_results(untuned))
print("\ntuned (masked SFT):")
print(task_eval.format_results(tuned))
for family, r in tuned.items():
    lo, _ = r.interval
    print(f"{family}: lower end of the interval {lo:.1%} vs baseline {r.baseline:.1%}: "
          f"{(lo - r.baseline) * 100:+.1f} points")

# %% [markdown]
# Ask it yourself (the box answers as you type; a character outside the vocabulary or a prompt longer than
# the context gets one line saying so):

# %%
chat_box(model, tok, "First word of: Now is the winter of our discontent")
for prompt in ("Shakespeare or Python? Return a new list of the items.", "Shakespeare or Python? O Romeo, Romeo!"):
    print(f"you: {prompt}\nassistant: {chat.chat(model, tok, prompt)}")

# %% [markdown]
# ## 6. What the mask, pretraining and LoRA buy — over seeds
#
# One run says little: a different seed draws different batches. `benchmarks/instruct.py` repeats each
# variant over seeds (masked and unmasked loss; pretrained or random start, same steps; full fine-tuning or
# LoRA r = 8) and stores every run in `benchmarks/results/instruct.json`. Here we replay it.

# %%
RESULTS = Path("../benchmarks/results/instruct.json")
if not RESULTS.is_file():
    print(f"{RESULTS} not found: run `python benchmarks/instruct.py` in the repository to measure the seeds.")
else:
    results = json.loads(RESULTS.read_text())
    print(f"{RESULTS}: {results['steps']} steps, {results['seeds']} seeds, {results['n_test']} test items")
    groups = {"untuned": "untuned", "masked": "SFT masked seed", "unmasked": "SFT unmasked",
              "random init": "random init", "LoRA r=8": "LoRA"}
    fig, axes = plt.subplots(1, len(instruct.FAMILIES), figsize=(12, 3.2), sharey=True)
    for ax, family in zip(axes, instruct.FAMILIES):
        for x, (label, prefix) in enumerate(groups.items()):
            rows = [r["tasks"][family] for r in results["runs"] if r["run"].startswith(prefix)]
            for j, r in enumerate(rows):
                ax.errorbar(x + 0.12 * j, r["accuracy"], yerr=[[r["accuracy"] - r["low"]], [r["high"] - r["accuracy"]]],
                            fmt="o", color=f"C{x}", capsize=3)
        ax.axhline(results["baselines"][family], color="grey", ls="--", lw=1, label="baseline")
        ax.set_xticks(range(len(groups)), list(groups), rotation=30)
        ax.set_title(family)
    axes[0].set_ylabel("accuracy (95% interval)")
    axes[0].legend()
    plt.tight_layout()
    plt.show()
    print(f"{'family':<12}" + "".join(f"{k:>13}" for k in results["summary"]["source"]))
    for family, s in results["summary"].items():
        print(f"{family:<12}" + "".join(f"{v:>13.1%}" for v in s.values()))
    lora_run = next(r for r in results["runs"] if r["run"].startswith("LoRA"))
    print(f"\nLoRA trains {lora_run['trainable']:,} of {lora_run['full_trainable']:,} numbers "
          f"({lora_run['trainable'] / lora_run['full_trainable']:.1%}); its AdamW state "
          f"{lora_run['optimizer_state_bytes'] / 1e6:.2f} MB vs {lora_run['full_optimizer_state_bytes'] / 1e6:.2f} MB")

# %% [markdown]
# ## 7. Small and tuned against larger and untuned
#
# The claim this course exists to test: a small model specialised on its domain can match or beat a bigger
# general model there, at a fraction of the cost. Our pair: the **distilled student** of module 04, tuned here
# with the same recipe, against the **larger `small` model untuned** (zero-shot: its 128-character context has
# no room for few-shot examples). Side by side: parameters, forward FLOPs per token (module 03's count) and
# measured decode speed.

# %%
from slm_lab.distill import distilled_student

student_ckpt = distilled_student()
student, student_tok = chat.add_chat_tokens(copy.deepcopy(student_ckpt.model), student_ckpt.tokenizer)
t0 = time.perf_counter()
sft.finetune(student, student_tok, split.train, val, max_steps=steps, progress=False)
print(f"student tuned in {time.perf_counter() - t0:.0f} s")
student_tuned = task_eval.evaluate_tasks(student, student_tok, test, baselines)
print(task_eval.format_results(student_tuned))
rows = []
for name, m, res in (("small, untuned", untuned_model, untuned), ("student, tuned", student, student_tuned)):
    m.eval()
    rows.append((name, sum(p.numel() for p in m.parameters()), forward_flops_per_token(m.cfg, 64),
                 time_decode(m, 32, 32, repeats=pick(smoke=1, full=5)), res))
print(f"\n{'model':<16} {'parameters':>11} {'FLOPs/token':>12} {'decode tok/s':>13} " + " ".join(f"{f:>11}" for f in instruct.FAMILIES))
for name, n, flops, tps, res in rows:
    print(f"{name:<16} {n:>11,} {flops:>12,.0f} {tps:>13,.0f} " + " ".join(f"{res[f].accuracy:>11.1%}" for f in instruct.FAMILIES))

# %% [markdown]
# ## 8. Compression keeps the skill?
#
# Modules 05–08 could only report loss. Now the tuned model's task accuracy after weight-only quantization
# (module 05's `quantize_model`: int8 per output channel, int4 in groups of 32), next to its size.

# %%
compressed = {"fp32": (model, tuned)}
for bits in (8, 4):
    q = quantize_model(model, bits=bits, group_size=None if bits == 8 else 32)
    compressed[f"int{bits}"] = (q, task_eval.evaluate_tasks(q, tok, test, baselines))
fp32_bytes = model_bytes(model)
print(f"{'weights':<8} {'MB':>6} " + " ".join(f"{f:>11}" for f in instruct.FAMILIES) + "   kept (mean over families)")
for name, (m, res) in compressed.items():
    kept = sum(res[f].accuracy / tuned[f].accuracy for f in instruct.FAMILIES if tuned[f].accuracy) / len(instruct.FAMILIES)
    print(f"{name:<8} {model_bytes(m) / 1e6:>6.2f} " + " ".join(f"{res[f].accuracy:>11.1%}" for f in instruct.FAMILIES)
          + f"   {kept:.1%}")

# %% [markdown]
# ## Summary
#
# - A chat format is three special tokens, a model grown by three embedding rows (the mean of the others),
#   and a template; generation stops at the end-of-turn token.
# - Fine-tuning reused `train()` unchanged: only the loss function differs, ignoring the prompt's labels.
# - Task accuracy, with intervals and baselines, is what tells you whether a model is useful; a loss cannot.
#
# What this does not show: the tasks are narrow and built from text the model was pretrained on, so they
# measure following an instruction, not knowing anything. Module 11 lets the small model hand hard cases to a
# larger one.
