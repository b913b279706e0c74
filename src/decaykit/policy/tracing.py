"""Running the traced pass: one forward of the model on shape-only tensors under the recorder of
:mod:`decaykit.policy.usage`, and again where it stopped (in bfloat16, on fake tensors, in eval mode, with a
test of a tensor's value answered the other way); the model is left as it was.

>>> from torch import nn
>>> uses = trace_usage(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8)), torch.zeros(2, 4))
>>> [u.reason for u in uses.values()]
['matrix operand of F.linear', 'added to activations in F.linear: a bias', 'weight of F.layer_norm: a norm gain', 'bias of F.layer_norm: a norm bias']
"""

from __future__ import annotations

import collections
import contextlib
import logging
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as torch_module
from torch.utils._pytree import tree_flatten, tree_map

from decaykit._thread_hooks import ThreadQuiet
from decaykit.policy.own_input import config_of, example_inputs_for, why_no_input
from decaykit.policy.usage import Recorder, Trace, Use, decider

__all__ = ["run_trace", "trace_on_own_input", "trace_usage"]


def _fake_like(mode: Any, t: torch.Tensor, floats: torch.dtype | None = None) -> torch.Tensor:
    """A fake (or, under the meta device, meta) tensor of ``t``'s shape and dtype (``floats`` for
    floating ones, if given); meta tensors become fake CPU ones, so factory calls inside
    ``forward`` (on the default device) meet them on one device."""
    device = torch.device("meta") if isinstance(mode, torch.device) else (
        torch.device("cpu") if t.device.type == "meta" else t.device)
    dtype = floats if floats is not None and t.is_floating_point() else t.dtype
    with mode:
        return torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=dtype, device=device)

def trace_usage(model: nn.Module, example_inputs: Any) -> dict[int, Use]:
    """The deciding use of every parameter reached by ``model(*example_inputs)``, by ``id``.

    ``example_inputs`` is one tensor, a tuple of positional arguments, or a dict of keyword
    arguments (``{"input_ids": ids}``); its tensors only lend their shapes and dtypes.
    """
    trace = run_trace(model, example_inputs)
    return {pid: use for pid, seen in trace.uses.items() if (use := decider(seen)) is not None}


def run_trace(model: nn.Module, example_inputs: Any) -> Trace:
    """One forward pass of ``model`` on shape-only tensors under a recorder: see :func:`trace_usage`.

    The pass runs first on meta tensors (the fastest: no Python per kernel); where it stops, again in
    bfloat16 (some kernels, such as the grouped matmul of MoE experts, only take it), then under
    ``FakeTensorMode``, which also takes the real CPU constants a model mixes in (in float, then in
    bfloat16), then in eval mode (a detector wants targets when training). The first pass that
    finishes is kept, else the one that saw most; where several modalities were given
    (``input_ids`` and ``pixel_values``), each one alone is traced too and what they saw is added.
    """
    trace = _best_trace(model, example_inputs)
    for alone in _modalities(example_inputs) if trace.stopped is not None else []:
        part = _best_trace(model, alone)  # the text model of a VLM runs without the image grid it asked for
        trace.touched |= part.touched
        for pid, seen in part.uses.items():
            trace.uses.setdefault(pid, []).extend(seen)
    return trace


def _best_trace(model: nn.Module, example_inputs: Any) -> Trace:
    """The first pass that finishes, else the one that saw most, in the order of :func:`run_trace`;
    where it tested a tensor's value, with what the other answers show (:func:`_both_ways`)."""
    # meta kernels first: several times faster; bfloat16 suits some kernels; fake tensors also take
    # the CPU constants a model mixes in; a detector asks for targets in training mode
    tries = [(None, True, False), (torch.bfloat16, True, False), (None, False, False), (torch.bfloat16, False, False)]
    tries += [(None, True, True)] if model.training else []
    trace, first = _first_to_finish(model, example_inputs, tries)
    if trace.tests:  # answered False; now True, as often at each place (a ``while`` loop runs once), from the way that worked
        true = collections.Counter(where for where, _ in trace.tests)
        trace = _both_ways(trace, _first_to_finish(model, example_inputs, tries[first:], true)[0])
    return trace


