"""``decaykit sweep``: show and find the weight decay that stops overfitting (a thin layer over decaykit.sweep)."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from decaykit._render import print_json
from decaykit.cli.common import add_policy_arguments, policy_options

if TYPE_CHECKING:
    from decaykit.sweeps.settings import Execution, Training, Trials
    from decaykit.sweeps.tasks import Task

__all__ = ["DESCRIPTION", "FORMATTER", "HELP", "add_arguments", "run", "settings_from_args", "task_from_args"]

DEFAULT_OUT = "decaykit-sweep"

HELP = "find the weight decay that stops overfitting (default: an offline demo, under a minute)"
FORMATTER = argparse.RawDescriptionHelpFormatter
DESCRIPTION = """\
Train a model for a grid of weight decays λ over several seeds and show where decay stops
overfitting: a table of train/test loss and accuracy, the generalisation gap and the weight norm
(mean ± std over seeds), the best λ against λ = 0 with an honest verdict, and PNG plots.

With no arguments it runs the built-in demo (under a minute on 2 CPU cores, offline): a 512-wide
MLP on scikit-learn's digits with 30% of the 500 training labels flipped, which it memorises at
λ = 0. --task ridge sweeps a linear teacher whose best λ is the noise variance σ².

Your own model and data: --model pkg.mod:factory --data pkg.mod:factory, where the data factory
returns (x_train, y_train, x_test, y_test) tensors (integer y: classification, float y: regression).

The trials of a sweep train together as one stacked model when the model allows it. Each
finished trial is stored (an Optuna journal file in --out, or --storage URL): run the same
command again after an interruption and only the missing trials train; start it on several
machines with one --storage and they share the work."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from decaykit.sweeps.settings import Execution, Trials
    from decaykit.sweeps.tasks import TASK_NAMES

    what = parser.add_argument_group("what to train")
    what.add_argument("--task", choices=sorted(TASK_NAMES), default=None,
                      help="a built-in task (default: digits-noisy-labels)")
    what.add_argument("--label-noise", type=float, default=None, metavar="P",
                      help="digits: share of training labels replaced by a wrong class (default 0.3; 0 = clean)")
    what.add_argument("--train-size", type=int, default=None, metavar="N",
                      help="training samples (digits: 500; ridge: d = 100)")
    what.add_argument("--data-seed", type=int, default=None, metavar="S",
                      help="built-in tasks: which random draw of the data (default 0)")
    what.add_argument("--model", metavar="SPEC", help="your model: 'package.module:factory' (a function or class)")
    what.add_argument("--data", metavar="SPEC",
                      help="your data: 'package.module:factory' returning (x_train, y_train, x_test, y_test)")
    grid = parser.add_argument_group("which λ")
    grid.add_argument("--weight-decays", "--wd", metavar="LIST",
                      help="comma-separated λ values, e.g. 0,0.01,0.1,1,10 (default: the task's grid)")
    grid.add_argument("--search", metavar="LOW:HIGH",
                      help="search a log range instead of a grid: rounds of log-spaced λ zooming in on the best")
    grid.add_argument("--rounds", type=int, default=None, help=f"search rounds (default {Trials.rounds})")
    grid.add_argument("--points", type=int, default=None, help=f"λ values per search round (default {Trials.points})")
    grid.add_argument("--seeds", type=int, default=None, metavar="N", help="seeds per λ (default: the task's)")
    training = parser.add_argument_group("how to train")
    training.add_argument("--optimizer", choices=["adamw", "adam", "sgd"], default=None)
    training.add_argument("--lr", type=float, default=None)
    training.add_argument("--momentum", type=float, default=None, help="SGD momentum")
    training.add_argument("--epochs", type=int, default=None)
    training.add_argument("--batch-size", type=int, default=None, help="0 = the whole training set at once")
    training.add_argument("--mode", default=None,
                          help="decay mode: lr_coupled (torch AdamW), lr_independent, corrected, cautious, coupled_l2")
    training.add_argument("--metric", default=None,
                          help="objective for the best λ (default test_accuracy; test_loss for regression)")
    add_policy_arguments(training, weight_decay=None)
    running = parser.add_argument_group("running")
    running.add_argument("--out", metavar="DIR", default=None,
                         help=f"folder for the plots and the store (default: {DEFAULT_OUT}/<task>)")
    running.add_argument("--storage", metavar="URL",
                         help="shared store: an Optuna URL (sqlite:///sweep.db, postgresql://...) or a journal file path")
    running.add_argument("--no-store", action="store_true", help="keep results in memory only (no resume)")
    running.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    how = running.add_mutually_exclusive_group()
    how.add_argument("--one-by-one", action="store_true", help="train one model at a time instead of stacked")
    how.add_argument("--stacked", action="store_true",
                     help="always stack (an error if the model cannot be); default: stack when the model allows it "
                          "and, for models outside the Linear-chain fast path, when a timing trial says it is faster")
    running.add_argument("--chunk-size", type=int, default=None, metavar="K",
                         help=f"trials trained together as one stacked model (default {Execution.chunk_size})")
    running.add_argument("--no-wait", action="store_true",
                         help="report as soon as this worker has nothing left, without waiting for other workers")
    running.add_argument("--json", action="store_true", help='print one JSON object {"results": [...], "best": {...}, ...}')
    running.add_argument("--quiet", "-q", action="store_true", help="no progress output (for logs)")


def run(args: argparse.Namespace) -> int:
    from decaykit.sweeps import run_sweep

    trials, training, execution = settings_from_args(args)
    result = run_sweep(task_from_args(args), trials, training, execution)
    if args.json:
        print_json(result.to_dict())
    else:
        print(result)
    return 0


def settings_from_args(args: argparse.Namespace) -> tuple[Trials, Training, Execution]:
    """The sweep's settings values from the parsed flags, the same values ``decaykit.sweep`` builds.

    A flag whose name is a field's (``--lr``, ``--chunk-size``) fills that field (``from_options``);
    the flags that differ from their field are translated here.
    """
    from decaykit.sweeps.grid import parse_range, parse_weight_decays
    from decaykit.sweeps.settings import Execution, Training, Trials

    options = vars(args)
    trials = Trials.from_options(
        options,
        weight_decays=parse_weight_decays(args.weight_decays) if args.weight_decays else None,
        search=parse_range(args.search) if args.search else None,
    )
    training = Training.from_options(options, policy=policy_options(args))
    execution = Execution.from_options(
        options,
        batched=False if args.one_by_one else (True if args.stacked else "auto"),
        storage="memory" if args.no_store else args.storage,
        out=args.out or os.path.join(DEFAULT_OUT, _task_name(args)),
        plots=not args.no_plots,
        wait=not args.no_wait,
        progress="off" if args.quiet else "auto",
    )
    return trials, training, execution


def task_from_args(args: argparse.Namespace) -> Task:
    """The built-in task with its options, or the task around ``--model`` and ``--data``."""
    from decaykit.sweeps.tasks import resolve_task

    options = {"train_size": args.train_size, "data_seed": args.data_seed, "label_noise": args.label_noise}
    return resolve_task(args.model, args.data, args.task, {k: v for k, v in options.items() if v is not None} or None)


def _task_name(args: argparse.Namespace) -> str:
    from decaykit.sweeps.tasks import DEFAULT_TASK

    if args.model is None and args.data is None:
        return args.task or DEFAULT_TASK
    return args.task or "custom"
