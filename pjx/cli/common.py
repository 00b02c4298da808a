"""Arguments and start-up shared by the subcommands that run a config."""

from __future__ import annotations


def add_config_argument(p):
    p.add_argument("--config", required=True, help="configs/NAME.py[:ARG]")


def no_overrides(command: str, overrides):
    if overrides:
        raise ValueError(f"pjx {command} takes no --config overrides (got {overrides})")


def start_compute() -> None:
    """Process-wide settings for a command that runs steps: on a CPU backend, pjx.xla_cpu's
    bit-identical speed-ups (library users opt in with `pjx.xla_cpu.install()`)."""
    from pjx import xla_cpu

    xla_cpu.install_if_cpu()
