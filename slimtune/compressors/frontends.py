"""Graph frontends: capture a model's forward as a graph that channel propagation can follow.

Two frontends produce one kind of graph, a ``torch.fx.Graph`` in which every layer that has a
handler (:mod:`slimtune.compressors.handlers`) is a single ``call_module`` node:

- ``fx``: ``torch.fx`` symbolic tracing, with handled layers (and activation, pooling, dropout
  modules) as leaves, so a ``Conv2d`` subclass that computes its own padding is still one conv.
  Fast, and it keeps the forward's Python-level detail (which sizes are literals); it fails on
  control flow that depends on shapes or values, on iterating tensors, on ``int()`` of sizes.
- ``export``: ``torch.export.export(strict=False)``, which runs the real Python code and records
  ATen ops; it captures Hugging Face ``transformers`` models and most code fx refuses. Parameter
  inputs become ``get_attr`` nodes named after the parameter, and the ops of each handled layer
  call (found through ``nn_module_stack``) are collapsed into one ``call_module`` node named after
  the call's output node.

:func:`capture` tries ``fx`` first and falls back to ``export``; a :class:`~slimtune.errors.TraceError`
names the module and the op (with its source line) where both failed.

Example:
    >>> import torch
    >>> from slimtune.compressors.frontends import capture
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    >>> capture(net, (torch.randn(1, 3, 8, 8),)).frontend
    'fx'
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

from slimtune.compressors.handlers import handler_for
from slimtune.errors import ModelFailsError, TraceError

FRONTENDS = ("auto", "fx", "export")
"""Values of ``trace(..., frontend=...)``."""


@dataclass
class Capture:
    """A captured forward pass.

    Attributes:
        frontend: ``fx`` or ``export``.
        graph: The graph propagation walks (handled layers as ``call_module`` nodes).
        model: The captured model.
        gm: A runnable ``GraphModule`` whose node names are the graph's (for recording activations).
        names: ``id(module)`` → canonical qualified name (the first of a module reached by several).
        note: What the frontend had to do (e.g. why fx was not used).
    """

    frontend: str
    graph: fx.Graph
    model: nn.Module
    gm: fx.GraphModule
    names: dict[int, str] = field(default_factory=dict)
    note: str = ""

    def canonical(self, path: str) -> str:
        """The canonical name of the module at ``path`` (shared modules have one name)."""
        try:
            return self.names.get(id(self.model.get_submodule(path)), path)
        except AttributeError:
            return path


def capture(model: nn.Module, inputs: tuple[Any, ...], frontend: str = "auto") -> Capture:
    """Capture ``model``'s forward on ``inputs`` with the first frontend that succeeds.

    Args:
        model: The model, in the mode it should be captured in (eval).
        inputs: Positional example inputs.
        frontend: ``auto`` (fx, then export), ``fx`` or ``export``.

    Raises:
        TraceError: every frontend failed; the message has each one's reason.
    """
    if frontend not in FRONTENDS:
        raise TraceError(f"frontend {frontend!r} is unknown; expected one of {FRONTENDS}")
    errors: list[str] = []
    if frontend in ("auto", "fx"):
        try:
            return _capture_fx(model, inputs)
        except ModelFailsError:
            raise
        except TraceError as e:
            errors.append(str(e))
    if frontend in ("auto", "export"):
        try:
            cap = _capture_export(model, inputs)
            cap.note = "; ".join(errors)
            return cap
        except TraceError as e:
            errors.append(str(e))
    raise TraceError("; and ".join(errors))


# ---------------------------------------------------------------------- fx
_RULED_MODULES: tuple[type, ...] = ()


def _ruled_modules() -> tuple[type, ...]:
    global _RULED_MODULES
    if not _RULED_MODULES:
        from slimtune.compressors._propagate import MODULE_RULES

        types: list[type] = []
        for t, _ in MODULE_RULES:
            types.extend(t if isinstance(t, tuple) else (t,))
        _RULED_MODULES = tuple(types)
    return _RULED_MODULES


class _Tracer(fx.Tracer):
    """fx tracer that names the module it is in when tracing fails.

    With ``handled_leaves`` (the default), handled layers and the torch.nn modules propagation has
    rules for are leaves and every other module is traced through; without, fx's own leaf policy
    applies (every ``torch.nn`` module is a leaf).
    """

    def __init__(self, handled_leaves: bool = True) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.handled_leaves = handled_leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if not self.handled_leaves:
            return super().is_leaf_module(m, qualname)
        if handler_for(m) is not None:
            return True
        return type(m) in _ruled_modules()

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        try:
            name = self.path_of_module(m)
        except NameError:
            name = type(m).__name__
        self.stack.append(name)
        result = super().call_module(m, forward, args, kwargs)
        self.stack.pop()
        return result


def symbolic_trace(model: nn.Module, handled_leaves: bool = True) -> fx.GraphModule:
    """``torch.fx`` symbolic tracing; a :class:`TraceError` names the module being traced when it fails."""
    tracer = _Tracer(handled_leaves)
    try:
        graph = tracer.trace(model)
    except Exception as e:
        where = tracer.stack[-1] if tracer.stack else "<root>"
        owner: nn.Module | None = model
        if where != "<root>":
            try:
                owner = model.get_submodule(where)
            except AttributeError:
                owner = None
        kind = type(owner).__name__ if owner is not None else "?"
        raise TraceError(
            f"torch.fx cannot trace module {where!r} ({kind}): {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from e
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _capture_fx(model: nn.Module, inputs: tuple[Any, ...]) -> Capture:
    gm = symbolic_trace(model)
    with torch.no_grad():
        try:
            ShapeProp(gm).propagate(*inputs)
        except Exception as e:  # the model itself failed on the example inputs
            raise ModelFailsError(f"running the model on the example inputs failed: {type(e).__name__}: {e}") from e
    return Capture("fx", gm.graph, model, gm, _names(model))


def _names(model: nn.Module) -> dict[int, str]:
    return {id(m): name for name, m in model.named_modules()}


# ---------------------------------------------------------------------- export
class _Outputs(nn.Module):
    """Wraps a model whose output holds types torch.export cannot flatten: returns its tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> tuple[torch.Tensor, ...]:
        return tuple(output_tensors(self.model(*args)))