def _first_to_finish(model: nn.Module, example_inputs: Any, tries: list[tuple[torch.dtype | None, bool, bool]],
                     answers: Mapping[str, int] | None = None) -> tuple[Trace, int]:
    """The first pass in ``tries`` (floats, meta, eval mode) that finishes, else the one that saw most, and its place."""
    best, at = _holding_asserts(model, example_inputs, *tries[0], answers=answers), 0
    for i, how in enumerate(tries[1:], 1):
        if best.stopped is None:
            break
        again = _holding_asserts(model, example_inputs, *how, answers=answers)
        if again.stopped is None or len(again.uses) > len(best.uses):
            best, at = again, i
    return best, at


def _both_ways(false: Trace, true: Trace) -> Trace:
    """The uses of a pass that answered every test of a tensor's value False, and of one that answered
    them True (``if self.training and torch.rand(1) > p:``, PEFT's LoKr in training): what either saw
    is kept. Where the two decide a tensor differently, ``Trace.branch`` keeps what the other answer
    saw and the test the deciding use came after, with its answer: a decision that rests on one
    answer says so (:func:`decaykit.policy.roles.classify`). (Each test is answered one way for the
    whole of a pass, and one the True answers lead to is answered False: a branch that needs some
    tests true and others false is not seen.)"""
    merged = Trace({}, false.stopped, false.ran, false.tests, {**true.after_test, **false.after_test},
                   foreign=max(false.foreign, true.foreign), touched=false.touched | true.touched)
    for pid in false.uses.keys() | true.uses.keys():
        mine, theirs = false.uses.get(pid, []), true.uses.get(pid, [])
        merged.uses[pid] = mine + theirs
        decides = decider(mine + theirs)
        test = false.after_test.get((pid, decides)) if decides in mine else true.after_test.get((pid, decides))
        if test is not None and decider(mine) != decider(theirs):
            other = decider(theirs) if decides in mine else decider(mine)
            merged.branch[pid] = (other, f"where {test[0]} is {'true' if test[1] else 'false'}")
    return merged


# One trace per model and its tensors: param_groups, then audit, then a Monitor plan the same model.
_OWN_INPUT_TRACES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Trace]] = weakref.WeakKeyDictionary()


def trace_on_own_input(model: nn.Module) -> Trace:
    """:func:`run_trace` on the input ``model`` makes itself (:func:`example_inputs_for`), kept per
    model while its tensors stay the same ones; a trace with ``ran=False`` says why no input could
    be made. What ``example_inputs()`` raises is raised as a :class:`UserCodeError`."""
    key = tuple((name, id(t), tuple(t.shape), t.dtype) for name, t in (*model.named_parameters(remove_duplicate=False),
                                                                     *model.named_buffers(remove_duplicate=False)))
    known = _OWN_INPUT_TRACES.get(model)
    if known is not None and known[0] == key:
        return known[1]
    inputs = example_inputs_for(model)
    if inputs is None:
        trace = Trace({}, why_no_input(model), ran=False)
    else:
        trace = run_trace(model, inputs)
        if trace.stopped is not None and _bare_message(trace.stopped):  # ``AssertionError: ``, ``KeyError: 2``
            trace.stopped += f", on the input decaykit made for it: {_described(inputs)}"
        masked = _with_masked_patches(model, inputs)
        if masked is not None and any(id(p) not in trace.uses for p in model.parameters()):
            for pid, seen in _best_trace(model, masked).uses.items():  # what only a masked image reaches
                trace.uses.setdefault(pid, []).extend(seen)
    _OWN_INPUT_TRACES[model] = (key, trace)
    return trace


def _bare_message(stopped: str) -> bool:
    """Whether the text of a stop says nothing a user can act on: empty, or one word (a key, an index)."""
    text = stopped.partition(": ")[2].strip()
    return not text or len(text.split()) == 1


