"""The `pjx` command: `pjx train`, `pjx bench`, ... (argparse subcommands).

Subcommands live in the plain dict `COMMANDS`: name -> (add_arguments, run). Other
modules add theirs there (`tokenizer`, `convert`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from pjx import config as config_lib


def _config_args(p: argparse.ArgumentParser):
    p.add_argument("--config", required=True, help="configs/NAME.py[:ARG]")


def _split(argv):
    """Separates `--config.a.b=value` overrides (argparse cannot declare them)."""
    overrides, rest = [], []
    for a in argv:
        (overrides if a.startswith("--config.") else rest).append(a)
    return overrides, rest


def _train_args(p):
    _config_args(p)
    p.add_argument("--workdir", required=True, help="run folder: metrics.jsonl, checkpoints/")


def _train(args, overrides) -> int:
    from pjx import train

    cfg = config_lib.load(args.config)
    for key in overrides:  # fail fast on unknown keys, before any model is built
        config_lib.apply_overrides(cfg, [key])
    try:
        train.run(cfg, args.workdir, overrides)
    except train.NonFiniteLossError as e:
        print(f"pjx: {e}", file=sys.stderr)
        return 1
    except train.Preempted as e:  # a clean, resumable stop: exit 0 like a finished run
        print(f"pjx: {e}", file=sys.stderr)
    return 0


def _bench_args(p):
    _config_args(p)
    p.add_argument("--steps", type=int, default=10, help="timed steps after compilation")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--data-only", action="store_true", help="time the input pipeline only")


def _bench(args, overrides) -> int:
    from pjx import bench

    return bench.main(args, overrides)


def _delegated(module: str):
    """(add_arguments, run) of a subcommand whose module defines `add_cli_arguments` and
    `cli_main`; imported only when that subcommand runs, keeping `pjx train` start-up lean."""

    def add(p):
        importlib.import_module(module).add_cli_arguments(p)

    def run(args, overrides) -> int:
        return importlib.import_module(module).cli_main(args, overrides)

    return add, run


COMMANDS = {
    "train": (_train_args, _train, "train / fine-tune from a config file"),
    "bench": (_bench_args, _bench, "time train steps; last line is a JSON object"),
    "tokenizer": (*_delegated("pjx.tokenizers"), "train / inspect a tokenizer"),
    "convert": (*_delegated("pjx.hf"), "convert Hugging Face <-> pjx checkpoints"),
    "generate": (*_delegated("pjx.inference"), "sample text from a trained GPT-2 workdir"),
}


def main(argv=None) -> int:
    overrides, rest = _split(sys.argv[1:] if argv is None else list(argv))
    parser = argparse.ArgumentParser(prog="pjx", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add, _, help_) in COMMANDS.items():
        add(sub.add_parser(name, help=help_))
    args = parser.parse_args(rest)
    try:
        return COMMANDS[args.command][1](args, overrides) or 0
    except (ValueError, FileNotFoundError) as e:  # bad input: a message, not a traceback
        if os.environ.get("PJX_DEBUG"):
            raise
        print(f"pjx: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
