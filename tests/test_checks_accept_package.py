"""Every lab check accepts the package's own implementation.

The checks' reference is the package (slm_lab.model, .tokenizer, .quantize, .kernels, ...), so a check
run on the package itself must pass: when one fails here, the check and the package disagree about the
answer — one of them is wrong. Each entry calls a check with the package function, or with a thin
adapter where the lab's signature differs from the package's. The checks are found by introspection, so
a new `check_*` without an entry here fails `test_check_accepts_the_package` until it gets one.
"""
import importlib
import inspect
import os
import pkgutil
import re
import statistics

import pytest
import torch

if not torch.cuda.is_available():
    # Before anything imports Triton (torch's dispatch machinery may): kernels defined later are interpreted.
    os.environ["TRITON_INTERPRET"] = "1"

import slm_lab.checks  # noqa: E402
from slm_lab import cascade, chat, distill, kernels, latency, lora, prune, quantize, sizing, speculative, task_eval, tokenizer  # noqa: E402,E501
from slm_lab import model as slm_model  # noqa: E402
from slm_lab import distributed, scaling, train_memory  # noqa: E402
from slm_lab.checks import m00, m01, m02, m03, m04, m05, m06, m07, m08, m09, m10, m11, m12  # noqa: E402


def lab_check_modules():
    """slm_lab.checks.m00, m01, …: every lab's check module, including ones added later."""
    names = sorted(m.name for m in pkgutil.iter_modules(slm_lab.checks.__path__) if re.fullmatch(r"m\d\d", m.name))
    return [importlib.import_module(f"slm_lab.checks.{name}") for name in names]


def public_checks() -> list[str]:
    """'m02.check_attention', …: the public check functions each lab module defines."""
    return sorted(f"{module.__name__.rsplit('.', 1)[-1]}.{name}" for module in lab_check_modules()
                  for name, fn in inspect.getmembers(module, inspect.isfunction)
                  if name.startswith("check_") and fn.__module__ == module.__name__)


# ----------------------------------------------------------------------- 00 ----
def run_m00_answers():
    # Lab 00 asks for numbers, not functions: the package's sizing module computes each of them.
    phi3, gpt3 = sizing.card("Phi-3-mini"), sizing.card("GPT-3 175B")
    answers = {"00.fp16_memory": sizing.weight_bytes(7e9, "fp16") / 1e9,
               "00.size_ratio": gpt3.params / phi3.params,
               "00.opt_hardware": 992 * sizing.hardware("A100 80 GB").price,
               "00.phone_int4": sizing.weight_bytes(phi3.params, "int4") / 1e9}
    assert set(answers) == set(m00.ANSWERS)
    for check_id, value in answers.items():
        m00.check_answer(check_id, value)


def run_m00_fits():
    m00.check_fits({name: sizing.weight_bytes(params, "fp16") <= 8e9 for name, params in m00.FIT_MODELS.items()})


# ----------------------------------------------------------------------- 01 ----
def package_bpe(merges: dict) -> tokenizer.BPETokenizer:
    """The package's BPE holding the lab's merges; the lab has no pre-tokenizer (pattern ""), so merges
    may cross words."""
    return tokenizer.BPETokenizer.from_dict({"pattern": "", "merges": [list(pair) for pair in merges]})


def run_m01_round_trip():
    m01.check_round_trip(lambda text, merges: package_bpe(merges).encode(text),
                         lambda ids, merges: package_bpe(merges).decode(ids))


# ----------------------------------------------------------------------- 02 ----
def package_rope(x, theta=10000.0):
    return slm_model.apply_rope(x, *slm_model.rope_tables(x.shape[-1], x.shape[-2], theta))


def package_train_step(model, optimizer, x, y):
    # slm_lab.train.train's loop body (it has no step function of its own): the package model's loss,
    # backward, clipping to the course's 1.0, step.
    optimizer.zero_grad(set_to_none=True)
    loss = model(x, y).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


# ----------------------------------------------------------------------- 04 ----
def package_distill_step(student, teacher, optimizer, x, y, temperature, alpha):
    # slm_lab.distill.distill's step (train.train's loop body with the distillation loss as loss_fn).
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        teacher_logits = teacher(x).logits
    loss = distill.distillation_loss(student(x).logits, teacher_logits, y, temperature, alpha)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    optimizer.step()
    return loss.item()


