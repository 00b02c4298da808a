"""The `pjx` command: `pjx train`, `pjx bench`, `pjx config`, `pjx convert`, ...

Each subcommand is a module of this package with `add_arguments(parser)` and
`main(args, overrides) -> exit code`, listed in `COMMANDS`. Modules import the library
inside `main`, so `pjx --help` and each command load only what they use. Bad input
(ValueError, FileNotFoundError, FileExistsError) is one line on stderr and exit code 2;
PJX_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module of pjx.cli, help)
COMMANDS = {
    "train": ("train", "train / fine-tune from a config file"),
    "config": ("show_config", "print every key of a config, after overrides"),
    "bench": ("bench", "time train steps (or the input pipeline); last line is JSON"),
    "privacy": ("privacy", "a DP-SGD config's epsilon, sigma or steps, without training"),
    "audit": ("audit", "an empirical lower bound on a DP-SGD config's epsilon; last line JSON"),
    "tokenizer": ("tokenizer", "train / inspect a tokenizer"),
    "convert": ("convert", "convert Hugging Face <-> pjx checkpoints"),
    "eval": ("eval", "score a trained model on a data source; last line is JSON"),
    "predict": ("predict", "write a trained model's predictions, one JSON line per example"),
    "generate": ("generate", "sample text from a trained decoder (GPT-2, Llama family) workdir"),
    "plot": ("plot", "overlay the train / eval curves of runs into an image"),
    "explain": ("explain", "token attributions of a BERT classifier (integrated gradients)"),
    "glue": ("glue", "fine-tune a checkpoint on the GLUE tasks over seeds: table, JSON, chart"),
    "data": ("data", "prepare a corpus once: tokenized, packed ArrayRecord shards"),
}


def split_overrides(argv):
    """Separates `--config.a.b=value` overrides (argparse cannot declare them)."""
    overrides, rest = [], []
    for a in argv:
        (overrides if a.startswith("--config.") else rest).append(a)
    return overrides, rest


def main(argv=None) -> int:
    overrides, rest = split_overrides(sys.argv[1:] if argv is None else list(argv))
    parser = argparse.ArgumentParser(prog="pjx", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module, help_) in COMMANDS.items():
        modules[name] = importlib.import_module(f"pjx.cli.{module}")
        modules[name].add_arguments(sub.add_parser(name, help=help_, description=help_))
    args = parser.parse_args(rest)
    from pjx import logs

    logs.setup()
    try:
        return modules[args.command].main(args, overrides) or 0
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        if os.environ.get("PJX_DEBUG"):
            raise
        print(f"pjx {args.command}: error: {e}", file=sys.stderr)
        return _exit(2)
    except Exception as e:
        return _exit(1, e)


def _exit(code: int, error: BaseException | None = None) -> int:
    """A multi-process run ends a failed process at once, naming a lost peer if that is why
    (its normal shutdown would wait for every process); one process returns the code or
    raises."""
    import jax

    from pjx import distributed

    if jax.distributed.is_initialized() and jax.process_count() > 1:
        distributed.fail(error or SystemExit(code))
    if error is not None:
        raise error
    return code