def _described(inputs: Any) -> str:
    """The shapes and dtypes of an input: ``(2, 32) float32``, ``input_ids (2, 16) int64``."""
    named = inputs.items() if isinstance(inputs, Mapping) else [("", t) for t in (
        inputs if isinstance(inputs, (tuple, list)) else (inputs,))]
    parts = [f"{name} {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}".strip()
             for name, t in named if isinstance(t, torch.Tensor)]
    return ", ".join(parts) or "no tensors"


def _with_masked_patches(model: nn.Module, inputs: Any) -> dict[str, Any] | None:
    """The inputs plus a mask over the image's patches, for a transformers model whose forward takes
    ``bool_masked_pos``: its mask token is used only where patches are masked."""
    config, takes = config_of(model)
    vision = getattr(config, "vision_config", None) or config
    patch = getattr(vision, "patch_size", None)
    pixels = inputs.get("pixel_values") if isinstance(inputs, Mapping) else None
    if "bool_masked_pos" not in takes or not isinstance(patch, int) or patch <= 0 or pixels is None:
        return None
    patches = (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)
    return {**inputs, "bool_masked_pos": torch.zeros(1, patches, dtype=torch.bool)}


_MODALITIES = ("input_ids", "pixel_values", "input_values", "input_features")


def _modalities(inputs: Any) -> list[dict[str, Any]]:
    """Each modality of a keyword input alone, with the settings that are not inputs, if there are several."""
    if not isinstance(inputs, Mapping) or sum(k in inputs for k in _MODALITIES) < 2:
        return []
    settings = {k: v for k, v in inputs.items() if not isinstance(v, torch.Tensor)}
    ids = {k: v for k, v in inputs.items() if k in ("input_ids", "decoder_input_ids")}
    return [{**settings, **(ids if k == "input_ids" else {k: inputs[k]})} for k in _MODALITIES if k in inputs]


def _holding_asserts(model: nn.Module, example_inputs: Any, floats: torch.dtype | None, meta: bool = False,
                     evaluate: bool = False, answers: Mapping[str, int] | None = None) -> Trace:
    """:func:`_trace_once`, again where it stopped at an ``assert`` whose test it answered False
    (torchdiffeq's ``assert (t[1:] > t[:-1]).all()``), with that test answered True, for up to 8 of
    them: an assertion checks what holds of a valid input (``assert not t.isnan().any()`` holds on False)."""
    held: frozenset[str] = frozenset()
    trace = _trace_once(model, example_inputs, floats, meta, evaluate, answers)
    while trace.assertion is not None and trace.assertion not in held and len(held) < 8:
        held |= {trace.assertion}
        trace = _trace_once(model, example_inputs, floats, meta, evaluate, answers, held)
    return trace


def _trace_once(model: nn.Module, example_inputs: Any, floats: torch.dtype | None, meta: bool = False,
                evaluate: bool = False, answers: Mapping[str, int] | None = None,
                held: frozenset[str] = frozenset()) -> Trace:
    from torch._subclasses.fake_tensor import FakeTensorMode

    # on meta tensors, what the forward creates must be meta too: the default device says so
    mode: Any = torch.device("meta") if meta else FakeTensorMode(allow_non_fake_inputs=True)
    fakes: dict[int, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    for name, p in model.named_parameters(remove_duplicate=False):
        fake = fakes.setdefault(id(p), _fake_like(mode, p, floats))
        pairs.append((fake, p))
        state[name] = fake
    for name, b in model.named_buffers(remove_duplicate=False):
        state[name] = fakes.setdefault(id(b), _fake_like(mode, b, floats))
    if any(isinstance(t, torch.Tensor) and t.is_nested for t in tree_flatten(example_inputs)[0]):
        return Trace({}, "a nested tensor in example_inputs, which has no one shape to copy: pass padded tensors")
    try:
        args, kwargs = _as_call(model, tree_map(lambda t: _fake_like(mode, t, floats) if isinstance(t, torch.Tensor) else t,
                                         example_inputs))
    except Exception as exc:  # a tensor subclass that cannot be copied shape-only: the structure decides
        return Trace({}, f"a shape-only copy of the input: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200])
    recorder = Recorder(pairs, [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)], answers,
                         held)
    stopped = assertion = None
    fake_log = logging.getLogger("torch._subclasses.fake_tensor")
    level = fake_log.level
    fake_log.setLevel(logging.CRITICAL)  # a kernel without a fake version logs a traceback before raising
    saved = _module_state(model)  # the training flags too: ``evaluate`` is undone with the rest
    if evaluate:
        model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), _without_hooks(model), _unvalidated(), mode, recorder:
            torch.func.functional_call(model, state, args, kwargs, strict=False)
    except Exception as exc:  # a data-dependent op, or the model's own check: keep what was seen
        stopped = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        if isinstance(exc, TypeError) and isinstance(example_inputs, (Mapping, list)):  # maybe meant otherwise
            stopped += f"; example_inputs was passed {_passed_as(model, example_inputs)}"
        if recorder.tests and recorder.ops_since_test == 0:  # raised on an answer the pass made up, not on the input
            where, answer = recorder.tests[-1]
            assertion = recorder.last_assert if isinstance(exc, AssertionError) else None
            stopped += (f", raised right after a test of a tensor's value, {where}, that the pass answered "
                        f"{answer} (fake tensors hold no values)")
    finally:
        fake_log.setLevel(level)
        _restore(saved)
    recorder.finish()
    return Trace(recorder.uses, stopped, tests=recorder.tests, after_test=recorder.after_test, assertion=assertion,
                 foreign=len(recorder.foreign), touched=recorder.touched)