# ----------------------------------------------------------------------- 08 ----
def run_m08_greedy_decode():
    pytest.importorskip("onnxruntime")
    from slm_lab.onnx_runtime import OnnxLM

    m08.check_greedy_decode(lambda session, spec, prompt, n: OnnxLM(session).generate(prompt, n)[0].tolist())


def report_from_medians(measurements, baseline):
    # The package has no function from raw timings to this report (slm_lab.measure computes the same
    # medians and ratios inline in measure_in_process and format_table): the lab's solution, written out.
    rows = {name: {"size_mb": m["file_bytes"] / 1e6, "prefill_ms": statistics.median(m["prefill_seconds"]) * 1e3,
                   "tokens_per_s": m["new_tokens"] / statistics.median(m["decode_seconds"])}
            for name, m in measurements.items()}
    for name, m in measurements.items():
        rows[name]["speedup"] = rows[name]["tokens_per_s"] / rows[baseline]["tokens_per_s"]
        rows[name]["size_ratio"] = m["file_bytes"] / measurements[baseline]["file_bytes"]
    return rows


# ----------------------------------------------------------------------- 09 ----
def run_m09_triton():
    from slm_lab.kernels import triton_flash

    if not triton_flash.triton_available():
        pytest.skip("Triton is not installed")
    m09.check_triton_kernel(triton_flash.attn_fwd_kernel)


