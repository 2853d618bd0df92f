"""``prunekit eval``: perplexity of a model, and the JS divergence to a second one."""

from __future__ import annotations

import argparse

from ..data import eval_windows
from ..eval import js_divergence, perplexity
from ..models import load
from .common import add_model_argument

NAME = "eval"
HELP = "perplexity of a model, and JS divergence to a compared model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument(
        "--compare", default=None, help="a second model (directory or name) to compare against"
    )
    parser.add_argument("--text", default=None)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=None)


def run(args: argparse.Namespace) -> int:

    model, tok = load(args.model)
    windows = eval_windows(tok, seq_len=args.seq_len, max_windows=args.eval_windows, source=args.text)
    print(
        f"{args.model}: perplexity {perplexity(model, windows, progress=True):.3f} "
        f"on {windows.shape[0]} windows x {windows.shape[1]} tokens"
    )
    if args.compare:
        other, _ = load(args.compare)
        print(f"{args.compare}: perplexity {perplexity(other, windows, progress=True):.3f}")
        js = js_divergence(model, other, windows, progress=True)
        print(f"Jensen-Shannon divergence (nats, natural log; mean over tokens): {js:.5f}")
    return 0
