"""Pruning: exact magnitude masks (ties included), masks that survive training, structured removal that
equals zeroing the same units, smaller checkpoints that reload exactly, and bad input."""
import copy

import pytest
import torch

from slm_lab import prune as P
from slm_lab.checkpoint import load_checkpoint, save_checkpoint
from slm_lab.errors import SLMLabError
from slm_lab.model import SLM, SLMConfig
from slm_lab.train import TrainConfig, make_optimizer, train

V = 20


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return SLM(SLMConfig(**{**dict(vocab_size=V, block_size=16, n_layer=2, n_head=4, d_model=32), **kw}))


def ids(seed=0, B=3, T=16):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ magnitude masks ----
def test_mask_prunes_exactly_the_smallest_magnitudes_even_with_ties():
    w = torch.tensor([[0.5, -2.0, 1.0, -1.0], [1.0, 0.1, -3.0, 1.0]])      # four weights tie at |w| = 1
    mask = P.magnitude_mask(w, 0.5)                                           # prune 4 of 8
    assert mask.dtype == torch.bool and mask.shape == w.shape and int((~mask).sum()) == 4
    # 0.1 and 0.5 go, then the two *earliest* of the tied 1.0s; -2 and -3 (large negatives) stay
    assert mask.tolist() == [[False, True, False, False], [True, False, True, True]]
    for s in (0.0, 0.29, 0.3, 0.77, 1.0):                                     # round(s·n), never a floor
        m = P.magnitude_mask(torch.randn(10, 10), s)
        assert int((~m).sum()) == round(s * 100)


def test_global_masks_use_one_threshold_and_layer_masks_one_per_matrix():
    model = tiny()
    with torch.no_grad():
        model.blocks[1].mlp.down.weight.mul_(0.01)                           # one matrix of tiny weights
    weights = P.prunable_weights(model)
    assert set(weights) == {f"blocks.{i}.{n}.weight" for i in range(2) for n in
                            ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate", "mlp.up", "mlp.down")}
    total = sum(w.numel() for w in weights.values())
    g = P.magnitude_masks(model, 0.4, "global")
    assert sum(int((~m).sum()) for m in g.values()) == round(0.4 * total)
    kept = torch.cat([w.detach().abs()[g[n]] for n, w in weights.items()])
    pruned = torch.cat([w.detach().abs()[~g[n]] for n, w in weights.items()])
    assert pruned.max() <= kept.min()
    assert bool((~g["blocks.1.mlp.down.weight"]).all())                       # the tiny matrix goes entirely
    per_layer = P.magnitude_masks(model, 0.4, "layer")
    for name, m in per_layer.items():
        assert int((~m).sum()) == round(0.4 * m.numel()), name
    P.apply_masks(model, per_layer)
    assert P.sparsity(model) == pytest.approx(sum(round(0.4 * m.numel()) for m in per_layer.values()) / total)
    assert model.tok_emb.weight.ne(0).all()                                   # embeddings and the head untouched


def test_bad_sparsity_scope_or_mask_is_one_sentence():
    with pytest.raises(SLMLabError, match="between 0"):
        P.magnitude_mask(torch.randn(4), 1.2)
    with pytest.raises(SLMLabError, match="scope"):
        P.magnitude_masks(tiny(), 0.5, "row")
    with pytest.raises(SLMLabError, match="does not fit"):
        P.apply_masks(tiny(), P.magnitude_masks(tiny(d_model=16, n_head=2), 0.5))


# ------------------------------------------------------------ masks through training ----
def _adamw_with_history(model, steps=3):
    """An AdamW (weight decay 0.1) that has already taken steps: its running averages are non-zero."""
    opt = make_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.1))
    for s in range(steps):
        model(ids(s), ids(s + 10)).loss.backward()
        opt.step()
        opt.zero_grad()
    return opt


def test_an_adamw_step_with_weight_decay_does_not_revive_pruned_weights():
    model = tiny()
    opt = _adamw_with_history(model)
    masks = P.magnitude_masks(model, 0.5)
    keeper = P.keep_masks(model, masks, opt)
    for s in range(3):
        model(ids(s), ids(s + 10)).loss.backward()
        opt.step()
        opt.zero_grad()
    params = dict(model.named_parameters())
    for name, m in masks.items():
        assert bool((params[name][~m] == 0).all()), name
    assert P.sparsity(model) == pytest.approx(0.5, abs=1e-3)
    keeper.remove()


def test_without_the_step_hook_adams_old_momentum_revives_them():
    """Why keep_masks needs the optimizer: zero gradients alone do not stop AdamW's stale running averages."""
    model = tiny()
    opt = _adamw_with_history(model)
    masks = P.magnitude_masks(model, 0.5)
    P.keep_masks(model, masks)                                                 # gradient hooks only
    model(ids(5), ids(15)).loss.backward()
    opt.step()
    assert P.sparsity(model) < 0.05


def test_masks_survive_slm_lab_train_and_the_rest_keeps_learning():
    model = tiny()
    masks = P.magnitude_masks(model, 0.7, "layer")
    P.keep_masks(model, masks)
    before = {n: p.detach().clone() for n, p in P.prunable_weights(model).items()}
    seq = torch.arange(3000) % V
    train(model, seq, seq, TrainConfig(max_steps=15, batch_size=4, lr=1e-2, weight_decay=0.1, warmup_steps=2,
                                       eval_interval=15, eval_batches=1), progress=False)
    for name, p in P.prunable_weights(model).items():
        assert bool((p[~masks[name]] == 0).all()), name
        assert not torch.equal(p[masks[name]], before[name][masks[name]]), name


