"""A frozen prefix: train only the top of a network on features computed once (docs/method.md §7.11).

``split_model(model, at)`` cuts a classifier into ``prefix`` and ``head`` with ``head(prefix(x)) == model(x)``:
the graph ``torch.fx`` traces from ``model`` is cut at one of its nodes after which nothing computed before it is
read again (a *cut*). Both parts are ``torch.fx.GraphModule`` objects holding ``model``'s own submodules, so
training the head trains ``model``. ``at="auto"`` picks the latest cut whose head still holds at least half of
the model's parameters, in two or more layers and, in a convolutional model, a convolution, with some parameters
before it (a two-layer MLP has none: it trains whole); a module name (``"features.7"``, ``"layers.2"``) cuts after
that module's output.

An accelerated run with ``config.frozen_prefix`` forwards every image set it reads through the prefix once, in
eval mode and without gradients, and trains the head on those features: a step then costs the head's forward and
backward only, and the auto stop's evaluations the head's forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

__all__ = ["Split", "prefix_features", "split_model"]

#: the head keeps at least this share of the model's parameters under ``at="auto"``
AUTO_HEAD_SHARE = 0.5


@dataclass
class Split:
    """``prefix`` and ``head`` of a model (``head(prefix(x)) == model(x)``); ``at`` names the cut."""

    prefix: nn.Module
    head: nn.Module
    at: str
    head_parameters: int
    parameters: int


class _Tracer(fx.Tracer):
    """Traces through every module but the one named ``leaf`` (kept whole: its output is a node)."""

    def __init__(self, leaf: str | None) -> None:
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname == self.leaf or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module, leaf: str | None, fn: str, name: str) -> fx.GraphModule:
    """The model's graph, traced in eval mode (code reading ``self.training``, e.g. dropout or stochastic depth
    written as functions, is recorded as in eval mode; dropout modules keep their own mode); its modes restored."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        graph = _Tracer(leaf).trace(model)
    except Exception as exc:  # fx raises many types for code it cannot trace (control flow on values, ...)
        raise ValueError(f"{fn}: {name} needs a model torch.fx can trace, and {type(model).__name__} could not be "
                         f"traced ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                         f"set {name}=None to train the whole model") from None
    finally:
        for m, training in modes:
            m.training = training
    return fx.GraphModule(model, graph)


def _cuts(graph: fx.Graph) -> list[fx.Node]:
    """The nodes after which only their own value is read (in graph order; the output node excluded)."""
    nodes = list(graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    last: dict[fx.Node, int] = {}
    for n in nodes:
        for a in n.all_input_nodes:
            last[a] = max(last.get(a, -1), pos[n])
    out = []
    live: set[fx.Node] = set()
    for i, n in enumerate(nodes):
        if n.op == "output":
            break
        if n.op != "get_attr":
            live.add(n)
        live = {m for m in live if last.get(m, -1) > i}
        if n.op not in ("placeholder", "get_attr") and live == {n}:
            out.append(n)
    return out


def _is_conv(gm: fx.GraphModule, n: fx.Node) -> bool:
    return n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.modules.conv._ConvNd)


def _node_parameters(gm: fx.GraphModule, n: fx.Node) -> list[torch.Tensor]:
    if n.op == "call_module":
        return list(gm.get_submodule(n.target).parameters())
    if n.op == "get_attr":
        obj = gm
        for part in str(n.target).split("."):
            obj = getattr(obj, part)
        return [obj] if isinstance(obj, nn.Parameter) else []
    return []


def _part(gm: fx.GraphModule, nodes: list[fx.Node], cut: fx.Node, first: bool) -> fx.GraphModule:
    """The graph up to ``cut`` (returning its value) or after it (taking it as its input). An attribute read
    (``get_attr``: a parameter or buffer the forward uses directly) is copied into the part that reads it, where it
    is first read, so neither part holds the other's parameters."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}

    def arg(a: fx.Node) -> fx.Node:
        if a not in env and a.op == "get_attr":
            env[a] = graph.node_copy(a)
        return env[a]

    if not first:
        env[cut] = graph.placeholder("features")
    started = first
    for n in nodes:
        if n.op == "output":
            if not first:
                graph.output(fx.map_arg(n.args[0], arg))
            break
        if n.op != "get_attr" and started and n not in env:
            env[n] = graph.node_copy(n, arg)
        if n is cut:
            if first:
                graph.output(env[n])
                break
            started = True
    graph.lint()
    return fx.GraphModule(gm, graph)


def split_model(model: nn.Module, at: str = "auto", fn: str = "split_model",
                name: str = "config.frozen_prefix") -> Split:
    """``model`` cut into a frozen ``prefix`` and a trained ``head`` (module docstring).

    Raises ``ValueError`` naming ``name`` when the model cannot be traced, ``at`` names no module of it, or the
    cut there is not one (something the prefix computed is read again after it)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(at, str) or not at:
        raise TypeError(f"{fn}: {name} must be 'auto' or a module name of the model, got {at!r}")
    modules = dict(model.named_modules())
    if at != "auto" and (at not in modules or at == ""):
        raise ValueError(f"{fn}: {name}={at!r} is not a module of {type(model).__name__} (e.g. "
                         f"{[n for n in modules if n][:6]})")
    if at == "auto" and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        # measured: on the matrix's BatchNorm ResNet-18 cell the head alone ended 2.3 test points below the band and
        # the MIA 6.5 above it, where the whole model ends 0.1 and 1.0 from it (docs/method.md §7.11)
        raise ValueError(f"{fn}: {name}='auto' leaves a model with BatchNorm whole (on the BatchNorm ResNet-18 "
                         "measured, training its head alone ended further from Retrain's band); name a module to cut "
                         "it anyway")
    gm = _trace(model, None if at == "auto" else at, fn, name)
    nodes = list(gm.graph.nodes)
    if sum(n.op == "placeholder" for n in nodes) != 1:
        raise ValueError(f"{fn}: {name} needs a model whose forward takes one input; {type(model).__name__}'s takes "
                         f"{sum(n.op == 'placeholder' for n in nodes)}: set {name}=None to train the whole model")
    cuts = _cuts(gm.graph)
    total = sum(p.numel() for p in model.parameters())
    if at == "auto":
        chosen = None
        seen: set[int] = set()
        suffix = layers = 0
        conv_after = False
        after: dict[fx.Node, tuple[int, int, bool]] = {}  # parameters, parameterised nodes, a convolution after it
        for n in reversed(nodes):
            after[n] = (suffix, layers, conv_after)
            own = [p for p in _node_parameters(gm, n) if id(p) not in seen]
            seen.update(id(p) for p in own)
            suffix += sum(p.numel() for p in own)
            layers += bool(own)
            conv_after = conv_after or _is_conv(gm, n)
        conv_before = False
        for n in nodes:  # the latest cut where: the prefix holds parameters (else there is nothing to save) and a
            # convolution (the cost it saves: an MLP's first layers are cheap, and on tests/test_methods.py's MLP its
            # head alone matched the forget and unseen losses half as well); the head holds half the parameters, in two
            # layers or more, and a convolution (ConvNet-3's classifier alone left the MIA outside the band: §7.11)
            conv_before = conv_before or _is_conv(gm, n)
            params, count, conv_in_head = after[n]
            if (n in cuts and total > params >= AUTO_HEAD_SHARE * total and count >= 2 and conv_before
                    and conv_in_head):
                chosen = n
        if chosen is None:
            raise ValueError(f"{fn}: {name}='auto' found no point in {type(model).__name__} after which the rest holds "
                             f"at least half of its parameters in two or more layers and a convolution, the part "
                             f"before holds a convolution, and nothing from before is read again; name a module or "
                             f"set {name}=None")
    else:
        hits = [n for n in nodes if n.op == "call_module" and n.target == at]
        if len(hits) != 1:
            raise ValueError(f"{fn}: {name}={at!r}: the model's forward calls that module {len(hits)} times; name "
                             "a module it calls once")
        chosen = hits[0]
        if chosen not in cuts:
            raise ValueError(f"{fn}: {name}={at!r}: the model's forward reads values computed before that module's "
                             "output after it (a skip connection across it): name a module whose output is all that "
                             "the rest of the forward reads")
    prefix = _part(gm, nodes, chosen, first=True)
    head = _part(gm, nodes, chosen, first=False)
    label = _label(nodes, chosen)
    shared = {id(p) for p in prefix.parameters()} & {id(p) for p in head.parameters()}
    if shared:  # a tied weight, or a module called on both sides: training the head would move the prefix
        raise ValueError(f"{fn}: {name}={at!r}: the cut at {label!r} leaves {len(shared)} parameter(s) read both "
                         "before and after it (tied weights, or a module called on both sides); name another module "
                         f"or set {name}=None")
    if not any(p.requires_grad for p in head.parameters()):
        raise ValueError(f"{fn}: {name}={at!r}: nothing after {label!r} has a trainable parameter; name an earlier "
                         f"module or set {name}=None")
    # the model the head is part of, for code that is handed the head and needs the whole model (a benchmark's hook
    # on AutoStop.finish); a plain attribute, not a registered submodule
    object.__setattr__(head, "whole_model", model)
    head_params = sum(p.numel() for p in head.parameters())
    return Split(prefix, head, label, head_params, total)


def _stack(n: fx.Node) -> list[str]:
    """The qualified names of the modules whose forward ``n`` runs in, outermost first."""
    stack = n.meta.get("nn_module_stack") or {}
    names = [v[0] if isinstance(v, tuple) else str(v) for v in stack.values()]
    if n.op == "call_module":
        names.append(str(n.target))
    return [name for name in names if name]


def _label(nodes: list[fx.Node], cut: fx.Node) -> str:
    """The cut named by the outermost module it ends (``"layers.2"``), else by the node itself."""
    i = nodes.index(cut)
    after = next((n for n in nodes[i + 1:] if n.op != "get_attr"), None)
    later = set(_stack(after)) if after is not None else set()
    for name in _stack(cut):
        if name not in later:
            return name
    return str(cut.target) if cut.op == "call_module" else cut.name


@torch.no_grad()
def prefix_features(prefix: nn.Module, images: torch.Tensor, batch_size: int = 512,
                    name: str = "config.frozen_prefix") -> torch.Tensor:
    """``prefix(images)`` in eval mode, in batches moved to the prefix's device and dtype, on that device (the
    prefix's modes restored). ``ValueError`` if ``images`` is empty, the prefix cannot read them, or its output is not
    one tensor."""
    if not isinstance(prefix, nn.Module):
        raise TypeError(f"prefix_features: prefix must be a torch.nn.Module, got {type(prefix).__name__}")
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"prefix_features: images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() < 1 or images.shape[0] == 0:
        raise ValueError(f"prefix_features: images is empty (shape {list(images.shape)}); pass a batch of rows")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"prefix_features: batch_size must be an int >= 1, got {batch_size!r}")
    param = next(prefix.parameters(), None)
    dev = param.device if param is not None else images.device
    dtype = param.dtype if param is not None and param.is_floating_point() else images.dtype
    modes = [(m, m.training) for m in prefix.modules()]
    prefix.eval()
    parts = []
    try:
        for i in range(0, images.shape[0], batch_size):
            try:
                out = prefix(images[i:i + batch_size].to(dev, dtype, non_blocking=True))
            except RuntimeError as exc:  # a shape the prefix's layers cannot take
                raise ValueError(f"prefix_features: the prefix cannot read images of shape {list(images.shape)} "
                                 f"(torch: {str(exc).splitlines()[0]})") from None
            if not isinstance(out, torch.Tensor):
                raise ValueError(f"{name}: the cut's value is a {type(out).__name__}, not one tensor; name a module "
                                 "whose output is a tensor")
            parts.append(out)
    finally:
        for m, training in modes:
            m.training = training
    return torch.cat(parts) if parts else images.new_zeros((0,))
