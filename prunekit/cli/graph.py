"""``prunekit graph``: trace a model and print its prunable groups."""

from __future__ import annotations

import argparse

from ..api import trace
from ..models import load
from .common import add_model_argument

NAME = "graph"
HELP = "trace a model and print its prunable groups"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--rejected", action="store_true", help="also list groups the family cannot shrink")


def run(args: argparse.Namespace) -> int:

    model, _tok = load(args.model)
    graph = trace(model)
    print(f"{args.model}: {len(graph.groups)} prunable groups (traced in {graph.seconds:.1f} s)")
    for group in graph.groups:
        print(f"  [{group.role}] {group}")
    if args.rejected:
        print(f"{len(graph.rejected)} groups not prunable:")
        for group, why in graph.rejected:
            print(f"  {group.name or group.role}: {why}")
    return 0