# ------------------------------------------------------------------ structured ----
def zeroed_reference(model, head_keep, neuron_keep):
    """The same model with removed heads' o_proj columns and removed neurons' down/proj columns zeroed."""
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        for i, block in enumerate(ref.blocks):
            attn = block.attn
            r, hd = attn.n_head // attn.n_kv_head, attn.head_dim
            for g in range(attn.n_kv_head):
                if g not in head_keep[i]:
                    attn.o_proj.weight[:, g * r * hd:(g + 1) * r * hd] = 0
            down = block.mlp.down if hasattr(block.mlp, "down") else block.mlp.proj
            drop = [j for j in range(down.in_features) if j not in neuron_keep[i]]
            down.weight[:, drop] = 0
    return ref


@pytest.mark.parametrize("kw", [dict(family="llama"), dict(family="llama", n_kv_head=2),
                                dict(family="gpt2")], ids=["llama", "gqa", "gpt2"])
def test_removing_heads_and_neurons_equals_zeroing_them(kw):
    model = tiny(**kw).eval()
    K, F = model.cfg.n_kv_head, model.cfg.d_ff
    head_keep, neuron_keep = [[0, K - 1], [1]], [list(range(0, F, 3)), list(range(F // 2))]
    ref = zeroed_reference(model, head_keep, neuron_keep)
    pruned = tiny(**kw).eval()
    pruned.load_state_dict(model.state_dict())
    for i, block in enumerate(pruned.blocks):
        P.remove_heads(block.attn, torch.tensor(head_keep[i]))
        P.remove_neurons(block.mlp, torch.tensor(neuron_keep[i]))
    x = ids()
    torch.testing.assert_close(pruned(x).logits, ref(x).logits, atol=1e-5, rtol=1e-5)
    assert pruned.num_parameters() < model.num_parameters()


def test_prune_structured_keeps_the_units_that_matter_and_says_so_in_its_config():
    model = tiny(family="llama", n_kv_head=2).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.o_proj.weight[:, :16] *= 1e-3                          # kv group 0 (heads 0-1) barely counts
            block.mlp.down.weight[:, :10] = 0                                  # neurons 0-9 add nothing
    batches = [(ids(s), None) for s in range(2)]
    heads, neurons = P.unit_importance(model, batches)
    assert heads.shape == (2, 2) and neurons.shape == (2, model.cfg.d_ff)
    assert (heads[:, 0] < heads[:, 1]).all() and (neurons[:, :10] == 0).all()
    pruned = P.prune_structured(model, batches, n_kv_head=1, d_ff=model.cfg.d_ff - 10)
    cfg = pruned.cfg
    assert (cfg.n_head, cfg.n_kv_head, cfg.d_ff, cfg.head_dim, cfg.d_model) == (2, 1, model.cfg.d_ff - 10, 8, 32)
    D, H, K, hd, F, L = 32, 2, 1, 8, cfg.d_ff, 2
    expected = V * D + L * (2 * D + D * H * hd + 2 * D * K * hd + H * hd * D + 3 * D * F) + D
    assert pruned.num_parameters() == expected
    ref = zeroed_reference(model, [[1], [1]], [list(range(10, model.cfg.d_ff))] * 2)
    torch.testing.assert_close(pruned(ids(7)).logits, ref(ids(7)).logits, atol=1e-5, rtol=1e-5)
    assert model.cfg.n_head == 4 and model.blocks[0].attn.q_proj.out_features == 32    # the original is untouched


def test_a_pruned_model_saves_and_reloads_exactly(tmp_path):
    model = tiny(family="llama", n_kv_head=2)
    batches = [(ids(), None)]
    for name, kw in (("heads", dict(n_kv_head=1, d_ff=40)), ("neurons", dict(d_ff=40))):
        pruned = P.prune_structured(model, batches, **kw)
        save_checkpoint(tmp_path / name, pruned, meta={"pruned": kw})
        ck = load_checkpoint(tmp_path / name)
        assert torch.equal(ck.model(ids(3)).logits, pruned.eval()(ids(3)).logits)
        assert ck.model.num_parameters() == pruned.num_parameters() and ck.meta["pruned"] == kw
        assert torch.equal(ck.model.generate(ids(3)[:, :4], 6, seed=0), pruned.generate(ids(3)[:, :4], 6, seed=0))
    assert load_checkpoint(tmp_path / "neurons").model.cfg.d_ff == 40
    # with removed heads, n_head · head_dim < d_model: the config records head_dim
    heads = load_checkpoint(tmp_path / "heads").model.cfg
    assert heads.n_head * heads.head_dim < heads.d_model and heads.head_dim == model.cfg.head_dim
    torch.save({}, tmp_path / "heads" / "model.safetensors")
    with pytest.raises(SLMLabError, match="corrupt"):
        load_checkpoint(tmp_path / "heads")


def test_structured_pruning_can_only_remove_units():
    with pytest.raises(SLMLabError, match="can only remove"):
        P.prune_structured(tiny(), [(ids(), None)], n_kv_head=5)
