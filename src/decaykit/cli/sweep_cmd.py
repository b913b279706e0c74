"""``decaykit sweep``: show and find the weight decay that stops overfitting (a thin layer over decaykit.sweep)."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

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


def _task_defaults(name: str) -> str:
    """``default: the task's (digits-noisy-labels 200, ridge 2000, your model 100)``, read from the tasks."""
    from dataclasses import fields

    from decaykit.sweeps.tasks import BUILTIN_TASKS, Task

    def text(value: object) -> str:
        return "full batch" if name == "batch_size" and not value else f"{value}".replace("torch.", "")

    own = next(f.default for f in fields(Task) if f.name == name)
    each = [f"{task} {text(getattr(factory(), name))}" for task, factory in BUILTIN_TASKS.items()]
    return f"default: the task's ({', '.join(each)}, your model {text(own)})"


def _option_default(task: str, option: str) -> object:
    import inspect

    from decaykit.sweeps.tasks import BUILTIN_TASKS

    return inspect.signature(BUILTIN_TASKS[task]).parameters[option].default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from decaykit.sweeps.settings import Execution, Trials
    from decaykit.sweeps.tasks import DEFAULT_TASK, TASK_NAMES

    what = parser.add_argument_group("what to train")
    what.add_argument("--task", choices=sorted(TASK_NAMES), default=None,
                      help=f"a built-in task (default: {DEFAULT_TASK})")
    what.add_argument("--label-noise", type=float, default=None, metavar="P",
                      help="digits: share of training labels replaced by a wrong class "
                           f"(default {_option_default(DEFAULT_TASK, 'label_noise')}; 0 = clean)")
    what.add_argument("--train-size", type=int, default=None, metavar="N",
                      help=f"training samples (default: digits {_option_default(DEFAULT_TASK, 'train_size')}; "
                           "ridge d, the input dimension)")
    what.add_argument("--data-seed", type=int, default=None, metavar="S",
                      help=f"built-in tasks: which random draw of the data (default {_option_default('ridge', 'data_seed')})")
    what.add_argument("--model", metavar="SPEC",
                      help="your model: 'package.module:factory' (a function or class; default: none, the built-in task)")
    what.add_argument("--data", metavar="SPEC",
                      help="your data: 'package.module:factory' returning (x_train, y_train, x_test, y_test) "
                           "(default: none, the built-in task)")
    grid = parser.add_argument_group("which λ")
    grid.add_argument("--weight-decays", "--wd", metavar="LIST", action=_NamedAs,
                      help="comma-separated λ values, e.g. 0,0.01,0.1,1,10 (default: the task's grid)")
    grid.add_argument("--search", metavar="LOW:HIGH",
                      help="search a log range instead of a grid: rounds of log-spaced λ zooming in on the best "
                           "(default: none, the grid)")
    grid.add_argument("--rounds", type=int, default=None, help=f"search rounds (default {Trials.rounds})")
    grid.add_argument("--points", type=int, default=None, help=f"λ values per search round (default {Trials.points})")
    grid.add_argument("--seeds", type=int, default=None, metavar="N", help=f"seeds per λ ({_task_defaults('seeds')})")
    training = parser.add_argument_group("how to train")
    training.add_argument("--optimizer", choices=["adamw", "adam", "sgd"], default=None,
                          help=f"the inner optimizer ({_task_defaults('optimizer')})")
    training.add_argument("--lr", type=float, default=None, help=f"learning rate ({_task_defaults('lr')})")
    training.add_argument("--momentum", type=float, default=None,
                          help=f"SGD momentum, with --optimizer sgd only ({_task_defaults('momentum')})")
    training.add_argument("--epochs", type=int, default=None, help=f"passes over the training set ({_task_defaults('epochs')})")
    training.add_argument("--batch-size", type=int, default=None,
                          help=f"samples per step, 0 = the whole training set at once ({_task_defaults('batch_size')})")
    training.add_argument("--mode", default=None,
                          help="decay mode: lr_coupled (torch AdamW), lr_independent, corrected, cautious, coupled_l2 "
                               f"({_task_defaults('mode')})")
    training.add_argument("--metric", default=None,
                          help="objective for the best λ (default test_accuracy; test_loss for regression)")
    training.add_argument("--device", default=None,
                          help="where the models train: cpu, cuda, cuda:1, ... (default cpu)")
    add_policy_arguments(training, weight_decay=None)
    running = parser.add_argument_group("running")
    running.add_argument("--out", metavar="DIR", default=None,
                         help=f"folder for the plots and the store (default: {DEFAULT_OUT}/<task>)")
    running.add_argument("--storage", metavar="URL",
                         help="shared store: an Optuna URL (sqlite:///sweep.db, postgresql://...) or a journal file path "
                              "(default: a journal file in --out)")
    running.add_argument("--no-store", action="store_true", help="keep results in memory only (no resume)")
    running.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    how = running.add_mutually_exclusive_group()
    how.add_argument("--one-by-one", action="store_true", help="train one model at a time instead of stacked")
    how.add_argument("--stacked", action="store_true",
                     help="always stack (an error if the model cannot be); default: stack when the model allows it "
                          "and, for models outside the Linear-chain fast path, when a timing trial says it is faster")
    running.add_argument("--chunk-size", type=int, default=None, metavar="K",
                         help=f"trials trained together as one stacked model (default {Execution.chunk_size})")
    running.add_argument("--threads", type=int, default=None, metavar="N",
                         help="CPU threads to train with (default: 1 for small steps, else the faster of 1 and "
                              "torch's default, timed on the sweep's own step)")
    running.add_argument("--stale-after", type=float, default=None, metavar="SECONDS",
                         help="take over a trial claimed by a worker on another machine after this long without "
                              f"its heartbeat (default {Execution.stale_after:g})")
    running.add_argument("--heartbeat-every", type=float, default=None, metavar="SECONDS",
                         help=f"how often this worker marks its claims alive (default {Execution.heartbeat_every:g})")
    running.add_argument("--no-wait", action="store_true",
                         help="report as soon as this worker has nothing left, without waiting for other workers")
    running.add_argument("--json", action="store_true", help='print one JSON object {"results": [...], "best": {...}, ...}')
    running.add_argument("--quiet", "-q", action="store_true", help="no progress output (for logs)")


