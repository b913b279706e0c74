"""The sweep's settings values: each checks its fields, stays frozen, resolves against a task; the flat
facade, the value-based call and the CLI all build the same values and give the same sweep."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import decaykit.sweeps as sweeps
from decaykit import sweep
from decaykit.cli.main import build_parser
from decaykit.cli.sweep_cmd import settings_from_args
from decaykit.errors import DecayError, DecayWarning
from decaykit.sweeps import Execution, Training, Trials, builtin_task, run_sweep, task_from_user
from decaykit.sweeps.prepare import prepare
from decaykit.sweeps.runner import _open_store
from decaykit.sweeps.settings import TASK_CHOICES
from decaykit.sweeps.tasks import Task


@pytest.mark.parametrize(
    "cls,kwargs,match",
    [
        (Trials, {"weight_decays": [0.0, -1.0]}, "weight_decays must be finite numbers >= 0, got -1.0"),
        (Trials, {"weight_decays": []}, "weight_decays is empty"),
        (Trials, {"seeds": 0}, "seeds must be >= 1"),
        (Trials, {"seeds": [0, 1.5]}, "seeds must be integers >= 0"),
        (Trials, {"search": (1.0, 0.1)}, "0 < low < high"),
        (Trials, {"search": 3.0}, r"search must be a pair \(low, high\)"),
        (Trials, {"rounds": 0}, "rounds must be an integer >= 1, got 0"),
        (Trials, {"points": 2.5}, "points must be an integer >= 1, got 2.5"),
        (Training, {"optimizer": "rmsprop"}, "optimizer must be one of adamw, adam, sgd or a function, got 'rmsprop'"),
        (Training, {"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
        (Training, {"lr": float("nan")}, "lr must be a finite number > 0"),
        (Training, {"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
        (Training, {"momentum": -0.5}, "momentum must be a finite number >= 0, got -0.5"),
        (Training, {"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        (Training, {"batch_size": -1}, "batch_size must be an integer >= 0, got -1"),
        (Training, {"mode": "sideways"}, "mode must be one of lr_coupled, .*, got 'sideways'"),
        (Training, {"policy": 42}, "policy must be a policy name or a dict"),
        (Training, {"loss": "hinge"}, "loss must be 'auto', one of cross_entropy, mse, half_sum_squares"),
        (Training, {"metrics": {"top": 1}}, r"metrics must be a dict \{name: fn\(outputs, targets\)\}"),
        (Training, {"metric": 3}, "metric must be the name of a measured metric, got 3"),
        (Training, {"maximize": "yes"}, "maximize must be True, False or None, got 'yes'"),
        (Training, {"curve_points": 0}, "curve_points must be an integer >= 1, got 0"),
        (Training, {"dtype": "float64"}, "dtype must be a torch.dtype"),
        (Training, {"device": "nowhere"}, "device must be a torch device or its name"),
        (Execution, {"batched": "sometimes"}, "batched must be 'auto', True, False or 'off', got 'sometimes'"),
        (Execution, {"chunk_size": 0}, "chunk_size must be an integer >= 1, got 0"),
        (Execution, {"plots": True}, "plots=True needs out=DIR"),
        (Execution, {"wait": "no"}, "wait must be True or False"),
        (Execution, {"progress": "loud"}, "progress must be 'auto', 'bar', 'log', 'off', True or False; got 'loud'"),
        (Execution, {"study_name": 7}, "study_name must be a string, got 7"),
    ],
)
def test_each_value_refuses_a_bad_field_naming_it(cls, kwargs, match):
    with pytest.raises(DecayError, match=match):
        cls(**kwargs)


def test_values_are_normalised_and_compare_by_content():
    assert Trials(weight_decays=[1, 0, 1], seeds=3) == Trials(weight_decays=(0.0, 1.0), seeds=[2, 0, 1])
    with pytest.warns(DecayWarning, match="has no effect with search"):  # a grid and a search: the grid is unused
        trials = Trials(weight_decays=[1, 0.1], seeds=[3, 1], search=[0.01, 1])
    assert trials.weight_decays == (0.1, 1.0) and trials.seeds == (1, 3) and trials.search == (0.01, 1.0)
    assert Training(device="cpu").device == torch.device("cpu")
    assert Training(batch_size=0).batch_for(50) == 50 and Training(batch_size=8).batch_for(5) == 5


def test_values_are_frozen_and_their_metrics_read_only():
    metrics = {"top": lambda out, y: 0.0}
    training = Training(metrics=metrics)
    with pytest.raises(dataclasses.FrozenInstanceError):
        training.lr = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Trials().rounds = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Execution().chunk_size = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        training.metrics["other"] = metrics["top"]  # type: ignore[index]
    metrics["later"] = metrics["top"]  # the caller's dict changing does not change the value
    assert sorted(training.metrics) == ["top"]


def test_training_takes_the_task_choices_only_where_none_were_given():
    # the one list of what a task may choose names Task fields and Training fields alike
    assert set(TASK_CHOICES) <= {f.name for f in dataclasses.fields(Task)} & {f.name for f in dataclasses.fields(Training)}
    ridge = builtin_task("ridge")
    resolved = Training(epochs=7).for_task(ridge)
    assert (resolved.optimizer, resolved.lr, resolved.momentum, resolved.mode) == ("sgd", 7e-3, 0.95, "coupled_l2")
    assert resolved.epochs == 7 and resolved.dtype == torch.float64
    assert resolved.batch_size == 0  # the task's full batch
    assert resolved.loss == "half_sum_squares"
    settled = resolved.for_data("regression")
    assert (settled.metric, settled.maximize) == ("test_loss", False)
    classification = Training(loss="auto", metric="test_accuracy").for_task(builtin_task("digits-noisy-labels"))
    settled = classification.for_data("classification")
    assert (settled.loss, settled.metric, settled.maximize) == ("cross_entropy", "test_accuracy", True)
    assert Training(metric="gap", maximize=True).for_task(ridge).for_data("regression").maximize is True


def test_trials_take_the_task_grid_and_seeds_and_plan_rounds():
    ridge = builtin_task("ridge")
    trials = Trials().for_task(ridge)
    assert trials.weight_decays == ridge.weight_decays and trials.seeds == (0,)
    assert next(trials.trial_rounds(lambda tried: None)) == [(wd, 0) for wd in ridge.weight_decays]
    assert trials.first_round_size == len(ridge.weight_decays)
    search = Trials(seeds=2, search=(0.01, 100.0), rounds=2, points=3).for_task(ridge)
    assert search.weight_decays is None and search.extent == [100.0] and search.first_round_size == 8
    rounds = list(search.trial_rounds(lambda tried: 1.0))
    assert rounds[0] == [(wd, s) for wd in (0.0, 0.01, 1.0, 100.0) for s in (0, 1)]
    assert len(rounds) == 2 and all(0.01 < wd < 100.0 and wd != 1.0 for wd, _ in rounds[1])


def test_from_options_reads_fields_by_name_and_given_values_win():
    options = {"rounds": 5, "points": None, "lr": 0.1, "unrelated": "x"}
    assert Trials.from_options(options) == Trials(rounds=5)
    assert Trials.from_options(options, seeds=2) == Trials(rounds=5, seeds=2)
    assert Trials.from_options(options, rounds=None) == Trials()  # a given None replaces the entry: the default
    assert Training.from_options(options, epochs=3) == Training(lr=0.1, epochs=3)


def test_the_store_identity_of_unchanged_settings_is_unchanged():
    # study names written by earlier releases: a rerun of the same settings must find its finished trials
    cases = [
        (builtin_task("ridge"), Training(epochs=50), "decaykit-sweep-ridge-087dca20b51d"),
        (builtin_task("digits-noisy-labels"), Training(epochs=2), "decaykit-sweep-digits-noisy-labels-169dc5664d64"),
    ]
    for task, training, name in cases:
        store, study = _open_store(prepare(task, Trials(seeds=1), training), Execution(storage="memory"))
        store.close()
        assert study == name


RIDGE = {"weight_decays": [0.1, 1.0], "epochs": 200, "storage": "memory"}


def _comparable(result) -> dict:
    out = result.to_dict()
    out["run"] = {k: v for k, v in out["run"].items() if k != "seconds"}
    out["trials"] = [{k: v for k, v in t.items() if k != "seconds"} for t in result.trials]
    return out


def test_the_facade_and_the_value_based_call_give_the_same_sweep():
    flat = sweep(task="ridge", **RIDGE)
    by_value = run_sweep(builtin_task("ridge"), Trials(weight_decays=[0.1, 1.0]), Training(epochs=200),
                         Execution(storage="memory"))  # fmt: skip
    assert by_value.results == flat.results and by_value.best == flat.best
    assert _comparable(by_value) == _comparable(flat)
    assert flat.settings["epochs"] == 200 and flat.run["trained"] == 2


def test_the_facade_and_run_sweep_agree_on_a_users_model_with_metrics_and_callbacks():
    def model():
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 4, generator=g)
    data = (x[:32], (x[:32, 0] > 0).long(), x[32:], (x[32:, 0] > 0).long())
    metrics = {"ones": lambda out, y: float((out.argmax(-1) == 1).float().mean())}
    seen_flat, seen_values = [], []
    flat = sweep(model, data, weight_decays=[0.0, 0.5], seeds=2, epochs=3, batch_size=8, metrics=metrics,
                 storage="memory", callbacks=[seen_flat.append])  # fmt: skip
    by_value = run_sweep(task_from_user(model, data), Trials(weight_decays=[0.0, 0.5], seeds=2),
                         Training(epochs=3, batch_size=8, metrics=metrics), Execution(storage="memory"),
                         callbacks=[seen_values.append])  # fmt: skip
    assert _comparable(by_value) == _comparable(flat)
    assert "test_ones" in flat.results[0] and len(seen_flat) == len(seen_values) == 4


class _Stop(Exception):
    pass


def _captured(monkeypatch, module, call) -> tuple:
    """The (task, trials, training, execution) that ``call`` hands to run_sweep, without running it."""
    seen = []

    def capture(task, trials=None, training=None, execution=None, *, callbacks=()):
        seen.append((task, trials, training, execution))
        raise _Stop  # before anything trains

    monkeypatch.setattr(module, "run_sweep", capture)
    with pytest.raises(_Stop):
        call()
    return seen[0]


def test_the_cli_builds_the_values_the_facade_builds(monkeypatch, tmp_path):
    import decaykit.sweeps.runner as runner

    argv = ["sweep", "--task", "ridge", "--weight-decays", "0,0.1,1", "--seeds", "2", "--epochs", "5", "--lr", "0.01",
            "--batch-size", "0", "--mode", "lr_independent", "--metric", "gap", "--chunk-size", "4", "--no-store",
            "--out", str(tmp_path), "--no-plots", "--quiet", "--exclude", "bias"]  # fmt: skip
    args = build_parser().parse_args(argv)
    policy = {"policy": "decaykit", "exclude": ["bias"], "rules": [], "decay_embeddings": True, "layer_decay": None,
              "strict": False}  # fmt: skip
    _, *facade = _captured(monkeypatch, runner, lambda: sweep(
        task="ridge", weight_decays=[0, 0.1, 1], seeds=2, epochs=5, lr=0.01, batch_size=0, mode="lr_independent",
        metric="gap", chunk_size=4, storage="memory", out=str(tmp_path), plots=False, progress="off",
        policy=policy))  # fmt: skip
    assert list(settings_from_args(args)) == facade
    task, *cli = _captured(monkeypatch, sweeps, lambda: args.func(args))  # the CLI's own run calls run_sweep
    assert cli == facade and task.name == "ridge"


def test_the_cli_defaults_are_the_values_defaults():
    trials, training, execution = settings_from_args(build_parser().parse_args(["sweep"]))
    assert trials == Trials() and dataclasses.replace(training, policy="decaykit") == Training()
    assert execution == Execution(storage=None, out="decaykit-sweep/digits-noisy-labels", plots=True, progress="auto")


def test_wrong_kinds_of_input_are_one_clear_line():
    with pytest.raises(DecayError, match=r"seeds must be a count or a list of integers, got 1.5"):
        Trials(seeds=1.5)
    with pytest.raises(DecayError, match=r"task must be a Task, got 'ridge'; make one with builtin_task"):
        run_sweep("ridge")


@settings(max_examples=50, deadline=None)
@given(
    stale=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5)),
    beat=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5)),
)
def test_the_staleness_window_is_positive_and_at_least_two_heartbeats(stale, beat):
    """A claim is taken from a live worker only if its window closes between two of its beats."""
    sane = all(math.isfinite(v) and v > 0 for v in (stale, beat))
    if sane and stale >= 2 * beat:
        execution = Execution(stale_after=stale, heartbeat_every=beat, storage="memory")
        assert (execution.stale_after, execution.heartbeat_every) == (float(stale), float(beat))
        return
    name = "stale_after" if not (math.isfinite(stale) and stale > 0) else "heartbeat_every" if not sane else None
    with pytest.raises(DecayError, match=name or "stale_after must be at least twice heartbeat_every"):
        Execution(stale_after=stale, heartbeat_every=beat, storage="memory")


def test_the_staleness_flags_reach_the_store(tmp_path):
    pytest.importorskip("optuna")
    args = build_parser().parse_args(["sweep", "--task", "ridge", "--stale-after", "20", "--heartbeat-every", "4",
                                      "--storage", str(tmp_path / "j.log")])  # fmt: skip
    execution = settings_from_args(args)[2]
    store, _ = _open_store(prepare(builtin_task("ridge"), Trials(), Training()), execution)
    try:
        assert (store.stale_after, store.owner["heartbeat_every"]) == (20.0, 4.0)
    finally:
        store.close()
    assert (Execution(storage="memory").stale_after, Execution(storage="memory").heartbeat_every) == (300.0, 30.0)


def test_lr_independent_converts_the_default_grid_and_says_so():
    """The default grid is written as torch AdamW λ (up to 10): in mode 'lr_independent' its λ = 10 shrinks
    every weight by 1000% per step, so the README's own command exited 2; the grid is now λ·lr."""
    from test_sweep_batched import blobs, mlp

    result = sweep(mlp, blobs(), mode="lr_independent", lr=1e-2, seeds=1, epochs=1, progress=False, storage="memory",
                   plots=False)  # fmt: skip
    default = sweep(mlp, blobs(), lr=1e-2, seeds=1, epochs=1, progress=False, storage="memory", plots=False)
    coupled = [r["weight_decay"] for r in default.results]
    assert [r["weight_decay"] for r in result.results] == pytest.approx([wd * 1e-2 for wd in coupled])
    assert any("default λ grid (torch AdamW λ) converted" in n for n in result.notes)
    given = sweep(mlp, blobs(), mode="lr_independent", weight_decays=[0.0, 1e-4], seeds=1, epochs=1, progress=False,
                  storage="memory", plots=False)  # fmt: skip
    assert [r["weight_decay"] for r in given.results] == [0.0, 1e-4]  # a grid given is swept as given
