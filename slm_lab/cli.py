"""`slm-lab`: train, generate, doctor — and the course tools (make-labs, grade, slides, export).

Every user mistake (a bad path, an unknown preset, a character outside the vocabulary) ends with
one line on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import SLMLabError


def _positive(value, flag: str) -> None:
    if value is not None and value < 1:
        raise SLMLabError(f"{flag} {value} must be a positive whole number.")


def _train(args) -> int:
    from . import distributed
    from .checkpoint import check_out_dir

    _positive(args.steps, "--steps")
    _positive(args.threads, "--threads")
    if args.resume and not args.out:
        raise SLMLabError("--resume needs --out, the directory of the run to continue.")
    if args.nproc is not None and not distributed.launched_by_torchrun():
        distributed.check_nproc(args.nproc, args.device)
        if args.nproc > 1:                         # start the ranks; each runs this command without --nproc
            if args.out:
                check_out_dir(args.out, resume=args.resume, overwrite=args.overwrite)
            return distributed.launch(args.nproc, _train_argv(args))
    dist_device = distributed.init(args.device) if distributed.launched_by_torchrun() else None
    try:
        if not distributed.is_main():              # only rank 0 talks; the others train quietly
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):
                return _train_run(args, dist_device)
        return _train_run(args, dist_device)
    finally:
        distributed.shutdown()


def _train_argv(args) -> list[str]:
    """The `slm-lab train` flags of args, for the ranks torchrun starts (no --nproc)."""
    argv = []
    for flag in ("preset", "out", "corpus", "steps", "threads", "device"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag}", str(getattr(args, flag))]
    return argv + [f"--{flag}" for flag in ("resume", "overwrite") if getattr(args, flag)]


def _train_run(args, dist_device) -> int:
    import json
    from pathlib import Path

    from .checkpoint import check_out_dir
    from .settings import is_smoke, resolve_device, set_threads
    from .train import get_preset, preset_train_config, train_preset

    preset, corpus, meta = args.preset, args.corpus, {}
    if args.out:                                   # before any training: a run that cannot be saved is refused
        check_out_dir(args.out, resume=args.resume, overwrite=args.overwrite)
    if args.resume:                                # the run remembers what it was
        meta = json.loads((Path(args.out) / "config.json").read_text()).get("meta", {})
        for flag, given, saved in (("--preset", preset, meta.get("preset")), ("--corpus", corpus, meta.get("corpus"))):
            if given is not None and saved is not None and given != saved:
                raise SLMLabError(f"{args.out} is a run of {flag} {saved}, not {given}; drop {flag} to resume it.")
        preset, corpus = preset or meta.get("preset"), corpus or meta.get("corpus")
    preset, corpus = preset or "tiny", corpus or "shakespeare"
    get_preset(preset)                             # fail fast on a bad name, before loading data
    dev = dist_device or resolve_device(args.device)
    if dist_device is None or args.threads:        # a rank already has its share of the cores
        set_threads(args.threads)
    overrides = {"max_steps": args.steps} if args.steps else {}
    if args.resume and not args.steps and meta.get("train_config", {}).get("max_steps"):
        overrides["max_steps"] = meta["train_config"]["max_steps"]
    steps = preset_train_config(preset, **overrides).max_steps
    if is_smoke():
        cut = preset_train_config(preset).max_steps
        how = f"as asked (the smoke profile alone trains {cut})" if "max_steps" in overrides else \
            "cut short for tests (unset SLM_LAB_PROFILE or set it to full for the real run)"
        print(f"profile smoke: {preset} trains {steps} steps, {how}.")
    from .distributed import rank, world_size

    ranks = f" × {world_size()} processes" if world_size() > 1 else ""
    print(f"training {preset} on {corpus} for {steps} steps on {dev}{ranks}"
          + (f", resuming {args.out}" if args.resume else ""))
    try:
        model, tok, hist = train_preset(preset, out_dir=args.out, corpus=corpus, device=dev,
                                        resume=args.resume, **overrides)
    except KeyboardInterrupt:                      # train() has said what was saved and how to resume
        return 130
    if world_size() > 1 and rank() != 0:
        return 0                                   # rank 0 reports and samples
    if hist.val_loss:
        print(f"val loss {hist.val_loss[-1]:.4f} after {hist.steps[-1] + 1} steps "
              f"({hist.train_time[-1]:.0f} s, {hist.tokens_per_second:,.0f} tokens/s)")
    prompt = tok.encode("\n")
    import torch

    sample = model.generate(torch.tensor([prompt]), 300, temperature=0.8, top_k=50, seed=0)
    print("--- sample ---\n" + tok.decode(sample[0].tolist()).strip())
    if args.out:
        print(f"--- saved checkpoint to {args.out}")
    return 0


def _generate(args) -> int:
    import torch

    from .checkpoint import load_checkpoint
    from .settings import resolve_device

    _positive(args.tokens, "--tokens")
    _positive(args.top_k, "--top-k")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise SLMLabError(f"--top-p {args.top_p} must be in (0, 1]; e.g. 0.9 keeps the most likely 90% of probability.")
    if args.temperature < 0:
        raise SLMLabError(f"--temperature {args.temperature} must be ≥ 0 (0 means greedy).")
    ckpt = load_checkpoint(args.ckpt, device=resolve_device(args.device))
    if ckpt.tokenizer is None:
        raise SLMLabError(f"{args.ckpt} has no tokenizer.json, so a text prompt cannot be encoded; "
                          "re-save it with its tokenizer.")
    ids = torch.tensor([ckpt.tokenizer.encode(args.prompt)])
    if ids.shape[1] == 0:
        raise SLMLabError("the prompt is empty; give at least one character with --prompt.")
    out = ckpt.model.generate(ids, args.tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, seed=args.seed)
    print(ckpt.tokenizer.decode(out[0].tolist()))
    return 0


def _doctor(args) -> int:
    from .course.doctor import run

    return run()


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slm-lab", description="SLM Lab: build, train and study small language models.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a preset on the offline corpus, print val loss and a sample, save it")
    t.add_argument("--preset", default=None, help="nanogpt-cpu | tiny | small (default tiny)")
    t.add_argument("--out", default=None, help="checkpoint directory to write (checkpointed during training)")
    t.add_argument("--corpus", default=None, help="shakespeare | tiny_shakespeare | python_docs (default shakespeare)")
    t.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    t.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    t.add_argument("--device", default=None, help="cpu | cuda | mps (default: SLM_LAB_DEVICE, else the best there is)")
    t.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    t.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    t.add_argument("--nproc", type=int, default=None,
                   help="data-parallel processes on this machine (torchrun; one per GPU, else per CPU core)")
    t.set_defaults(func=_train)

    g = sub.add_parser("generate", help="continue a prompt with a trained checkpoint")
    g.add_argument("--ckpt", required=True, help="checkpoint directory")
    g.add_argument("--prompt", default="\n")
    g.add_argument("--tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default=None, help="cpu | cuda | mps (default: SLM_LAB_DEVICE, else the best there is)")
    g.set_defaults(func=_generate)

    d = sub.add_parser("doctor", help="check this machine for the course: one line per item")
    d.set_defaults(func=_doctor)

    for name, (module, help_) in COMMANDS.items():
        if only in (None, name):                 # import a course tool only when it is the one asked for
            _course_tool(module, name).register(sub)
        else:
            sub.add_parser(name, help=help_)
    return p


def _course_tool(module: str, name: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:                   # nbformat, nbval... come with the `course` extra
        raise SLMLabError(f"`slm-lab {name}` needs the course tools ({exc.name or exc} is missing); "
                          "install them with `pip install \"slm_lab[course]\"`.") from None


# Course tools register their own subcommands: each module defines register(subparsers), adding a
# subparser with set_defaults(func=...). They import nbformat, nbclient..., so `slm-lab train` skips them.
COMMANDS = {
    "execute": ("slm_lab.course.execute", "run notebooks top to bottom with a profile and store the outputs"),
    "make-labs": ("slm_lab.course.make_labs", "write labs/ from solutions/ (--check: fail if stale)"),
    "grade": ("slm_lab.course.grade", "grade submitted labs (sandboxed) into a gradebook CSV"),
    "slides": ("slm_lab.course.slides", "build the reveal.js slide decks"),
    "export": ("slm_lab.course.export_cmd",
               "export a checkpoint to ONNX (optionally int8 / int4) or the transformers format"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = build_parser(only=command if command in COMMANDS else "").parse_args(argv)
        return args.func(args) or 0
    except SLMLabError as exc:
        print(f"slm-lab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slm-lab: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
