"""Time to build weight-decay param groups for a large model: decaykit vs HF Trainer's logic.

Both run on the same model, built on the meta device (no memory): a Llama with thousands of
tensors. "theirs" is what ``Trainer.create_optimizer`` does: ``get_decay_parameter_names`` and
then two list comprehensions testing ``n in decay_parameters`` (a list). "ours" is
``decaykit.param_groups``, which decides from each parameter's owning module and records a
reason for every tensor. Measured side by side, interleaved, median of repeats.

Run: python benchmarks/bench_groups.py [--layers 400]
Last line: ratio=<ours/theirs> (below 1 means decaykit is faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import transformers
from _machine import load_line, machine_line, positive_int

import decaykit


def build(layers: int) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(hidden_size=512, intermediate_size=1024, num_hidden_layers=layers,
                                   num_attention_heads=8, num_key_value_heads=8, vocab_size=32000)
    with torch.device("meta"):
        return transformers.LlamaForCausalLM(cfg)


def theirs(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay_parameters = transformers.Trainer.get_decay_parameter_names(None, model)
    return [
        {"params": [p for n, p in model.named_parameters() if n in decay_parameters and p.requires_grad],
         "weight_decay": weight_decay},
        {"params": [p for n, p in model.named_parameters() if n not in decay_parameters and p.requires_grad],
         "weight_decay": 0.0},
    ]


def ours(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    return decaykit.param_groups(model, weight_decay)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=positive_int, default=400)
    parser.add_argument("--repeats", type=positive_int, default=5)
    args = parser.parse_args()
    print(machine_line())
    model = build(args.layers)
    tensors = len(list(model.parameters()))
    # both must agree on what they decay (Llama's norms are named *layernorm / norm)
    a, b = ours(model, 0.1), theirs(model, 0.1)
    assert {id(p) for p in a[0]["params"]} == {id(p) for p in b[0]["params"]}
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for _ in range(args.repeats):
        for name, fn in (("ours", ours), ("theirs", theirs)):
            start = time.perf_counter()
            fn(model, 0.1)
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model: LlamaForCausalLM, {args.layers} layers, {tensors} tensors (meta device)")
    print(f"decaykit.param_groups          {med['ours'] * 1e3:8.1f} ms  (per-tensor decisions with reasons)")
    print(f"HF Trainer get_decay_parameter_names + groups {med['theirs'] * 1e3:8.1f} ms")
    print(load_line())
    print(f"ratio={med['ours'] / med['theirs']:.3f}")


if __name__ == "__main__":
    main()
