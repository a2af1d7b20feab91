"""`slm-lab`: train, generate, doctor — and the course tools (make-labs, grade, slides, export).

Every user mistake (a bad path, an unknown preset, a character outside the vocabulary) ends with
one line on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import SLMLabError


def _train(args) -> int:
    from .settings import set_threads
    from .train import get_preset, train_preset

    get_preset(args.preset)                      # fail fast on a bad name, before loading data
    set_threads(args.threads)
    overrides = {"max_steps": args.steps} if args.steps else {}
    model, tok, hist = train_preset(args.preset, out_dir=args.out, corpus=args.corpus, **overrides)
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

    ckpt = load_checkpoint(args.ckpt)
    if ckpt.tokenizer is None:
        raise SLMLabError(f"{args.ckpt} has no tokenizer.json, so a text prompt cannot be encoded; re-save it with its tokenizer.")
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
    t.add_argument("--preset", default="tiny", help="nanogpt-cpu | tiny | small (default tiny)")
    t.add_argument("--out", default=None, help="checkpoint directory to write")
    t.add_argument("--corpus", default="shakespeare", help="shakespeare | tiny_shakespeare | python_docs")
    t.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    t.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    t.set_defaults(func=_train)

    g = sub.add_parser("generate", help="continue a prompt with a trained checkpoint")
    g.add_argument("--ckpt", required=True, help="checkpoint directory")
    g.add_argument("--prompt", default="\n")
    g.add_argument("--tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=_generate)

    d = sub.add_parser("doctor", help="check this machine for the course: one line per item")
    d.set_defaults(func=_doctor)

    for name, (module, help_) in COMMANDS.items():
        if only in (None, name):                 # import a course tool only when it is the one asked for
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=help_)
    return p


# Course tools register their own subcommands: each module defines register(subparsers), adding a
# subparser with set_defaults(func=...). They import nbformat, nbclient..., so `slm-lab train` skips them.
COMMANDS = {
    "execute": ("slm_lab.course.execute", "run notebooks top to bottom with a profile and store the outputs"),
    "make-labs": ("slm_lab.course.make_labs", "write labs/ from solutions/ (--check: fail if stale)"),
    "grade": ("slm_lab.course.grade", "grade submitted labs with nbval into a gradebook CSV"),
    "slides": ("slm_lab.course.slides", "build the reveal.js slide decks"),
    "export": ("slm_lab.course.export_cmd", "export a checkpoint to ONNX (optionally int8 / int4) or the transformers format"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(only=command if command in COMMANDS else "").parse_args(argv)
    try:
        return args.func(args) or 0
    except SLMLabError as exc:
        print(f"slm-lab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slm-lab: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