def output_tensors(value: Any) -> list[torch.Tensor]:
    """The tensors of a model output (nested tuples, lists, dicts, dataclasses and HF ModelOutputs)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in output_tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in output_tensors(v)]
    if hasattr(value, "__dict__"):
        return [t for v in vars(value).values() for t in output_tensors(v)]
    return []


def _dynamic(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """Every dim of every tensor input ``Dim.AUTO``: dynamic where the code allows, so the captured
    program runs on batches of other sizes (calibration data), specialised where it does not."""
    from torch.export import Dim

    return tuple({d: Dim.AUTO for d in range(t.ndim)} if isinstance(t, torch.Tensor) else None for t in inputs)


def _export(model: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, str]:
    """``(ExportedProgram, prefix of the model's modules in it)``: with dynamic sizes where it can,
    static ones otherwise; a model returning types export cannot flatten is wrapped."""
    prefix, target = "", model
    last: Exception | None = None
    for dynamic in (True, False):
        try:
            shapes = _dynamic(inputs) if dynamic else None
            return torch.export.export(target, inputs, dynamic_shapes=shapes, strict=False), prefix
        except Exception as e:  # noqa: BLE001 - reported by the caller with the op and line
            last = e
            if "pytree" in str(e) or "not a known type" in str(e):
                prefix, target = "model.", _Outputs(model)
                try:
                    return torch.export.export(
                        target, inputs, dynamic_shapes=_dynamic(inputs) if dynamic else None, strict=False
                    ), prefix
                except Exception as e2:  # noqa: BLE001
                    last = e2
    assert last is not None
    raise last


class _quiet:
    """Silence torch's own logging and prints while an export attempt may fail (the error says why)."""

    def __enter__(self) -> None:
        import contextlib
        import io
        import logging

        self.logger = logging.getLogger("torch")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)
        self.stack = contextlib.ExitStack()
        self.stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        self.stack.enter_context(contextlib.redirect_stderr(io.StringIO()))

    def __exit__(self, *exc: object) -> None:
        self.stack.close()
        self.logger.setLevel(self.level)


def _capture_export(model: nn.Module, inputs: tuple[Any, ...]) -> Capture:
    try:
        with _quiet():
            ep, prefix = _export(model, inputs)
    except Exception as e:  # noqa: BLE001
        raise TraceError(f"torch.export cannot capture the model: {type(e).__name__}: {_first_lines(e)}") from e
    graph = _normalise(ep, model, prefix)
    module = ep.module()
    gm = fx.GraphModule(module, module.graph, type(model).__name__)  # a plain GraphModule (supports eval())
    return Capture("export", graph, model, gm, _names(model))