@contextlib.contextmanager
def _unvalidated() -> Iterator[None]:
    """Without ``torch.distributions``' checks of their arguments' values by default: on tensors that hold no
    values, ``Normal(loc, scale)`` would find its ``loc`` "invalid" and stop the pass (an SAC actor, a VAE's
    ``rsample``, a pyro guide), blaming a valid input. The default is put back afterwards."""
    default = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(default)


@contextlib.contextmanager
def _without_hooks(model: nn.Module) -> Iterator[None]:
    """Without the model's forward hooks and pre-hooks, nor, in this thread, the global ones
    (``register_module_forward_hook``): a user's hook would fire on fake tensors and keep them, and
    ``torch.distributed``'s (FSDP2's all-gather) would run collectives where only shapes are needed.
    Torch's own hooks that compute a weight (the old ``weight_norm`` and ``spectral_norm``, pruning
    masks) stay. The hooks are put back in their order afterwards."""
    saved = []
    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            off = [k for k, hook in hooks.items() if not _computes_weight(hook)]
            if off:
                saved.append((hooks, dict(hooks)))
                for k in off:
                    del hooks[k]
    try:
        with _quiet_global_hooks():
            yield
    finally:
        for hooks, before in saved:
            hooks.clear()
            hooks.update(before)


def _computes_weight(hook: Any) -> bool:
    """Whether a module hook is torch's own, outside ``torch.distributed``: part of how a layer computes."""
    where = _hook_module(hook)
    return where.startswith("torch.") and not where.startswith("torch.distributed")


def _hook_module(hook: Any) -> str:
    """The module that defines a hook: its function's, its bound method's owner's, or its class's."""
    target = getattr(hook, "func", hook)  # functools.partial
    owner = getattr(target, "__self__", None)
    return (type(owner).__module__ if owner is not None else getattr(target, "__module__", "")) or ""


_GLOBAL_HOOKS = ("_global_forward_pre_hooks", "_global_forward_hooks", "_global_buffer_registration_hooks",
                 "_global_parameter_registration_hooks", "_global_module_registration_hooks")
_quiet_global_hooks = ThreadQuiet(lambda: [getattr(torch_module, name, None) for name in _GLOBAL_HOOKS])


# What nn.Module keeps in its own attributes: the tables ``_restore`` puts back whole, and hook tables.
_MODULE_TABLES = frozenset(nn.Module().__dict__)
_CONTAINERS = (list, dict, set, collections.deque)


