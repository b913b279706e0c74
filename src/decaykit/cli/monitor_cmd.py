"""``decaykit monitor RUN.jsonl``: the findings and a per-group table of a monitored run, and its plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from decaykit._render import print_json

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "report on a run recorded by decaykit.Monitor(sink='RUN.jsonl'): findings, a table per group, plots"
DESCRIPTION = ("Read the JSON lines file a decaykit.Monitor wrote during training, print its findings (decayed "
               "norms or biases, decay dominating the update, a timescale longer than the run, norms far from "
               "their equilibrium, non-finite values) and one row per param group at its last recorded step, and "
               "write PNG plots: the norm against its predicted equilibrium, the angular update against its "
               "prediction, and the decay-to-update ratio over steps. Exit status 1 when there are findings.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_file", metavar="RUN", help="the .jsonl file written by Monitor(sink='RUN.jsonl')")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for the PNG plots (default: RUN's name without .jsonl, plus '-plots')")
    parser.add_argument("--no-plots", action="store_true", help="print the report only")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")


def run(args: argparse.Namespace) -> int:
    from decaykit.cli.common import no_effect
    from decaykit.monitor.report import read_run

    if args.no_plots and args.out is not None:
        raise no_effect("--out", "with --no-plots (no plots are written)", "drop one of them")
    report = read_run(args.run_file)
    written: list[str] = []
    if not args.no_plots and report.records:
        from decaykit.monitor.plots import write_plots

        source = Path(args.run_file)
        out = args.out if args.out is not None else source.with_name(source.stem + "-plots")
        written = [str(p) for p in write_plots(report.records, out)]
    if args.json:
        print_json({**report.to_dict(), "plots": written})
    else:
        print(report)
        if written:
            print("plots: " + ", ".join(written))
    return 0 if report.ok else 1
