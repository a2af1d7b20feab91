"""Supervised fine-tuning (SFT) on instruction data with the course's `train()`.

`finetune` trains a chat model (`chat.add_chat_tokens`) on a stream of (prompt, answer) turns: with the
loss on the answers only (`mask=True`, `chat.masked_loss`) or on every token (`mask=False`, the plain
language-model loss, which also spends capacity on predicting the instructions). `SFT` is the recipe:
warm-up and cosine decay as in module 02, at pretraining's peak learning rate, for 1,000 steps (about 20
passes over the training turns). Chosen by measurement on module 10's tasks: 500 steps at 2e-3 left
`first_word`, the generated answer, near its trivial baseline (module 10's benchmark has both runs).
"""
from __future__ import annotations

from dataclasses import replace

from .chat import masked_loss, sft_stream
from .model import SLM
from .train import History, TrainConfig, train

SFT = TrainConfig(max_steps=1000, batch_size=32, lr=3e-3, min_lr=3e-4, warmup_steps=20, weight_decay=0.1,
                  eval_interval=100, eval_batches=4, eval_batch_size=32, seed=0, save_interval=0)


def finetune(model: SLM, tokenizer, train_examples: list, val_examples: list, cfg: TrainConfig = SFT, *,
             mask: bool = True, progress: bool = True, **overrides) -> History:
    """Train model in place on instruct.Example lists (train, validation); returns train()'s History, whose
    validation loss is over every token of the validation turns (the same measure for both masks)."""
    cfg = replace(cfg, **overrides) if overrides else cfg
    block = cfg.block_size or model.cfg.block_size
    ids, labels = sft_stream(tokenizer, [(e.prompt, e.answer) for e in train_examples], block)
    val_ids, _ = sft_stream(tokenizer, [(e.prompt, e.answer) for e in val_examples], block)
    return train(model, ids, val_ids, cfg, loss_fn=masked_loss(labels, cfg) if mask else None, progress=progress)
