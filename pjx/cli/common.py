"""Arguments and start-up shared by the subcommands that run a config."""

from __future__ import annotations


def add_config_argument(p):
    p.add_argument("--config", required=True, help="configs/NAME.py[:ARG]")


def add_distributed_arguments(p):
    """`--coordinator HOST:PORT --num-processes N --process-id I`: join a multi-process
    run (every process runs the same command). Unset: the PJX_* environment variables,
    else jax's cluster detection (TPU slice, SLURM, Open MPI), else a single host."""
    g = p.add_argument_group("several hosts (jax.distributed)")
    g.add_argument("--coordinator", help="HOST:PORT of process 0 (PJX_COORDINATOR)")
    g.add_argument("--num-processes", type=int, help="processes in the run (PJX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, help="this process, 0..N-1 (PJX_PROCESS_ID)")


def no_overrides(command: str, overrides):
    if overrides:
        raise ValueError(f"pjx {command} takes no --config overrides (got {overrides})")


def start_compute(args=None) -> None:
    """Before a command's first jax work: the persistent compilation cache
    (pjx.compile_cache; PJX_COMPILATION_CACHE=off turns it off), joining a multi-process
    run when asked (or detected), then, on a CPU backend, pjx.xla_cpu's bit-identical
    speed-ups (library users opt in with `pjx.compile_cache.enable()` and
    `pjx.xla_cpu.install()`)."""
    from pjx import compile_cache, distributed, xla_cpu

    compile_cache.enable()
    distributed.initialize(
        getattr(args, "coordinator", None),
        getattr(args, "num_processes", None),
        getattr(args, "process_id", None),
    )
    xla_cpu.install_if_cpu()
