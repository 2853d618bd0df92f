"""Trace a model with ``torch.export`` and propagate channel labels through its ATen graph.

The result is a :class:`DependencyGraph`: a networkx graph of parameters and ops, plus the prunable
:class:`~prunekit.graph.groups.Group` objects derived from the labels. Nothing here knows module names or
model families: everything comes from how parameters flow through ops. Family knowledge (which groups a
model's code can actually be shrunk along, config fields) lives in the adapters.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch

from . import rules_math, rules_shape  # noqa: F401  (register the op rules)
from .labels import WILD, LabelAlgebra
from .ops import HANDLERS, OpContext, UnmappedOpError, is_labeled, is_tensor_node, op_name

IGNORED_OPS = {
    "aten._assert_tensor_metadata",
    "aten.sym_size",
    "aten._assert_async",
    "aten.sym_constrain_range",
    "aten._assert_scalar",
    "aten.sym_constrain_range_for_size",
    "aten._local_scalar_dense",
}


@dataclass
class TraceState:
    """Everything the label propagation produced, before groups are formed."""

    algebra: LabelAlgebra
    param_labels: dict[str, list]
    param_shapes: dict[str, tuple[int, ...]]
    spans: list
    graph: nx.DiGraph
    seconds: float = 0.0
    opaque: dict[str, str] = field(default_factory=dict)
    #: (param, dim) -> "out" when the op produces channels along that dim, "in" when it consumes them
    sides: dict[tuple[str, int], str] = field(default_factory=dict)


def node_module(node) -> str:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path.replace("L['self'].", "").replace("L__self__.", "")


def default_example_inputs(model) -> torch.Tensor:
    vocab = getattr(getattr(model, "config", None), "vocab_size", 32) or 32
    return (torch.arange(5) * 7 % vocab).unsqueeze(0).long()


def export_model(model, example_inputs=None):
    """``torch.export`` in non-strict mode without the KV cache (the graph is what training sees)."""
    ids = default_example_inputs(model) if example_inputs is None else example_inputs
    dev = next(model.parameters()).device
    ids = ids.to(dev)
    with torch.no_grad(), _eval_mode(model):
        return torch.export.export(model, (ids,), kwargs={"use_cache": False}, strict=False)


@contextlib.contextmanager
def _eval_mode(model):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def propagate(
    exported, opaque_modules: dict[str, Any] | None = None, aliases: dict[str, str] | None = None
) -> TraceState:
    """Walk the exported graph once, assigning channel labels to every tensor dimension.

    ``aliases`` maps tied parameter names to one canonical name, so tied weights share labels.
    """
    t0 = time.perf_counter()
    algebra = LabelAlgebra()
    sig = exported.graph_signature
    aliases = aliases or {}
    to_param = {k: aliases.get(v, v) for k, v in sig.inputs_to_parameters.items()}
    labels: dict[str, Any] = {}
    param_labels: dict[str, list] = {}
    param_shapes: dict[str, tuple[int, ...]] = {}
    spans: list = []
    sides: dict = {}
    graph = nx.DiGraph()
    opaque_modules = opaque_modules or {}

    def labels_of(x):
        if not hasattr(x, "name"):
            return None
        lab = labels.get(x.name)
        if lab is None and is_tensor_node(x):
            return [None] * x.meta["val"].dim()
        return lab

    for node in exported.graph.nodes:
        if node.op == "placeholder":
            val = node.meta.get("val")
            if node.name in to_param:
                fqn = to_param[node.name]
                if fqn in param_labels:
                    labels[node.name] = param_labels[fqn]
                    continue
                shape = tuple(int(s) for s in val.shape)
                labs = [algebra.uf.fresh(s) if s > 1 else None for s in shape]
                param_labels[fqn] = labs
                param_shapes[fqn] = shape
                labels[node.name] = labs
                graph.add_node(fqn, kind="param", shape=shape)
            elif isinstance(val, torch.Tensor):
                labels[node.name] = [None] * val.dim()
            continue
        if node.op == "output":
            outs = node.args[0]
            for out in outs if isinstance(outs, (tuple, list)) else [outs]:
                for lab in labels_of(out) or []:
                    if is_labeled(lab):
                        algebra.uf.pin(lab, "appears in the model's output")
            continue
        if node.op != "call_function":
            continue
        name = op_name(node.target)
        module = node_module(node)
        graph.add_node(node.name, kind="op", op=name, module=module)
        for inp in node.all_input_nodes:
            src = to_param.get(inp.name, inp.name)
            graph.add_edge(src, node.name)
        if name in IGNORED_OPS:
            continue
        ctx = OpContext(node=node, module=module, algebra=algebra, labels_of=labels_of, spans=spans)
        handler = HANDLERS.get(name)
        inputs_labeled = any(
            any(is_labeled(lab) for lab in (labels_of(inp) or []) if not isinstance(lab, list))
            for inp in node.all_input_nodes
            if not isinstance(labels_of(inp), tuple)
        )
        opaque = _opaque_rule(module, opaque_modules)
        if handler is None or (opaque is not None and inputs_labeled):
            if inputs_labeled and opaque is None:
                raise UnmappedOpError(
                    f"prunekit cannot map op '{node.target}' (in module '{module or '<root>'}') on a "
                    "prunable dimension; add a rule in prunekit/graph or declare the module opaque in the "
                    "model's adapter"
                )
            for inp in node.all_input_nodes:
                lab = labels_of(inp)
                for entry in lab if isinstance(lab, list) else []:
                    if is_labeled(entry):
                        algebra.uf.pin(entry, f"consumed by opaque op {node.target} in '{module}' ({opaque})")
            labels[node.name] = _unlabeled(node)
            continue
        labels[node.name] = handler(ctx)
        _note_sides(node, name, to_param, sides)
    return TraceState(
        algebra, param_labels, param_shapes, spans, graph, time.perf_counter() - t0, sides=sides
    )


_PRODUCER_DIM = {
    "aten.linear": (1, {0: "out", 1: "in"}),
    "aten.embedding": (0, {1: "out"}),
    "aten.conv1d": (1, {0: "out", 1: "in"}),
    "aten.convolution": (1, {0: "out", 1: "in"}),
    # x @ W with W stored [in, out] (transformers' Conv1D)
    "aten.addmm": (2, {0: "in", 1: "out"}),
    "aten.mm": (1, {0: "in", 1: "out"}),
    "aten.matmul": (1, {0: "in", 1: "out"}),
}


def _note_sides(node, name: str, to_param: dict, sides: dict) -> None:
    """Remember which weight dims produce and which consume channels, for readable group printing."""
    rule = _PRODUCER_DIM.get(name)
    if rule is None:
        return
    pos, dims = rule
    arg, flip = node.args[pos] if pos < len(node.args) else None, False
    if op_name(getattr(arg, "target", None)) in ("aten.t", "aten.numpy_T") and hasattr(arg.args[0], "name"):
        arg, flip = arg.args[0], True  # ``x @ W.T`` (Falcon's linear): W's dims are the other way round
    if hasattr(arg, "name") and arg.name in to_param:
        fqn = to_param[arg.name]
        for d, side in dims.items():
            sides.setdefault((fqn, 1 - d if flip else d), side)


def _opaque_rule(module: str, opaque_modules: dict[str, Any]):
    for pattern, why in opaque_modules.items():
        if module == pattern or module.endswith("." + pattern) or _matches(module, pattern):
            return why
    return None


def _matches(module: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatch(module, pattern)


def _unlabeled(node):
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return [None] * val.dim()
    if isinstance(val, (tuple, list)):
        return tuple([None] * v.dim() if isinstance(v, torch.Tensor) else None for v in val)
    return None


__all__ = ["TraceState", "propagate", "export_model", "WILD"]