class _NamedAs(argparse.Action):
    """Store the value, and which of the flag's names the user typed (``<dest>_flag``), for the error to name it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_flag", option_string)


# Python arguments whose flag has another name; the others are named by their flags already
_FLAG_OF = {"storage": "--storage", "weight_decays": "--wd", "search": "--search", "policy": "--policy",
            "model": "--model", "data": "--data", "metric": "--metric"}  # fmt: skip


def _typed(args: argparse.Namespace, dest: str) -> str | None:
    """The name of ``dest``'s flag the user typed (``--weight-decays`` or ``--wd``), else its flag's name."""
    return getattr(args, f"{dest}_flag", None) or _FLAG_OF.get(dest)


def run(args: argparse.Namespace) -> int:
    from decaykit.errors import DecayError
    from decaykit.sweeps import run_sweep

    try:
        trials, training, execution = settings_from_args(args)
        result = run_sweep(task_from_args(args), trials, training, execution)
    except DecayError as exc:  # an error naming a Python argument names its flag here, once
        flag = _typed(args, exc.argument or "")
        if flag is None:
            raise
        raise type(exc)(str(exc), argument=flag) from exc.__cause__
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

    _check_combinations(args)
    options = vars(args)
    trials = Trials.from_options(
        options,
        weight_decays=None if args.weight_decays is None else parse_weight_decays(args.weight_decays,
                                                                                   flag=_typed(args, "weight_decays")),
        search=None if args.search is None else parse_range(args.search),
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


def _check_combinations(args: argparse.Namespace) -> None:
    """Flags that would do nothing together are refused, so none is silently ignored."""
    from decaykit.errors import DecayError
    from decaykit.sweeps.store import masked_url

    pairs = [
        (args.no_store and args.storage is not None, f"--storage {masked_url(args.storage or '')} has no effect with --no-store "
         "(results stay in memory); drop one of them"),
        (args.search is None and args.rounds is not None, "--rounds applies to --search only; add --search LOW:HIGH "
         "or drop --rounds"),
        (args.search is None and args.points is not None, "--points applies to --search only; add --search LOW:HIGH "
         "or drop --points"),
        (args.search is not None and args.weight_decays is not None, "--wd has no effect with --search (the search "
         "picks its own λ); drop one of them"),
        (args.one_by_one and args.chunk_size is not None, "--chunk-size has no effect with --one-by-one (nothing is "
         "stacked); drop one of them"),
        (args.no_store and args.no_wait, "--no-wait has no effect with --no-store (no other worker can share an "
         "in-memory store); drop --no-wait"),
    ]  # fmt: skip
    for clash, message in pairs:
        if clash:
            raise DecayError(message)
    _check_task_flags(args)


# the built-in tasks' options the command line sets, by the flag that sets each
_TASK_FLAGS = {"train_size": "--train-size", "data_seed": "--data-seed", "label_noise": "--label-noise"}


def _check_task_flags(args: argparse.Namespace) -> None:
    """--model and --data go together; a task option applies to a built-in task that takes it. Each refusal
    names the flag typed, not the Python keyword behind it."""
    import inspect

    from decaykit.errors import DecayError
    from decaykit.sweeps.tasks import BUILTIN_TASKS, DEFAULT_TASK

    if (args.model is None) != (args.data is None):
        given, missing = ("--model", "--data") if args.data is None else ("--data", "--model")
        raise DecayError(f"{given} needs {missing}: a sweep of your own model takes both (--model pkg.mod:build "
                         "--data pkg.mod:load), or neither for a built-in --task", argument=missing)  # fmt: skip
    given = [flag for key, flag in _TASK_FLAGS.items() if getattr(args, key) is not None]
    if not given:
        return
    if args.model is not None:
        raise DecayError(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} an option of a built-in task, and "
                         "has no effect on your own --model and --data; drop it", argument=given[0])  # fmt: skip
    name = args.task or DEFAULT_TASK
    factory = BUILTIN_TASKS.get(name)
    if factory is None:
        return  # the unknown task name is refused by the task lookup, naming --task
    takes = inspect.signature(factory).parameters
    unused = [flag for key, flag in _TASK_FLAGS.items() if getattr(args, key) is not None and key not in takes]
    if unused:
        own = [flag for key, flag in _TASK_FLAGS.items() if key in takes]
        raise DecayError(f"{', '.join(unused)} has no effect with --task {name} (it takes {', '.join(own) or 'none'}); "
                         "drop it", argument=unused[0])  # fmt: skip


def task_from_args(args: argparse.Namespace) -> Task:
    """The built-in task with its options, or the task around ``--model`` and ``--data``."""
    from decaykit.sweeps.tasks import resolve_task

    options = {key: getattr(args, key) for key in _TASK_FLAGS if getattr(args, key) is not None}
    return resolve_task(args.model, args.data, args.task, options or None)


def _task_name(args: argparse.Namespace) -> str:
    from decaykit.sweeps.tasks import DEFAULT_TASK

    if args.model is None and args.data is None:
        return args.task or DEFAULT_TASK
    return args.task or "custom"
