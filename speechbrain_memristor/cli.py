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


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_make_corpus,)


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
