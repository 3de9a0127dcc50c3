"""Command line: ``speechbrain-memristor <subcommand> ...``.

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its arguments and
sets ``handler`` to a ``_run_<name>(args) -> int`` function; list the adder in ``SUBCOMMANDS``.
Handlers import what they need inside, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

PROGRAM = "speechbrain-memristor"


def _add_make_corpus(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-corpus",
        help="synthesize a small TED-LIUM 2 style corpus (needs the 'demo' extra)",
        description=(
            "Synthesize a deterministic spoken-English corpus in the TED-LIUM release 2 layout "
            "(OUT_DIR/TEDLIUM_release2/{train,dev,test}/{sph,stm}) with eSpeak NG voices. "
            "Same arguments, same bytes; a complete corpus already in OUT_DIR is kept."
        ),
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to create TEDLIUM_release2 in")
    parser.add_argument(
        "--utterances",
        type=int,
        default=1000,
        help="transcribed segments over all splits: 10%% dev, 10%% test, rest train (default: 1000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--jobs", type=int, default=None, help="synthesis processes at once (default: all CPUs)"
    )
    parser.set_defaults(handler=_run_make_corpus)


def _run_make_corpus(args: argparse.Namespace) -> int:
    import logging

    from speechbrain_memristor.app.corpus.layout import CorpusError, make_corpus

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        release = make_corpus(
            args.out_dir, utterances=args.utterances, seed=args.seed, jobs=args.jobs
        )
    except CorpusError as error:
        print(f"{PROGRAM} make-corpus: error: {error}", file=sys.stderr)
        return 1
    print(release)
    return 0


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole study on synthesized speech: float vs QAT vs hardware-aware training, "
        "evaluated on analog chips",
        description=(
            "Synthesize a TED-LIUM 2 style corpus, train a float and a QAT Conformer CTC with the "
            "TED-LIUM 2 recipe, fine-tune the QAT model with each hardware-aware training method, "
            "evaluate dev and test WER in digital, fake_quant and analog execution on several "
            "programmed chips, and write results.{md,csv,json} and a plot. A rerun resumes where "
            "the last one stopped."
        ),
    )
    from speechbrain_memristor.app.demo import DemoSettings

    defaults = DemoSettings()
    parser.add_argument(
        "--out", default=str(defaults.out_dir), help=f"output folder (default: {defaults.out_dir})"
    )
    for option, value, meaning in (
        ("--weight-bits", defaults.weight_bits, "QAT/chip weight bits"),
        ("--chips", defaults.chips, "analog chips to program"),
        ("--utterances", defaults.utterances, "corpus size, all splits"),
        ("--float-epochs", defaults.float_epochs, "float baseline epochs"),
        ("--qat-epochs", defaults.qat_epochs, "QAT fine-tuning epochs"),
        ("--hardware-aware-epochs", defaults.hardware_aware_epochs, "epochs per method"),
    ):
        parser.add_argument(option, type=int, default=value, help=f"{meaning} (default: {value})")
    methods = ",".join(defaults.hardware_aware) or "none"
    parser.add_argument(
        "--hardware-aware",
        default=methods,
        help="hardware-aware fine-tuning stages after QAT, comma-separated "
        f"(chip_in_the_loop, noise_injection; none: no stage; default: {methods})",
    )
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from speechbrain_memristor.app.corpus.layout import CorpusError
    from speechbrain_memristor.app.demo import DemoError, DemoSettings, markdown_table, run_demo

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        settings = DemoSettings(
            out_dir=Path(args.out),
            utterances=args.utterances,
            weight_bits=args.weight_bits,
            chips=args.chips,
            float_epochs=args.float_epochs,
            qat_epochs=args.qat_epochs,
            hardware_aware=tuple(
                method for method in args.hardware_aware.split(",") if method not in ("", "none")
            ),
            hardware_aware_epochs=args.hardware_aware_epochs,
        )
        summary = run_demo(settings)
    except (CorpusError, DemoError) as error:
        print(f"{PROGRAM} demo: error: {error}", file=sys.stderr)
        return 1
    print()
    print(markdown_table(summary))
    print(
        f"Results: {settings.out_dir / 'results.md'} and {settings.out_dir / 'wer_by_execution.png'}"
    )
    print(f"Hardware report of the QAT model: {summary['hardware_report']}")
    return 0


def _key_value(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def _add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by report and sweep: hparams file, trained run, overrides, split."""
    parser.add_argument("hparams", metavar="HPARAMS", help="the recipe's hparams YAML file")
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        type=_key_value,
        action="append",
        default=[],
        help="hparams override the run was trained with (YAML value), repeatable",
    )
    parser.add_argument("--split", default="test", choices=("dev", "test"), help="default: test")


def _overrides(pairs: list[tuple[str, str]]) -> dict[str, object]:
    import yaml

    return {key: yaml.safe_load(value) for key, value in pairs}


