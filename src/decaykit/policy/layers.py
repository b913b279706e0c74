"""Layer depth for layer-wise LR decay (BEiT, timm ``param_groups_layer_decay``).

``lr_scale = layer_decay ** (max_layer - layer)``: the head trains at the full LR and each block
closer to the input at ``layer_decay`` times the one above it.

Depth comes from the module structure, not from names: the model's repeated blocks are the
children of ``ModuleList`` / ``Sequential`` containers whose children all share one class
(``blocks``, ``layers``, ``h``, ``encoder.layer``, ResNet's ``layer1..4``), searched down to
the finest level (ConvNeXt ``stages.N.blocks.M``). Block ``i`` (counting across containers in
model order) is layer ``i + 1``; what comes before the first block (stem, embeddings) is
layer 0; what comes after the last (final norm, head) is layer ``n_blocks + 1``; a parameter
between blocks (a stage's downsample, an encoder's final norm) joins the block that shares the
longest name prefix with it, the nearest one in model order on a tie.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence

from torch import nn

from decaykit.errors import DecayError, DecayWarning
from decaykit.policy.names import namer

__all__ = ["find_blocks", "layer_ids"]


def _is_block_container(module: nn.Module) -> bool:
    if not isinstance(module, (nn.ModuleList, nn.Sequential)):
        return False
    children = list(module.children())
    if len(children) < 2:
        return False
    first = type(children[0])
    # containers of containers or of plain layers (Linear, ReLU) are not a stack of blocks
    return all(type(c) is first for c in children) and any(True for _ in children[0].children())


def find_blocks(model: nn.Module) -> list[str]:
    """Canonical names of the model's repeated blocks, in model order."""

    def walk(module: nn.Module, prefix: str) -> list[str]:
        found: list[str] = []
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if _is_block_container(child):
                for cname, block in child.named_children():
                    block_path = f"{path}.{cname}"
                    found.extend(walk(block, block_path) or [block_path])
            else:
                found.extend(walk(child, path))
        return found

    seen: set[str] = set()
    canonical = namer(model)
    return [b for b in (canonical(p) for p in walk(model, "")) if not (b in seen or seen.add(b))]


def _common(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def layer_ids(
    model: nn.Module,
    names: Sequence[str],
    layer_of: Mapping[str, int] | Callable[[str], int | None] | None = None,
) -> tuple[dict[str, int], int]:
    """Map each canonical parameter name in ``names`` (model order) to its layer.

    Returns ``(layers, max_layer)``. ``layer_of`` overrides: a mapping from name to layer, or a
    callable returning a layer or ``None`` (meaning: decide automatically).
    """
    blocks = find_blocks(model)
    block_parts = [b.split(".") for b in blocks]
    block_index = {b: i for i, b in enumerate(blocks)}

    def owning_block(name: str) -> int | None:
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            i = block_index.get(".".join(parts[:cut]))
            if i is not None:
                return i
        return None

    owned = [owning_block(n) for n in names]
    positions = [i for i, b in enumerate(owned) if b is not None]
    layers: dict[str, int] = {}
    for pos, (name, block) in enumerate(zip(names, owned)):
        if block is not None:
            layers[name] = block + 1
        elif not positions or pos < positions[0]:
            layers[name] = 0
        elif pos > positions[-1]:
            layers[name] = len(blocks) + 1
        else:
            parts = name.split(".")
            scores = [_common(parts, bp) for bp in block_parts]
            best = max(scores)
            candidates = [i for i, s in enumerate(scores) if s == best]
            previous = max((owned[p] for p in positions if p < pos), default=0)
            # nearest candidate in model order; a later block wins a tie (downsample before its stage)
            layers[name] = min(candidates, key=lambda i: (abs(i - previous - 0.5), -i)) + 1
    if layer_of is not None:
        layers.update(_given_layers(names, layer_of))
    max_layer = max(layers.values(), default=0)
    if blocks:
        max_layer = max(max_layer, len(blocks) + 1)
    return layers, max_layer


def _given_layers(names: Sequence[str], layer_of: Mapping[str, int] | Callable[[str], int | None]) -> dict[str, int]:
    """The layers ``layer_of`` gives: integers >= 0 (0 = before the first block), ``None`` from a callable = automatic.

    A negative layer would give lr_scale = layer_decay ** (max_layer − layer) beyond the stem's, which
    no layer-wise scheme means; a str or float is a mistake, not a layer.
    """
    out: dict[str, int] = {}
    for name in names:
        if isinstance(layer_of, Mapping):
            if name not in layer_of:
                continue
            given = layer_of[name]
        else:
            try:
                given = layer_of(name)
            except Exception as exc:
                raise DecayError(f"layer_of raised {type(exc).__name__} for parameter {name!r}: {exc}") from exc
            if given is None:
                continue
        if isinstance(given, bool) or not isinstance(given, numbers.Integral) or given < 0:
            raise DecayError(
                f"layer_of gave {given!r} ({type(given).__name__}) for parameter {name!r}; a layer must be an integer "
                ">= 0 (0: before the first block, i: block i, blocks + 1: after the last)"
                + ("" if isinstance(layer_of, Mapping) else ", or None to keep the layer found from the structure")
            )
        out[name] = int(given)
    if isinstance(layer_of, Mapping):
        unknown = sorted(set(layer_of) - set(names), key=str)
        if unknown:
            warnings.warn(f"layer_of names no parameter of the model: {', '.join(map(repr, unknown[:5]))}; "
                          "keys are canonical parameter names (see `decaykit inspect`)", DecayWarning, stacklevel=5)
    return out