def _first_lines(e: Exception, n: int = 3) -> str:
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # keep the message and the user's line that failed (export prints it in its message)
    keep = lines[:n]
    src = [ln.strip() for ln in lines if re.match(r'\s*File ".*", line \d+', ln)]
    if src:
        keep.append(src[-1])
    return " | ".join(keep)


def _normalise(ep: Any, model: nn.Module, prefix: str) -> fx.Graph:
    """The exported graph with parameters as ``get_attr`` and each handled layer call as one node."""
    sig = ep.graph_signature
    params = dict(sig.inputs_to_parameters)
    params.update(sig.inputs_to_buffers)
    constants = set(getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {})

    def strip(path: str) -> str:
        return (
            path[len(prefix) :]
            if prefix and path.startswith(prefix)
            else ("" if prefix and path == prefix[:-1] else path)
        )

    # the outermost handled module on each node's stack: (stack key, path)
    region: dict[fx.Node, tuple[str, str]] = {}
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        for key, (path, _) in (node.meta.get("nn_module_stack") or {}).items():
            p = strip(path)
            if not p:
                continue
            try:
                mod = model.get_submodule(p)
            except AttributeError:
                continue
            if handler_for(mod) is not None:
                region[node] = (key, p)
                break

    out = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    nodes = list(ep.graph.nodes)
    i = 0
    while i < len(nodes):
        node = nodes[i]
        if node.op == "placeholder":
            if node.name in params:
                new = out.get_attr(strip(params[node.name]))
            else:
                new = out.placeholder(node.name)
            new.meta = dict(node.meta)
            env[node] = new
            if node.name in constants:
                new.meta["slimtune_constant"] = True
            i += 1
            continue
        if node in region:
            key, path = region[node]
            j = i
            while j < len(nodes) and region.get(nodes[j], (None,))[0] == key:
                j += 1
            _collapse(out, env, nodes[i:j], path, params)
            i = j
            continue
        new = out.node_copy(node, lambda n: env[n])
        new.meta = dict(node.meta)
        env[node] = new
        i += 1
    out.lint()
    return out


_ALIASES = {"to", "_to_copy", "alias", "contiguous", "clone", "detach", "type_as", "view_as"}


def _alias_source(node: fx.Node, inside: set[fx.Node]) -> fx.Node | None:
    """The node outside ``inside`` that ``node`` only converts or aliases, or None."""
    while node in inside:
        t = node.target
        if not isinstance(t, torch._ops.OpOverload) or t.overloadpacket.__name__ not in _ALIASES or not node.args:
            return None
        if shape_of_val(node) != shape_of_val(node.args[0]):
            return None
        node = node.args[0]
    return node


def shape_of_val(node: Any) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _collapse(
    out: fx.Graph, env: dict[fx.Node, fx.Node], body: list[fx.Node], path: str, params: dict[str, str]
) -> None:
    """Replace the nodes of one layer call by one ``call_module`` node."""
    inside = set(body)
    args: list[fx.Node] = []
    for n in body:
        for a in n.all_input_nodes:
            if a in inside or a in args:
                continue
            if a.op == "placeholder" and a.name in params:
                continue  # the layer's own weights
            args.append(a)
    results = [n for n in body if any(u not in inside for u in n.users)]
    # a result that is the layer's input passed through (x.to(dtype) kept by a residual) is that input
    for r in list(results):
        src = _alias_source(r, inside)
        if src is not None and len(results) > 1:
            env[r] = env[src]
            results.remove(r)
    if not results:
        results = [body[-1]]
    # the tensors first (the layer's output), then sizes read inside the layer and used outside
    results.sort(key=lambda r: 0 if isinstance(r.meta.get("val"), torch.Tensor) else 1)
    name = results[0].name
    cm = out.create_node("call_module", path, tuple(env[a] for a in args), {}, name=name)
    if len(results) == 1:
        cm.meta = dict(results[0].meta)
        env[results[0]] = cm
        return
    cm.meta = dict(results[0].meta)
    cm.meta["val"] = tuple(r.meta.get("val") for r in results)
    for k, r in enumerate(results):
        g = out.call_function(operator.getitem, (cm, k))
        g.meta = dict(r.meta)
        env[r] = g
