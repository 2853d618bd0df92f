"""prunekit: structured, semi-structured and unstructured pruning for transformers and state-space LMs.

Entry points: :func:`prune` (one call for every method; :func:`build_spec` and :func:`prune_with_spec`
split it into the validated request and its run), :func:`trace` (the dependency graph of
prunable groups), :func:`task_masks` (switchable per-task structured masks), :func:`prune_offloaded`
(models larger than memory, block by block from disk), :func:`recover` (PERP recovery after
pruning: retrain or reconstruct a few tensors, pruned zeros kept), :func:`prune_component` (one
named part of a block), :func:`sweep` and :func:`study` (methods x sparsities; per component and
family), and the modules :mod:`prunekit.models` (offline models), :mod:`prunekit.data` (calibration
and evaluation text), :mod:`prunekit.eval` (perplexity, JS divergence, zero-shot), :mod:`prunekit.io`
(saving and loading pruned models) and :mod:`prunekit.recipes` (YAML recipes).

Layout and the one dependency rule: each layer imports only the layers before it, never one after
it (``tests/test_layout.py`` checks every import, and that no module imports another's private name).

1. ``version``, ``data``    -- the package version; calibration and evaluation text as token ids
2. ``graph``               -- torch.export tracing -> label algebra -> groups; knows no family, no method
3. ``families``            -- per-family adapters: group roles, surgery hooks, per-block sizes
4. ``io``, ``models``       -- safetensors save/load of non-uniform models; the offline model zoo
5. ``methods``             -- scorers, statistics, selection, allocation, structure search
6. ``spec``                -- the typed, validated request every entry point builds
7. ``engine``              -- plan and block-wise execution: calibration, surgery, offload, distributed
8. ``eval``                -- perplexity, JS divergence, zero-shot
9. ``api``                 -- prune, trace, task_masks, prune_offloaded, recover: build a spec, run it
10. ``recipes``            -- YAML recipes -> specs
11. ``experiments``        -- sweeps and studies (they call the api)
12. ``refmodels``          -- the from-scratch reference-model trainer (not pruning; apart)
13. ``cli``                -- the ``prunekit`` command, one module per sub-command
"""

from . import data, eval, io, models
from .api import prune, prune_offloaded, prune_with_spec, recover, task_masks, trace
from .engine.recovery import RecoveryReport
from .engine.report import PruneReport
from .engine.surgery import SurgeryError, remove, soft_zero
from .experiments.study import prune_component, study
from .experiments.sweep import sweep
from .families import UnsupportedFamilyError, support
from .graph import DependencyGraph, Group, Member, UnmappedOpError
from .io import from_pretrained, save_pretrained
from .methods.scorers import SCORERS, Scorer, register_scorer
from .spec import PruneSpec, SpecError, build_spec
from .version import __version__

__all__ = [
    "SCORERS",
    "DependencyGraph",
    "Group",
    "Member",
    "PruneReport",
    "PruneSpec",
    "RecoveryReport",
    "Scorer",
    "SpecError",
    "SurgeryError",
    "UnmappedOpError",
    "UnsupportedFamilyError",
    "__version__",
    "build_spec",
    "data",
    "eval",
    "from_pretrained",
    "io",
    "models",
    "prune",
    "prune_component",
    "prune_offloaded",
    "prune_with_spec",
    "recover",
    "register_scorer",
    "remove",
    "save_pretrained",
    "soft_zero",
    "study",
    "support",
    "sweep",
    "task_masks",
    "trace",
]