def _add_report(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="hardware inventory, first-order energy/latency and per-layer analog error",
        description=(
            "Load a trained recipe run (its best checkpoint), and write hardware_report."
            "{md,csv,json}: per mapped layer the weights, bit planes, tiles, cells (LRS/HRS), "
            "tile utilization, DAC/ADC conversions and cell reads per frame, first-order energy "
            "and latency per frame, and the relative RMS error of the analog output against "
            "the fake_quant output on a few utterances of the split."
        ),
    )
    _add_recipe_arguments(parser)
    parser.add_argument("--run", required=True, help="the trained run's output folder")
    parser.add_argument(
        "--utterances",
        type=int,
        default=4,
        help=(
            "utterances of the split for the per-layer error and the measured cell-read "
            "energy (0: skip, energy bound at full scale; default: 4)"
        ),
    )
    parser.add_argument(
        "--train-script",
        default=None,
        help="the recipe's train.py (default: the bundled TED-LIUM 2 recipe's)",
    )
    parser.add_argument("--out", default=None, help="output folder (default: the run folder)")
    parser.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    import logging

    from speechbrain_memristor.studies.report import report_trained_run
    from speechbrain_memristor.studies.runs import RunError, bundled_recipe

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        train_script = args.train_script or str(bundled_recipe() / "train.py")
        report, paths = report_trained_run(
            args.hparams,
            args.run,
            _overrides(args.overrides),
            train_script,
            split=args.split,
            utterances=args.utterances,
            out=args.out,
        )
    except (OSError, RunError) as error:
        print(f"{PROGRAM} report: error: {error}", file=sys.stderr)
        return 1
    print(report.markdown())
    print(f"Report: {paths['md']}")
    return 0


def _add_sweep(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="evaluate trained runs on a grid of hardware settings (no retraining)",
        description=(
            "Evaluate trained recipe runs in analog execution at every point of a grid of "
            "hardware settings (test-only recipe runs, one folder per point under OUT/points), "
            "resuming after an interruption, then write OUT/sweep.{csv,json,md} and plots. "
            "Under torchrun the ranks share the points and rank 0 writes the results. "
            "Grid axes: adc (P/R pairs or ideal), adc_precision_bits, adc_range_bits, dac_bits, "
            "dac_grid, tile_size, read_noise, device_params, initial_cycles, "
            "initial_cycle_mode, write_verify, verify_max_attempts, verify_lrs_max_ohms, "
            "verify_hrs_min_ohms, stuck_lrs_rate, stuck_hrs_rate, wire_resistance, "
            "wire_solver, dac_mode, programming_device, output_bits, attention_bits, num_chips, "
            "hardware_seed, weight_bits (picks among the given runs; see "
            "speechbrain_memristor.studies.sweep)."
        ),
    )
    _add_recipe_arguments(parser)
    parser.add_argument(
        "--run",
        dest="runs",
        action="append",
        required=True,
        help="a trained run's output folder (repeat for runs of other weight bits)",
    )
    parser.add_argument(
        "--grid",
        metavar="AXIS=V1,V2",
        type=_key_value,
        action="append",
        default=[],
        help="grid axis values, e.g. adc=8/10,4/4,2/2 or dac_bits=6,8 (repeatable)",
    )
    parser.add_argument("--grid-file", default=None, help="YAML file of axis: [values]")
    parser.add_argument("--float-run", default=None, help="float baseline run (for the plots)")
    parser.add_argument("--out", default="sweep", help="sweep folder (default: sweep)")
    parser.add_argument(
        "--train-script",
        default=None,
        help="the recipe's train.py (default: the bundled TED-LIUM 2 recipe's)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help=(
            "grid points evaluated at once, each a recipe process (default: one per CUDA GPU, "
            "each point on its worker's GPU; 1 without GPUs; under torchrun: per rank, "
            "default 1, on the rank's GPU cuda:LOCAL_RANK)"
        ),
    )
    parser.set_defaults(handler=_run_sweep)


def _sweep_workers(workers: int | None) -> dict:
    """``Sweep.run`` arguments: ``workers`` (default: the CUDA GPUs, else 1) and, with GPUs,
    one device per worker slot; under torchrun 1 per rank (default), on the rank's GPU."""
    import torch

    from speechbrain_memristor.studies.sweep import SweepRanks

    if SweepRanks.from_environment() is not None:
        return {"workers": workers or 1, "devices": None}
    gpus = torch.cuda.device_count()
    devices = [f"cuda:{index}" for index in range(gpus)] or None
    return {"workers": workers or max(gpus, 1), "devices": devices}


def _run_sweep(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from speechbrain_memristor.studies.runs import RunError, TrainedRun, bundled_recipe
    from speechbrain_memristor.studies.sweep import Sweep, SweepError, load_grid_file, parse_grid

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        train_script = args.train_script or str(bundled_recipe() / "train.py")
        grid = load_grid_file(args.grid_file) if args.grid_file else {}
        grid.update(dict(args.grid))
        sweep = Sweep(
            hparams=Path(args.hparams),
            runs=[TrainedRun.load(run) for run in args.runs],
            grid=parse_grid(grid),
            out_dir=Path(args.out),
            split=args.split,
            overrides=_overrides(args.overrides),
            float_run=Path(args.float_run) if args.float_run else None,
            train_script=Path(train_script),
        )
        results = sweep.run(**_sweep_workers(args.workers))
    except (OSError, RunError, SweepError) as error:
        print(f"{PROGRAM} sweep: error: {error}", file=sys.stderr)
        return 1
    if results is None:  # a torchrun rank other than 0: rank 0 writes and shows the results
        return 0
    print((Path(args.out) / "sweep.md").read_text(encoding="utf-8"))
    for plot in results["plots"]:
        print(f"Plot: {plot}")
    return 0


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_make_corpus,
    _add_demo,
    _add_report,
    _add_sweep,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Run SpeechBrain models on simulated memristor (ReRAM) crossbars.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` (default: ``sys.argv[1:]``) and runs the subcommand; returns its exit code."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
