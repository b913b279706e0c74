"""What deciding by use costs: the traced forward pass on meta tensors vs on FakeTensorMode.

``plan(model, wd)`` traces a model whose tensors the structure could only guess about (HF's Mamba
port: ``A_log`` (d_inner, d_state) is a matrix by shape, a state by use). The pass runs on meta
tensors first and on fake tensors only where that stops. Both passes run here on the same model
(built on the meta device), interleaved, median of repeats, and must record the same uses; the
structural plan alone is timed beside them for scale.

Run: python benchmarks/bench_trace.py [--layers 32] [--repeats 5]
Last line: speedup=<fake / meta> (above 1 means the meta pass is faster).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import transformers
from _machine import load_line, machine_line, positive_int

import decaykit
from decaykit.policy import tracing


def build(layers: int) -> torch.nn.Module:
    cfg = transformers.MambaConfig(num_hidden_layers=layers)  # the default sizes: hidden 768, state 16
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.MambaForCausalLM(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=positive_int, default=32)
    parser.add_argument("--repeats", type=positive_int, default=5)
    args = parser.parse_args()
    print(machine_line())
    model = build(args.layers)
    inputs = tracing.example_inputs_for(model)
    passes = {
        "meta": lambda: tracing._trace_once(model, inputs, None, meta=True),
        "fake": lambda: tracing._trace_once(model, inputs, None),
        "structure": lambda: decaykit.plan(model, 0.1, example_inputs=False),
    }
    seen = {name: passes[name]() for name in ("meta", "fake")}  # warm-up, and both must see the same uses
    assert all(t.stopped is None for t in seen.values())
    kinds = [{pid: sorted({u.kind for u in uses}) for pid, uses in t.uses.items()} for t in seen.values()]
    assert kinds[0] == kinds[1] and len(kinds[0]) == len(list(model.parameters()))
    times: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(args.repeats):
        for name, run in passes.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    tensors = len(list(model.parameters()))
    print(f"model: MambaForCausalLM, {args.layers} layers, {tensors} tensors (meta device)")
    print(f"traced pass on meta tensors   {med['meta'] * 1e3:8.1f} ms")
    print(f"traced pass on fake tensors   {med['fake'] * 1e3:8.1f} ms")
    print(f"structural plan alone         {med['structure'] * 1e3:8.1f} ms")
    print(load_line())
    print(f"speedup={med['fake'] / med['meta']:.2f}")


if __name__ == "__main__":
    main()
