"""The input a model makes for itself, for the traced pass when the user passes none: its own
``example_inputs()``, a Hugging Face config, timm's ``pretrained_cfg``, or its first weight layer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from decaykit.errors import UserCodeError

__all__ = ["config_of", "example_inputs_for", "why_no_input"]


def example_inputs_for(model: nn.Module) -> Any | None:
    """An input ``model`` can take, made from what it says about itself, or ``None``.

    In order: its own ``example_inputs()`` method or Lightning's ``example_input_array``; a
    Hugging Face model's config (token ids from its vocabulary, or pixel values for an image
    model), also through a wrapper whose ``forward`` takes ``*args, **kwargs`` (PEFT's ``PeftModel``); timm's ``pretrained_cfg["input_size"]``; else the first weight layer in the order the
    model registers them (``Linear``: features, ``Conv*d``: channels, at an ``img_size`` /
    ``image_size`` the model states or 224, 16 frames of them for ``Conv3d``, ``Embedding``:
    token ids). A guess that does not
    fit stops the traced pass at its first layer, and the structure decides.
    """
    own: Callable[[], Any] | None = getattr(model, "example_inputs", None)
    if callable(own):
        try:
            return own()
        except Exception as exc:  # the user's code: say so, in one line, with the original chained
            raise UserCodeError(
                f"{type(model).__name__}.example_inputs() raised {type(exc).__name__}: {exc}; make it return an input "
                "the model takes (no arguments), or pass example_inputs= yourself, or False to decide from the "
                "structure alone"
            ) from exc
    array = getattr(model, "example_input_array", None)  # Lightning's convention
    if isinstance(array, (torch.Tensor, tuple, list, Mapping)):
        return array
    config, takes = config_of(model)
    if config is not None:
        return _from_config(config, takes)
    stated = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    size = stated.get("input_size") if isinstance(stated, Mapping) else None
    if isinstance(size, (tuple, list)) and len(size) >= 2 and all(isinstance(n, int) and n > 0 for n in size):
        return torch.zeros(2, *size)
    return _from_first_layer(model)


def config_of(model: nn.Module) -> tuple[Any, frozenset[str]]:
    """A transformers config for ``model`` (its own, or that of the model a wrapper hands its input to),
    or ``None``, and the arguments of the forward that takes the input."""
    inner = _passed_to(model)
    for holder in dict.fromkeys((model, inner)):
        config = getattr(holder, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            return config, _arguments(inner)
    return None, frozenset()


def _passed_to(model: nn.Module) -> nn.Module:
    """The module ``model`` hands its input to: itself, or, where its ``forward`` takes only ``*args`` and
    ``**kwargs`` (PEFT's ``PeftModel`` and its tuner), the first module it holds, in turn."""
    import inspect

    for _ in range(8):  # wrappers nest a few levels at most
        if type(model).forward is nn.Module.forward:  # no forward of its own (BarkModel): it hands nothing on
            break
        try:
            kinds = {p.kind for p in inspect.signature(model.forward).parameters.values()}
        except (TypeError, ValueError):
            break
        child = next(model.children(), None)
        if not kinds or not kinds <= {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD} or child is None:
            break
        model = child
    return model


def why_no_input(model: nn.Module) -> str:
    """Why :func:`example_inputs_for` made no input for ``model``."""
    name = type(model).__name__
    config, takes = config_of(model)
    if config is None:
        return f"{name} has no example_inputs() method, config or first weight layer that fixes its input"
    if type(_passed_to(model)).forward is nn.Module.forward:
        return f"{name} has a {type(config).__name__}, but no forward of its own that takes an input"
    taken = ", ".join(sorted(takes)) or "no named argument"
    return (f"{name}'s {type(config).__name__} fixes no input its forward ({taken}) takes: decaykit makes "
            "input_ids, pixel_values, input_values, or input_features where the config gives num_mel_bins")


def _from_first_layer(model: nn.Module) -> torch.Tensor | None:
    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding))),
                 None)
    if isinstance(first, nn.Linear):
        return torch.zeros(2, first.in_features)
    if isinstance(first, nn.Embedding):
        return torch.zeros(2, 8, dtype=torch.long)
    if isinstance(first, nn.modules.conv._ConvNd):
        dims = first.weight.ndim - 2
        if dims == 1:
            return torch.zeros(2, first.in_channels, 1024)
        image = _stated_image_size(model) or (224, 224)
        return torch.zeros(2, first.in_channels, *((16,) * (dims - 2)), *image)  # video: 16 frames of images
    return None


def _stated_image_size(model: nn.Module) -> tuple[int, ...] | None:
    """The image size a vision model states on itself or a submodule (``img_size``, ``image_size``)."""
    for module in model.modules():
        for attr in ("img_size", "image_size"):
            size = getattr(module, attr, None)
            if isinstance(size, int) and size > 0:
                return (size, size)
            if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(n, int) and n > 0 for n in size):
                return tuple(size)
    return None


def _arguments(model: nn.Module) -> frozenset[str]:
    import inspect

    try:
        return frozenset(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def _audio(config: Any) -> torch.Tensor:
    """A second of raw audio at 16 kHz, or a spectrogram where the config sizes one (AST)."""
    mel, frames = getattr(config, "num_mel_bins", None), getattr(config, "max_length", None)
    if isinstance(mel, int) and isinstance(frames, int):
        return torch.zeros(1, frames, mel)
    channels = getattr(config, "audio_channels", None)
    return torch.zeros(1, channels, 16000) if isinstance(channels, int) else torch.zeros(1, 16000)


def _from_config(config: Any, takes: frozenset[str]) -> dict[str, Any] | None:
    """Inputs for a transformers model from its config and ``forward``'s arguments alone: token ids
    (its vocabulary only bounds them), pixel values, audio; no tokenizer, no download."""
    vision = getattr(config, "vision_config", None) or config
    inputs: dict[str, Any] = {}
    if "input_ids" in takes:
        inputs["input_ids"] = torch.ones(1, 8, dtype=torch.long)  # a fake tensor's values are never read
        if "decoder_input_ids" in takes and getattr(config, "is_encoder_decoder", False):
            inputs["decoder_input_ids"] = torch.ones(1, 8, dtype=torch.long)
    image, channels = getattr(vision, "image_size", None) or 224, getattr(vision, "num_channels", None) or 3
    if "pixel_values" in takes and isinstance(image, int):
        inputs["pixel_values"] = torch.zeros(1, channels, image, image)
    elif "pixel_values" in takes and isinstance(image, (tuple, list)) and len(image) == 2:
        inputs["pixel_values"] = torch.zeros(1, channels, *image)
    if "input_values" in takes:
        inputs["input_values"] = _audio(config)
    if "input_features" in takes and isinstance(getattr(config, "num_mel_bins", None), int):
        frames = 2 * getattr(config, "max_source_positions", 1500)
        inputs["input_features"] = torch.zeros(1, config.num_mel_bins, frames)
    if inputs and "use_cache" in takes:
        inputs["use_cache"] = False  # one pass, nothing to cache: hybrid caches refuse an empty start
    return inputs or None
