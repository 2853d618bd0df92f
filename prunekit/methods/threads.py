"""Run many tiny tensor ops on one thread.

Loops of small ops (SparseGPT's column sweep) are dominated by thread start-up and spin-waiting when
torch uses several threads, by two orders of magnitude on a busy 2-core machine; one thread is faster.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
