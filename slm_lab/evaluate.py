"""How good is a language model: mean loss, perplexity and bits per character on held-out text."""
from __future__ import annotations

import math

import torch

from .data import get_batch


def fixed_batches(data: torch.Tensor, block_size: int, batch_size: int, n_batches: int,
                  seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same n_batches (x, y) pairs every time for a given seed: fair comparisons between models."""
    gen = torch.Generator().manual_seed(seed)
    return [get_batch(data, batch_size, block_size, gen) for _ in range(n_batches)]


@torch.no_grad()
def mean_loss(model, batches, device: str | torch.device | None = None) -> float:
    """Mean next-token cross-entropy (nats per token) over (x, y) batches, in eval mode."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    total = 0.0
    for x, y in batches:
        total += model(x.to(device), y.to(device)).loss.item()
    model.train(was_training)
    return total / len(batches)


def perplexity(loss: float) -> float:
    """e^loss: the effective number of equally likely choices per token."""
    return math.exp(loss)


def bits_per_char(loss: float, chars_per_token: float = 1.0) -> float:
    """Loss in bits per character: nats → bits (÷ ln 2), per token → per character (÷ chars per token)."""
    return loss / math.log(2) / chars_per_token


def evaluate(model, data: torch.Tensor, block_size: int | None = None, batch_size: int = 16,
             n_batches: int = 20, seed: int = 0, chars_per_token: float = 1.0) -> dict:
    """Loss, perplexity and bits per character on a token tensor (fixed random blocks)."""
    block_size = block_size or model.cfg.block_size
    loss = mean_loss(model, fixed_batches(data, block_size, batch_size, n_batches, seed))
    return {"loss": loss, "perplexity": perplexity(loss), "bits_per_char": bits_per_char(loss, chars_per_token)}
