"""The least-squares refit of a shrunk consumer equals an explicit least-squares solve."""

from __future__ import annotations

import copy

import torch
from conftest import make_tiny_llama

import prunekit
from prunekit.methods.refit import refit


def test_refit_is_the_least_squares_solution_over_the_kept_inputs():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4000, 10, generator=g) @ torch.randn(10, 10, generator=g) + 0.3).double()
    w, b = torch.randn(5, 10, generator=g).double(), torch.randn(5, generator=g).double()
    removed = torch.tensor([2, 3, 8])
    new_w, new_b = refit(w, b, 2 * x.T @ x / len(x), x.mean(0), removed, damp=0.0)
    keep = [i for i in range(10) if i not in removed.tolist()]
    design = torch.cat([x[:, keep], torch.ones(len(x), 1, dtype=x.dtype)], 1)
    solution = torch.linalg.lstsq(design, x @ w.T + b).solution.T
    torch.testing.assert_close(new_w[:, keep], solution[:, :-1], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(new_b, solution[:, -1], rtol=1e-8, atol=1e-8)
    assert bool((new_w[:, removed] == 0).all())
    same_w, same_b = refit(w, b, 2 * x.T @ x / len(x), x.mean(0), torch.tensor([], dtype=torch.long), 0.0)
    torch.testing.assert_close(same_w, w)
    torch.testing.assert_close(same_b, b)


def _logit_error(pruned, dense, ids) -> float:
    with torch.no_grad():
        return float((pruned(ids).logits - dense(ids).logits).pow(2).mean())


def test_refit_reconstructs_the_calibration_outputs_better_than_the_mean_alone():
    dense = make_tiny_llama(seed=31)
    ids = torch.randint(3, 64, (8, 32), generator=torch.Generator().manual_seed(3))
    errors = {}
    for name, extra in (("mean", {"bias_compensation": True}), ("refit", {"refit": True})):
        model = copy.deepcopy(dense)
        prunekit.prune(
            model, method="wanda-sp", sparsity=0.4, structure="structured", calibration=ids,
            calibration_mode="dense", **extra,
        )  # fmt: skip
        errors[name] = _logit_error(model, dense, ids)
    assert errors["refit"] < errors["mean"]