# One entry per public check: how to run it on the package.
RUNS = {
    "m00.check_answer": run_m00_answers,
    "m00.check_fits": run_m00_fits,
    "m00.check_fits_in": lambda: m00.check_fits_in(lambda models, budget_gb, bits: {
        name: sizing.weight_bytes(n, {4: "int4", 8: "int8", 16: "fp16", 32: "fp32"}[bits]) <= budget_gb * 1e9
        for name, n in models.items()}),
    "m01.check_pair_counts": lambda: m01.check_pair_counts(tokenizer.get_pair_counts),
    "m01.check_merge": lambda: m01.check_merge(tokenizer.merge),
    "m01.check_train_bpe": lambda: m01.check_train_bpe(
        lambda text, vocab_size: tokenizer.BPETokenizer(pattern="").train(text, vocab_size).merges),
    "m01.check_round_trip": run_m01_round_trip,
    "m02.check_attention": lambda: m02.check_attention(
        lambda q, k, v: kernels.naive_attention(q, k, v, causal=True)),
    "m02.check_rmsnorm": lambda: m02.check_rmsnorm(slm_model.RMSNorm),
    "m02.check_rope": lambda: m02.check_rope(package_rope),
    "m02.check_train_step": lambda: m02.check_train_step(package_train_step),
    "m02.check_top_k": lambda: m02.check_top_k(slm_model.top_k_logits),
    # The model splits, repeats and merges heads and appends to its cache inline (CausalSelfAttention.forward):
    # the same operations, as the lab's functions.
    "m02.check_heads": lambda: m02.check_heads(
        lambda x, n: x.view(*x.shape[:2], n, -1).transpose(1, 2), lambda x: x.transpose(1, 2).flatten(2),
        lambda x, n: x.repeat_interleave(n, dim=1)),
    "m02.check_append_kv": lambda: m02.check_append_kv(
        lambda cache, k, v: (k, v) if cache is None else (torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2))),
    # The model's loss is F.cross_entropy over the flattened positions (SLM.forward).
    "m02.check_cross_entropy": lambda: m02.check_cross_entropy(
        lambda logits, targets, ignore_index=-100: torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index)),
    "m03.check_param_count": lambda: m03.check_param_count(lambda config: sizing.count_parameters(config).total),
    "m03.check_kv_cache": lambda: m03.check_kv_cache(
        lambda config, context, batch, bits: sizing.kv_cache_bytes(
            config, context, batch, dtype={32: "fp32", 16: "fp16", 8: "int8", 4: "int4"}[bits])),
    "m03.check_training_flops": lambda: m03.check_training_flops(sizing.training_flops),
    "m03.check_latency": lambda: m03.check_latency(latency.time_decode),
    "m04.check_distillation_loss": lambda: m04.check_distillation_loss(distill.distillation_loss),
    "m04.check_distill_step": lambda: m04.check_distill_step(package_distill_step),
    "m05.check_absmax": lambda: m05.check_absmax(lambda w, bits=8: quantize.absmax_quantize(w, bits, dim=1),
                                                 quantize.dequantize),
    "m05.check_zeropoint": lambda: m05.check_zeropoint(
        lambda w, bits=8: quantize.zeropoint_quantize(w, bits, dim=1), quantize.dequantize),
    "m05.check_int4_groups": lambda: m05.check_int4_groups(
        lambda w, group_size=32: quantize.quantize_groups(w, bits=4, group_size=group_size)),
    "m05.check_pack": lambda: m05.check_pack(quantize.pack_int4, quantize.unpack_int4),
    # The lab's layer: int4 zero-point groups with float32 scales (the package stores float16 by default).
    "m05.check_quantized_linear": lambda: m05.check_quantized_linear(
        lambda linear, group_size=32: quantize.QuantizedLinear.from_linear(
            linear, bits=4, group_size=group_size, symmetric=False, scale_dtype=torch.float32)),
    "m06.check_magnitude_mask": lambda: m06.check_magnitude_mask(prune.magnitude_mask),
    "m06.check_remove_neurons": lambda: m06.check_remove_neurons(prune.remove_neurons),
    "m07.check_lora_linear": lambda: m07.check_lora_linear(lora.LoRALinear),
    # The lab merges one layer; the package's merge_lora merges a whole model, layer by layer, with this:
    "m07.check_merge": lambda: m07.check_merge(lambda layer: layer.merged_linear()),
    "m07.check_inject": lambda: m07.check_inject(lora.inject_lora),
    "m08.check_greedy_decode": run_m08_greedy_decode,
    "m08.check_report": lambda: m08.check_report(report_from_medians),
    "m09.check_merge": lambda: m09.check_merge(kernels.merge_softmax_stats),
    "m09.check_tiled": lambda: m09.check_tiled(kernels.tiled_attention),
    "m09.check_triton_kernel": run_m09_triton,
    "m10.check_encode_turn": lambda: m10.check_encode_turn(chat.encode_example),
    "m10.check_score_choices": lambda: m10.check_score_choices(task_eval.choice_logprobs),
    "m11.check_accept_draft": lambda: m11.check_accept_draft(speculative.accept_draft),
    "m11.check_choose_threshold": lambda: m11.check_choose_threshold(cascade.choose_threshold),
    "m12.check_optimal_size": lambda: m12.check_optimal_size(lambda n, loss: scaling.fit_valley(n, loss)[0]),
    # The lab's all-reduce takes every rank's gradients at once; the package's runs inside each rank over
    # torch.distributed, so the adapter is the collective's definition (the check's reference too).
    "m12.check_all_reduce_mean": lambda: m12.check_all_reduce_mean(
        lambda g: [{k: torch.stack([r[k] for r in g]).mean(0) for k in g[0]} for _ in g]),
    "m12.check_micro_batches": lambda: m12.check_micro_batches(
        lambda r, w, a: distributed.rank_micro_batches(r, a)),
    "m12.check_zero_bytes": lambda: m12.check_zero_bytes(train_memory.zero_bytes_per_device),
}


@pytest.mark.parametrize("name", public_checks())
def test_check_accepts_the_package(name, capsys):
    if name not in RUNS:
        pytest.fail(f"{name} has no entry in RUNS: add how to run it on the package's own implementation.")
    RUNS[name]()
    assert "passed" in capsys.readouterr().out


def test_every_entry_is_a_check():
    assert sorted(RUNS) == public_checks()


# Checks whose task the package has no implementation of to refuse (the lab's step and report functions are
# the tests' own adapters above), or whose package kernel is a Triton JIT object (not a Python function).
NOTHING_TO_REFUSE = {"m00.check_answer", "m00.check_fits", "m02.check_train_step", "m04.check_distill_step",
                     "m02.check_heads", "m02.check_append_kv", "m08.check_report", "m09.check_triton_kernel",
                     "m12.check_all_reduce_mean"}


@pytest.mark.forbidding
@pytest.mark.parametrize("name", sorted(set(public_checks()) - NOTHING_TO_REFUSE))
def test_check_refuses_the_package_as_a_student_gets_it(name):
    """As students run them, the checks switch the package's implementation off while the student's code runs —
    also when it was imported before the check ran (`from slm_lab.model import apply_rope`)."""
    with pytest.raises(slm_lab.checks.CheckFailed, match="write it yourself: this calls "):
        RUNS[name]()