def _module_state(model: nn.Module) -> list[tuple[nn.Module, dict[str, Any], list[dict[str, Any]], list[tuple]]]:
    """Each module's attributes, its parameter, buffer and child tables, and the contents of the
    lists, dicts, sets and deques its attributes hold (nested ones too), as they are before the pass."""
    saved = []
    seen: set[int] = set()
    for m in model.modules():
        contents: list[tuple[Any, Any]] = []
        for name, value in m.__dict__.items():
            if name not in _MODULE_TABLES:
                contents += _contents(value, seen)
        saved.append((m, dict(m.__dict__), [dict(m._parameters), dict(m._buffers), dict(m._modules)], contents))
    return saved


def _contents(value: Any, seen: set[int], depth: int = 0) -> list[tuple[Any, Any]]:
    """``(container, a copy of its items)`` for a list, dict, set or deque and those it holds, to a depth of 4."""
    if not isinstance(value, _CONTAINERS) or id(value) in seen or depth >= 4:
        return []
    seen.add(id(value))
    items = value.copy() if isinstance(value, (dict, set)) else list(value)
    out = [(value, items)]
    for item in (value.values() if isinstance(value, dict) else value if not isinstance(value, set) else ()):
        out += _contents(item, seen, depth + 1)
    return out


def _restore(saved: list[tuple[nn.Module, dict[str, Any], list[dict[str, Any]], list[tuple]]]) -> None:
    """Undo what the traced forward left on the model: ``self.cache = x`` would keep a fake tensor, a
    buffer the forward registers would stay a fake one, ``self.history.append(x)`` or
    ``self.stats["calls"] += 1`` would change a list or dict the model holds; the model must be as
    it was. Not undone: changes inside other objects an attribute holds (a config, a cache class),
    in containers nested deeper than four levels, or outside the model (globals, closures). (Lazy
    modules, which would materialise their parameters in place, are refused before any pass.)"""
    for module, attributes, tables, contents in saved:
        _put_back(module.__dict__, attributes)
        for table, before in zip((module._parameters, module._buffers, module._modules), tables):
            _put_back(table, before)
        for container, items in contents:
            _put_back(container, items)


def _put_back(container: Any, items: Any) -> None:
    """``container``'s items as they were, in place, if the pass changed them."""
    if isinstance(container, dict):
        if container.keys() != items.keys() or any(container[k] is not v for k, v in items.items()):
            container.clear()
            container.update(items)
    elif isinstance(container, set):
        if container != items:
            container.clear()
            container.update(items)
    elif len(container) != len(items) or any(a is not b for a, b in zip(container, items)):
        container.clear()
        container.extend(items)

def _as_call(model: nn.Module, inputs: Any) -> tuple[tuple, dict]:
    """``inputs`` as the call's arguments: a tuple or list positional; a dict keyword, its keys the forward does not
    take left out (a collated batch's ``labels``) unless it takes ``**kwargs``, or, where none of its keys is an
    argument of the forward, the one argument (an observation dict)."""
    if isinstance(inputs, Mapping):
        takes = _keywords(model)
        if takes is None:
            return (), dict(inputs)
        kept = {k: v for k, v in inputs.items() if k in takes}
        return ((), kept) if kept else ((inputs,), {})
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def _keywords(model: nn.Module) -> frozenset[str] | None:
    """The names ``model``'s forward takes, or None where it takes any (``**kwargs``) or its signature is unknown."""
    import inspect

    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters)


def _passed_as(model: nn.Module, inputs: Mapping[str, Any] | list[Any]) -> str:
    """How a dict or list ``example_inputs`` was handed to the forward, and the other way, for a stop's message."""
    if isinstance(inputs, list):
        return ("a list, as positional arguments, model(*example_inputs): give (example_inputs,) for a model that "
                "takes the list whole")
    takes = _keywords(model)
    if takes is not None and not takes & inputs.keys():
        return ("whole, as the one argument: none of its keys is an argument of the forward; give the keyword "
                "arguments the forward takes")
    dropped = sorted(set(inputs) - takes) if takes is not None else []
    return ("a dict, as keyword arguments, model(**example_inputs)" + (f", without {', '.join(dropped)}, which the "
            "forward does not take" if dropped else "") + ": give (example_inputs,) for a model that takes it whole")
