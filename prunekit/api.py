"""The public calls: :func:`prune`, :func:`task_masks`, :func:`prune_offloaded`, :func:`trace` and
:func:`recover`.

Each builds a :class:`~prunekit.spec.PruneSpec` from its arguments (:func:`prunekit.spec.build_spec`
validates everything a request can get wrong), checks the calibration data against the model, then
hands both to the engine: :func:`prunekit.engine.pipeline.plan` resolves the request on the model
without writing anything, :func:`~prunekit.engine.pipeline.execute` prunes and reports. No bad input
can therefore leave a half-pruned model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .engine import pipeline
from .engine.offload import OffloadResult, offload_prune
from .engine.recovery import CheckpointDense, DenseBlocks, ModelDense, RecoveryReport, run_recovery
from .engine.report import PruneReport
from .engine.task_masks import TaskMasks
from .eval.perplexity import perplexity
from .families import get_adapter
from .graph import DependencyGraph
from .graph import trace as trace_graph
from .spec import TEXT_OPTIONS, PruneSpec, SpecError, SpecTypeError, build_spec, prepare_calibration
from .spec.recovery import build_recovery_spec
from .spec.recovery_data import recovery_windows


def prune(
    model: torch.nn.Module,
    method: str = "magnitude",
    sparsity: float | None = None,
    structure: str | None = None,
    calibration: Any = None,
    targets: str | Sequence[str] | None = None,
    ignore: str | Sequence[str] | None = None,
    **options: Any,
) -> PruneReport:
    """Prune ``model`` in place and return a per-layer :class:`PruneReport`.

    ``structure`` (default: ``"unstructured"``, or ``"structured"`` for structured-only methods such
    as FLAP and SEAP) is ``"unstructured"``, an N:M pattern such as ``"2:4"`` (N of every M consecutive
    input weights of a row are zeroed), or ``"structured"`` (whole channels and heads are removed, so
    the model shrinks). ``sparsity`` (default 0.5; N:M fixes it at N/M) is the fraction removed: of each
    targeted matrix (or row, with ``granularity="row"``), or of each targeted group's units for
    structured pruning. ``targets``/``ignore`` take module names (unstructured) or group roles/names
    (structured), as names, dotted suffixes or ``"re:"`` regular expressions.

    Pruner options (:data:`prunekit.spec.OPTIONS` lists each with its help and the structures it
    applies to): ``granularity`` ("matrix" | "row"), ``gqa`` ("heads": the same number of query heads
    from every KV group, "groups": whole KV groups), ``mode`` ("hard" removes, "soft" zeroes),
    ``progress`` (bool), ``allocation`` ("uniform" | "owl", with ``owl_lambda``, ``owl_m``),
    ``calibration_mode`` ("sequential" | "dense"), ``batch_size``, ``structure_search`` ("uniform" |
    "global" | "logistic", with ``logistic={"first", "last", "k", "x0"}`` | "per-layer", with
    ``layer_sparsity``: one ratio per block, or ``{block: ratio}`` with ``sparsity`` for the rest),
    ``bias_compensation`` (bool), ``refit`` (least-squares refit of each shrunk consumer's kept columns and
    bias over the calibration inputs instead of the mean alone), ``task`` and ``task_weights`` (with
    calibration ``{task: data}``), ``round_to`` (keep a multiple of this many channels), ``dense_blocks``
    (``k`` or ``(first, last)``: those blocks stay dense and the requested share of the targeted weights
    comes from the others); for text calibration ``tokenizer``, ``n_samples``, ``seq_len``, ``seed``,
    ``text_column``. Any other keyword goes to the method's scorer, which refuses unknown ones. An
    option the call would not use is an error naming it. Every argument is checked before the model is
    touched: on error the model is unchanged.
    """
    _check_model(model)
    spec = build_spec(method, sparsity, structure, targets, ignore, **options)
    _refuse_text_options(options, calibration)
    return prune_with_spec(model, spec, calibration)


def prune_with_spec(model: torch.nn.Module, spec: PruneSpec, calibration: Any = None) -> PruneReport:
    """Prune ``model`` as ``spec`` asks (recipes and the command line build the spec themselves)."""
    _check_model(model)
    data = prepare_calibration(calibration, model, spec)
    return pipeline.execute(pipeline.plan(model, spec, data))


def task_masks(
    model: torch.nn.Module,
    calibration: dict,
    method: str = "seap",
    sparsity: float = 0.2,
    targets: str | Sequence[str] | None = None,
    ignore: str | Sequence[str] | None = None,
    **options: Any,
) -> TaskMasks:
    """Compute one structured soft mask per task (and a generic one) and return a switchable
    :class:`~prunekit.engine.task_masks.TaskMasks`; the model stays dense until ``.apply(task)``.

    ``calibration`` is ``{task: token ids | texts | Dataset}``; other arguments as for :func:`prune`.
    """
    _check_model(model)
    if not isinstance(calibration, dict) or not calibration:
        raise SpecError("task_masks needs calibration as a non-empty {task: data} dict", "calibration")
    if "task" in options or options.get("mode", "soft") != "soft":
        raise SpecError("task_masks builds soft masks for every task: do not pass task= or mode=", "mode")
    spec = build_spec(method, sparsity, "structured", targets, ignore, **{**options, "mode": "soft"})
    data = prepare_calibration(calibration, model, spec)
    return pipeline.task_masks(pipeline.plan(model, spec, data))


def prune_offloaded(
    model_dir: str | Path,
    out_dir: str | Path,
    method: str = "wanda",
    sparsity: float | None = None,
    structure: str | None = None,
    calibration: torch.Tensor | None = None,
    *,
    targets: Any = None,
    ignore: Any = None,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    **options: Any,
) -> OffloadResult:
    """Prune the checkpoint in ``model_dir`` block by block from disk and write it to ``out_dir``.

    Gives the same masks and weights as :func:`prune` on the model loaded in memory (same method,
    sparsity, calibration and engine), with peak memory of about one block. ``device`` is where each
    block is computed ("cpu", "cuda", or None for CUDA when available); statistics are fp32 and weights
    keep the checkpoint's dtype. Under ``torchrun`` calibration is data-parallel and rank 0 writes.
    Masks are saved per block (``prunekit_masks-*.safetensors``; :func:`prunekit.io.load_masks`).
    ``options`` as for :func:`prune` (``calibration_mode``, ``batch_size``, ``progress``, the method's).

    Raises:
        ValueError: a structured or gradient method, OWL allocation, bad sparsity or calibration, targets
            outside the blocks, or an ``out_dir`` that is not empty (without ``overwrite``) -- before
            anything is read.
        CheckpointError: the checkpoint lacks a tensor the config describes, or has an unexpected one.
    """
    spec = build_spec(method, sparsity, structure, targets, ignore, **options)
    _refuse_text_options(options, calibration)
    return offload_prune(model_dir, out_dir, spec, calibration, device=device, overwrite=overwrite)


def trace(
    model: torch.nn.Module, example_inputs: torch.Tensor | None = None, adapter=None
) -> DependencyGraph:
    """The model's prunable groups: :func:`prunekit.graph.trace` with the family adapter looked up from
    the model's config when ``adapter`` is not given (the adapter names roles and rejects what the
    family's code cannot shrink)."""
    return trace_graph(model, example_inputs, adapter or get_adapter(model))


def _check_model(model: Any) -> None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _refuse_text_options(options: dict[str, Any], calibration: Any) -> None:
    """Text-sampling options do nothing when the calibration is already token ids."""
    given = [k for k in TEXT_OPTIONS if options.get(k) is not None]
    if given and isinstance(calibration, torch.Tensor):
        raise SpecError(
            f"option {given[0]} shapes how text calibration is tokenized, but calibration is already "
            "token ids",
            given[0],
        )


__all__ = ["OffloadResult", "prune", "prune_offloaded", "prune_with_spec", "task_masks", "trace"]


def recover(
    model: torch.nn.Module,
    dense: torch.nn.Module | str | Path | None = None,
    method: str = "perp",
    data: Any = None,
    *,
    mode: str = "retrain",
    eval_data: Any = None,
    save_adapters: str | Path | None = None,
    **options: Any,
) -> RecoveryReport:
    """Recover a pruned ``model`` in place (PERP) and return a :class:`RecoveryReport`.

    Trains a small set of tensors while every pruned weight stays exactly zero: ``train`` picks any of
    ``"biases"``, ``"norms"`` (every normalisation layer, found by behaviour), ``"lm_head"`` and ``"lora"``
    (adapters on the Linears inside the blocks, or ``lora_targets``) with ``lora="mask"`` (MaskLoRA, the
    default), ``"scale"`` (ScaleLoRA) or ``"plain"`` (masked when merged), ``rank`` and ``alpha``. The
    updates are merged into the model's weights at the end; on any error or interrupt they are dropped
    and the model is unchanged.

    ``mode="retrain"`` minimises the causal-LM loss on ``data`` (AdamW, ``lr`` 5e-4, linear schedule with
    ``warmup`` 10 %, ``steps`` or a ``tokens`` budget, ``gradient_checkpointing``). ``mode="reconstruct"``
    fits each block, in order, to the dense block's outputs on the calibration inputs; ``dense`` is the
    model before pruning or its checkpoint directory (read one block at a time).

    ``data``: token ids ``[N, L]``, texts, a ``datasets.Dataset``, or a text source (None / "default":
    the embedded stdlib docs, or a file path) whose held-out split then measures perplexity before and
    after (``eval_windows``; ``eval_data`` overrides). Text needs ``tokenizer=``. ``save_adapters`` (a
    new directory) also writes a retrained plain LoRA (``lora="plain"``, ``train=["lora"]``) in PEFT's
    format, loadable with ``peft.PeftModel.from_pretrained`` on the pruned model.
    :data:`prunekit.spec.recovery.RECOVERY_OPTIONS` lists every option with its default.
    """
    _check_model(model)
    spec = build_recovery_spec(method, mode, **options)
    train, held_out = recovery_windows(data, model, spec, eval_data)
    reference = _dense_reference(dense, model, spec)
    before = perplexity(model, held_out, batch_size=spec.batch_size) if held_out is not None else None
    report = run_recovery(model, spec, train, reference, save_adapters)
    if held_out is not None:
        report.perplexity_before = before
        report.perplexity_after = perplexity(model, held_out, batch_size=spec.batch_size)
    return report


def _dense_reference(dense: Any, model: torch.nn.Module, spec) -> DenseBlocks | None:
    if dense is None:
        return None
    if spec.mode != "reconstruct":
        raise SpecError("dense= is the reference of mode='reconstruct'; retraining does not use it", "dense")
    if isinstance(dense, torch.nn.Module):
        if dense is model:
            raise SpecError("dense= is the pruned model itself; pass the model before pruning", "dense")
        return ModelDense(dense)
    if isinstance(dense, (str, Path)):
        param = next(model.parameters())
        try:
            return CheckpointDense(dense, param.device, param.dtype)
        except (ValueError, OSError) as err:
            raise SpecError(f"dense checkpoint {str(dense)!r}: {err}", "dense") from None
    raise SpecTypeError(
        f"dense must be a model or a checkpoint directory, got {type(dense).__name__}", "dense"
    )
