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

    from speechbrain_memristor.corpus.layout import CorpusError, make_corpus

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
        help="the whole study on synthesized speech: float vs QAT vs analog chips (~20 min)",
        description=(
            "Synthesize a TED-LIUM 2 style corpus, train a float and a QAT Conformer CTC with the "
            "TED-LIUM 2 recipe, evaluate test WER in digital, fake_quant and analog execution on "
            "several programmed chips, and write results.{md,csv,json} and a plot. A rerun "
            "resumes where the last one stopped."
        ),
    )
    parser.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument(
        "--weight-bits", type=int, default=3, help="QAT/chip weight bits (default: 3)"
    )
    parser.add_argument("--chips", type=int, default=5, help="analog chips to program (default: 5)")
    parser.add_argument(
        "--utterances", type=int, default=1000, help="corpus size, all splits (default: 1000)"
    )
    parser.add_argument("--float-epochs", type=int, default=25, help="float epochs (default: 25)")
    parser.add_argument("--qat-epochs", type=int, default=5, help="QAT epochs (default: 5)")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from speechbrain_memristor.corpus.layout import CorpusError
    from speechbrain_memristor.demo import DemoError, DemoSettings, markdown_table, run_demo

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = DemoSettings(
        out_dir=Path(args.out),
        utterances=args.utterances,
        weight_bits=args.weight_bits,
        chips=args.chips,
        float_epochs=args.float_epochs,
        qat_epochs=args.qat_epochs,
    )
    try:
        summary = run_demo(settings)
    except (CorpusError, DemoError) as error:
        print(f"{PROGRAM} demo: error: {error}", file=sys.stderr)
        return 1
    print()
    print(markdown_table(summary))
    print(
        f"Results: {settings.out_dir / 'results.md'} and {settings.out_dir / 'wer_by_execution.png'}"
    )
    return 0


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_make_corpus,
    _add_demo,
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
