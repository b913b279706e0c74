"""MNIST-1D tasks: offline data from the package's generator, the paper's models, the CNN trained stacked."""

from __future__ import annotations

import random

import mnist1d
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.test_sweep_batched import assert_same, assert_stacked_equals_members
from torch import nn

from decaykit import DecayError, sweep
from decaykit.sweeps.batched import stack_path
from decaykit.sweeps.tasks import TASK_NAMES, builtin_task
from decaykit.sweeps.tasks.mnist1d import mnist1d_cnn, mnist1d_data, mnist1d_mlp


def test_data_is_generated_offline_with_the_package_defaults(monkeypatch):
    import mnist1d.data as source

    def no_download(*args, **kwargs):
        raise AssertionError("get_dataset downloads; the task must generate the data")

    monkeypatch.setattr(source, "get_dataset", no_download)
    monkeypatch.setattr(mnist1d, "get_dataset", no_download)
    data = mnist1d_data()
    defaults = source.get_dataset_args()
    n_train = int(defaults.num_samples * defaults.train_split)
    assert data.x_train.shape == (n_train, defaults.final_seq_length)
    assert data.x_test.shape == (defaults.num_samples - n_train, defaults.final_seq_length)
    reference = source.make_dataset(defaults)
    assert torch.equal(data.x_train, torch.tensor(reference["x"], dtype=torch.float32))
    assert torch.equal(data.y_test, torch.tensor(reference["y_test"]))


def test_building_the_data_leaves_the_caller_s_random_state_alone():
    import numpy as np

    from decaykit.sweeps.tasks import mnist1d as task_module

    task_module._generated.cache_clear()
    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(7)
    mnist1d_data()
    assert (random.random(), np.random.rand()) == expected


def test_the_paper_s_models_and_both_tasks_are_registered():
    assert {"mnist1d-mlp", "mnist1d-cnn"} <= set(TASK_NAMES)
    assert sum(p.numel() for p in mnist1d_mlp().parameters()) == 15_210  # "15k parameters"
    assert sum(p.numel() for p in mnist1d_cnn().parameters()) == 5_210  # "5k parameters"
    task = builtin_task("mnist1d-cnn", train_size=50)
    assert (task.optimizer, task.lr, task.batch_size) == ("adam", 1e-2, 100)
    assert task.model_fn()(task.data_fn().x_train[:3]).shape == (3, 10)
    with pytest.raises(DecayError, match="train_size"):
        builtin_task("mnist1d-mlp", train_size=5).data_fn()


@settings(max_examples=40, deadline=None)
@given(
    channels=st.integers(1, 4),
    out=st.integers(1, 5),
    kernel=st.integers(1, 5),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    length=st.integers(5, 12),
    bias=st.booleans(),
    members=st.integers(1, 3),
)
def test_stacked_conv1d_equals_each_member_s_own_conv(channels, out, kernel, stride, padding, length, bias, members):
    """Outputs and every gradient of the stacked Conv1d path equal each member's nn.Conv1d, any geometry."""
    if length + 2 * padding < kernel:
        return
    torch.manual_seed(0)
    models = [
        nn.Sequential(nn.Conv1d(channels, out, kernel, stride=stride, padding=padding, bias=bias), nn.Tanh(), nn.Flatten())
        for _ in range(members)
    ]
    models = [m.double() for m in models]
    assert stack_path(models[0]) == "layers"
    assert_stacked_equals_members(models, torch.randn(members, 3, channels, length, dtype=torch.float64))


def test_convolutions_the_stacked_path_cannot_reproduce_go_through_vmap():
    for conv in (nn.Conv1d(2, 3, 3, dilation=2), nn.Conv1d(2, 4, 3, groups=2), nn.Conv1d(2, 3, 3, padding="same"),
                 nn.Conv1d(2, 3, 3, padding=1, padding_mode="circular")):  # fmt: skip
        assert stack_path(nn.Sequential(conv, nn.ReLU())) == "vmap"


def test_the_cnn_trained_stacked_equals_one_by_one():
    """The paper's CNN on a tiny slice of MNIST-1D: every metric and curve point agrees to 1e-4."""
    common = dict(task="mnist1d-cnn", task_options={"train_size": 60}, weight_decays=[0.0, 0.1], seeds=2, epochs=2,
                  batch_size=20, curve_points=2, progress=False, plots=False, storage="memory")  # fmt: skip
    stacked = sweep(batched=True, **common)
    alone = sweep(batched=False, **common)
    assert stacked.run["batched"] and stacked.run["path"] == "layers"
    assert not alone.run["batched"]
    assert_same(stacked, alone)
