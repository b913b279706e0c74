"""A K = 16 weight-decay sweep trained as one stacked model vs the same 16 runs one after another.

Both sides train the demo's MLP (64-512-10) on the noisy-label digits, batch 32, for the same
epochs, and evaluate the test set at the end:

* sequential: 16 plain PyTorch loops, ``torch.optim.AdamW(model.parameters(), lr, weight_decay=λ)``
  with its defaults (the foreach path), one after another;
* batched: one ``decaykit.sweep`` call over the same 16 (λ, seed) trials, stacked (each Linear one
  batched matmul, the backward written out, fused AdamW, per-member λ through decaykit's engine), in
  memory, no plots. It also measures what its report needs and the plain loop skips: the training set
  at the end (train metrics, the gap) and the start of the curves (once per seed: members of one seed
  start from the same model).

The plain loops are timed a second time on one thread, the sweep's choice on a busy machine: on a loaded
2-core machine torch's default threads alone can cost the plain loops 10x or more, and that line separates
what the thread count gives from what stacking gives. The sweep's path (stacked or one-by-one, as its
timing trial chose) and its thread count are printed beside its time.

They run interleaved, ``--repeats`` times, and the median of each is reported (other work on a shared
machine then slows both alike). The machine's matmul peak is measured in the same run (a large
float32 matmul), and the sweep's achieved GFLOP/s (nominal 6·params·samples per sample-epoch for
forward + backward) is printed beside it. Where the time goes inside one batched step (forward +
backward as the sweep runs it and through autograd, the engine's optimizer step and the fused AdamW
kernels inside it, and AdamW's foreach step for comparison) is measured too.

The last line is ``speedup=<sequential / batched>`` at ``--batch-size`` (the demo's 32); batch 16 is
measured first for comparison. Target: the batched sweep takes at most 2.5x the time of ONE run,
i.e. speedup > 6.4. How close that is depends on how far one plain run is from the matmul peak:
the smaller the batch, the more a plain step is Python and dispatch overhead that stacking shares.
The first line names the machine and its load average, the line before the last the load average
at the end: the times hold for those conditions, and other work on the machine slows them.

``--task mnist1d-cnn`` runs the same comparison for the MNIST-1D paper's 1-D CNN (lr 1e-2, batch 100):
its Conv1d layers train stacked as batched matmuls over each member's windows, copied into columns with the
batch innermost (``batched._StackedConv1d``).

``--device cuda --k 64`` runs both sides on the GPU with K = 64 trials (8 λ x 8 seeds): goal, the 64 stacked
members at least 20x faster than the 64 plain runs one after another on the same GPU. A device that cannot
train here (no CUDA) fails at once, in one line, with exit status 2.

    python benchmarks/bench_sweep.py [--task digits-noisy-labels|mnist1d-cnn] [--epochs 20] [--repeats 3]
                                     [--batch-size 32] [--also 16] [--device cpu|cuda] [--k 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import statistics
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from _machine import load_line, machine_line, positive_int  # benchmarks/_machine.py, beside this script

import decaykit
from decaykit.sweeps.tasks.digits import digits_mlp, digits_noisy_labels
from decaykit.sweeps.tasks.mnist1d import mnist1d_cnn, mnist1d_data

LAMBDAS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
SEEDS: tuple[int, ...] = (0, 1)  # 8 λ × 2 seeds = K = 16 trials; --k sets K / 8 seeds
DEVICE = torch.device("cpu")  # --device
# what each --task trains: the model, its data, the learning rate and the batch size reported last
TASKS = {
    "digits-noisy-labels": (digits_mlp, digits_noisy_labels, 1e-3, 32, "MLP 64-512-10"),
    "mnist1d-cnn": (mnist1d_cnn, mnist1d_data, 1e-2, 100, "MNIST-1D 1-D CNN (3 Conv1d + linear)"),
}
MODEL, LR = digits_mlp, 1e-3  # set by main() from --task


def _sync() -> None:
    """Wait for the device's queued kernels, so a clock read after them counts them (a no-op on the CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, device=DEVICE), torch.randn(n, n, device=DEVICE)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        _sync()
        start = time.perf_counter()
        a @ b
        _sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def plain_run(data, weight_decay: float, seed: int, epochs: int, batch: int) -> float:
    """What a user writes by hand: one model, torch AdamW with its defaults, a test evaluation at the end."""
    torch.manual_seed(seed)
    model = MODEL().to(DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = data.train_size
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for lo in range(0, n, batch):
            idx = order[lo : lo + batch]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((model(data.x_test).argmax(-1) == data.y_test).float().mean())


def sequential(data, epochs: int, batch: int) -> tuple[float, list[float]]:
    times = []
    for wd in LAMBDAS:
        for seed in SEEDS:
            start = time.perf_counter()
            plain_run(data, wd, seed, epochs, batch)
            times.append(time.perf_counter() - start)
    return sum(times), times


def one_thread(fn, *args):
    """``fn(*args)`` on one CPU thread, torch's thread count restored after."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(saved)


def batched(data, epochs: int, batch: int) -> tuple[float, dict]:
    start = time.perf_counter()
    result = decaykit.sweep(
        MODEL,
        (data.x_train, data.y_train, data.x_test, data.y_test),
        weight_decays=LAMBDAS,
        seeds=list(SEEDS),
        epochs=epochs,
        batch_size=batch,
        lr=LR,
        optimizer="adamw",
        curve_points=1,  # the initial and the final evaluation, as the plain loop's single test pass
        chunk_size=len(LAMBDAS) * len(SEEDS),
        device=DEVICE,
    )
    threads = re.search(r" on (\d+ threads?[^;]*)", result.header[-1])
    return time.perf_counter() - start, {"path": result.run["path"], "threads": threads.group(1) if threads else "?"}


def step_breakdown(data, batch: int, reps: int = 50) -> dict[str, float]:
    """Milliseconds per batched training step: forward + backward as the sweep runs it (written out) and
    through autograd; the engine's optimizer step, the fused AdamW kernels inside it, and AdamW's foreach step."""
    from decaykit.sweeps.batched import StackedMembers
    from decaykit.sweeps.settings import Training
    from decaykit.sweeps.trainer import autograd_step, seeded_model

    settings = Training(optimizer="adamw", lr=LR, momentum=0.0, epochs=1, batch_size=batch, mode="lr_coupled",
                        policy="decaykit", loss="cross_entropy", dtype=torch.float32, device=DEVICE)  # fmt: skip
    keys = [(wd, s) for wd in LAMBDAS for s in SEEDS]
    members = StackedMembers([seeded_model(MODEL, s, torch.float32, DEVICE) for _, s in keys],
                             [wd for wd, _ in keys], settings)  # fmt: skip
    idx = torch.stack([torch.randperm(data.train_size)[:batch] for _ in keys]).to(DEVICE)
    x, y = data.x_train[idx], data.y_train[idx]

    def timed(fn) -> float:
        for _ in range(5):
            fn()
        _sync()
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync()
        return (time.perf_counter() - start) / reps * 1e3

    out = {
        "forward + backward, written out (the sweep's path)": timed(lambda: members.forward_backward(x, y)),
        "forward + backward through autograd (for comparison)": timed(lambda: autograd_step(members, x, y)),
    }
    members.forward_backward(x, y)
    out["engine step (fused AdamW + per-member λ pass)"] = timed(members.optimizer.step)
    inner = members.optimizer.optimizer
    groups = [(g["params"], [inner.state[p] for p in g["params"]]) for g in inner.param_groups]

    def kernels() -> None:  # what the step computes, without the Python around it
        for params, states in groups:
            torch._fused_adamw_(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                                [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states], lr=LR,
                                beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)  # fmt: skip

    with torch.no_grad():
        out["  of which the fused AdamW kernels alone"] = timed(kernels)
    params = [p for g in inner.param_groups for p in g["params"]]
    foreach = torch.optim.AdamW(params, lr=LR, weight_decay=0.0, foreach=True)
    out["AdamW foreach step, same tensors (for comparison)"] = timed(foreach.step)
    return out


def compare(data, epochs: int, batch: int, repeats: int, flops_one: float, k: int) -> dict[str, float]:
    """Interleaved repeats of the sequential and the batched sweep at one batch size; medians."""
    batched(data, 1, batch)  # warm-up: imports, first-call allocations
    plain_run(data, 0.0, 0, 1, batch)
    seq_totals, seq1_totals, one_runs, bat_totals, peaks = [], [], [], [], []
    for _ in range(repeats):
        peaks.append(matmul_peak())
        total, each = sequential(data, epochs, batch)
        seq_totals.append(total)
        one_runs.extend(each)
        if DEVICE.type == "cpu":  # threads are the CPU's question
            seq1_totals.append(one_thread(sequential, data, epochs, batch)[0])
        seconds, how = batched(data, epochs, batch)
        bat_totals.append(seconds)
    seq, one, bat, peak = (statistics.median(v) for v in (seq_totals, one_runs, bat_totals, peaks))
    print(f"batch {batch} ({DEVICE}):")
    print(f"  matmul peak (2048² float32), measured now:  {peak:6.0f} GFLOP/s")
    print(f"  one plain run (torch AdamW defaults):       {one:6.3f} s  {flops_one / one / 1e9:6.1f} GFLOP/s")
    print(f"  {k} plain runs, one after another:          {seq:6.3f} s  {k * flops_one / seq / 1e9:6.1f} GFLOP/s")
    print(f"  decaykit.sweep, {k} trials stacked:          {bat:6.3f} s  {k * flops_one / bat / 1e9:6.1f} GFLOP/s "
          f"({k * flops_one / bat / 1e9 / peak:.0%} of the peak)")  # fmt: skip
    print(f"    (the sweep's path: {how['path']}; {how['threads']})")
    if seq1_totals:
        seq1 = statistics.median(seq1_totals)
        print(f"  {k} plain runs on 1 thread (what threads alone do): {seq1:6.3f} s; sequential on 1 thread / batched "
              f"= {seq1 / bat:.2f}x")  # fmt: skip
    print(f"  batched / one run = {bat / one:.2f}x (target <= 2.5x); sequential / batched = {seq / bat:.2f}x")
    return {"speedup": seq / bat}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags, with ``--device`` checked by the sweep's own settings (one line and exit 2 if it cannot train)."""
    from decaykit.errors import DecayError
    from decaykit.sweeps.settings import Training

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="digits-noisy-labels")
    parser.add_argument("--epochs", type=positive_int, default=20)
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="reported last (default: the task's, digits 32, mnist1d-cnn 100 as in the paper)")
    parser.add_argument("--also", type=positive_int, nargs="*", default=None,
                        help="other batch sizes to compare first (default: 16 for digits, none for mnist1d-cnn)")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--device", default="cpu", help="where both sides train: cpu, cuda, cuda:1, ...")
    parser.add_argument("--k", type=positive_int, default=16, help=f"trials: {len(LAMBDAS)} λ x K/{len(LAMBDAS)} seeds")
    args = parser.parse_args(argv)
    if args.k < len(LAMBDAS) or args.k % len(LAMBDAS):
        parser.error(f"--k must be a multiple of {len(LAMBDAS)} (the λ grid) >= {len(LAMBDAS)}, got {args.k}")
    try:
        args.device = Training(device=args.device).device
    except DecayError as exc:  # one line: the flags were fine, the machine cannot do it
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)

    global MODEL, LR, SEEDS, DEVICE
    SEEDS, DEVICE = tuple(range(args.k // len(LAMBDAS))), args.device
    MODEL, data_fn, LR, default_batch, what = TASKS[args.task]
    args.batch_size = args.batch_size or default_batch
    args.also = args.also if args.also is not None else ([16] if args.task == "digits-noisy-labels" else [])
    print(machine_line())
    torch.set_flush_denormal(True)
    data = data_fn()
    data = dataclasses.replace(data, **{name: getattr(data, name).to(DEVICE)
                                        for name in ("x_train", "y_train", "x_test", "y_test")})  # fmt: skip
    params = sum(p.numel() for p in MODEL().parameters())
    k = len(LAMBDAS) * len(SEEDS)
    flops_one = 6.0 * params * data.train_size * args.epochs

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {what} ({params:,} parameters), "
          f"{data.train_size} samples, {args.epochs} epochs; K = {k} trials ({len(LAMBDAS)} λ x {len(SEEDS)} seeds) "
          f"on {DEVICE}; "
          f"medians of {args.repeats} interleaved repeats")  # fmt: skip
    for batch in [b for b in args.also if b != args.batch_size]:
        compare(data, args.epochs, batch, args.repeats, flops_one, k)
    result = compare(data, args.epochs, args.batch_size, args.repeats, flops_one, k)
    print(f"where a stacked step's time goes at batch {args.batch_size} (ms, K = {k}):")
    for name, ms in step_breakdown(data, args.batch_size).items():
        print(f"  {name:<54} {ms:.3f}")
    print(load_line())
    print(f"speedup={result['speedup']:.2f}")


if __name__ == "__main__":
    main()
