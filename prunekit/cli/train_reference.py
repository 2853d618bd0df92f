"""``prunekit train-reference``: train one small reference model (Llama, Mamba or Mamba-2) from scratch.

Matched runs share one tokenizer.  By default it lives next to the outputs: ``--out refs/llama`` uses
(and on the first run creates) ``refs/tokenizer``, so training the three architectures into siblings of
one folder gives them exactly the same tokenizer with no extra flag.  ``--tokenizer DIR`` puts it
elsewhere; a directory trained on a different corpus or vocabulary size is refused, never reused.
"""

from __future__ import annotations

import argparse

from ..refmodels.configs import ARCHS, SIZES
from ..refmodels.train import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LR,
    DEFAULT_SEQ_LEN,
    DEFAULT_TOKENS,
    DEFAULT_VOCAB,
    train_reference,
)

NAME = "train-reference"
HELP = "train a small matched reference model (llama | mamba | mamba2) from scratch on offline text"


def add_arguments(parser: argparse.ArgumentParser) -> None:

    parser.add_argument("--arch", required=True, choices=ARCHS)
    parser.add_argument("--out", required=True, help="directory for the model, tokenizer and training.json")
    parser.add_argument("--corpus", default=None, help="UTF-8 text file (default: the stdlib Python docs)")
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="shared tokenizer directory, loaded or created (default: OUT/../tokenizer)",
    )
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB, help="when a tokenizer is trained")
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="token budget (window positions)")
    parser.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--lr", type=float, default=DEFAULT_LR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop early after this long")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: these small models gain little from a second thread, and lose "
        "up to 10x when the cores are shared; run the three architectures side by side instead)",
    )
    parser.add_argument("--overwrite", action="store_true", help="allow a non-empty --out directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:

    same = ("corpus", "tokenizer", "vocab_size", "size", "seq_len", "batch_size", "lr", "seed", "max_minutes")
    summary = train_reference(
        args.arch, args.out, token_budget=args.tokens, threads=args.threads, overwrite=args.overwrite,
        progress=not args.quiet, **{name: getattr(args, name) for name in same},
    )  # fmt: skip
    params = summary["parameters"]
    rate = f"{summary['tokens_per_second']:.0f} tokens/s"
    print(
        f"{summary['arch']}: {params['total']:,} parameters ({params['non_embedding']:,} non-embedding), "
        f"{summary['tokens']:,} tokens in {summary['seconds']:.0f} s ({rate})"
        + (" [stopped early]" if summary["stopped_early"] else "")
    )
    print(f"perplexity: train {summary['train_ppl']:.2f}, held-out {summary['heldout_ppl']:.2f}")
    print(f"saved to {args.out} (tokenizer: {summary['tokenizer']['path']})")
    return 0
