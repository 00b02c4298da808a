"""What a run records: metrics.jsonl, TensorBoard event files, progress lines, and with
`config.wandb.project` set a Weights & Biases run.

metrics.jsonl holds one JSON object per event, `{"step", "split", "loss", ...}`. The
wall-clock fields (`TIMING_KEYS`) vary between runs; everything else is a deterministic
function of (config, seed, machine). Only process 0 writes; progress goes to the "pjx"
logger (pjx.logs). The W&B run (wandb, an optional extra) gets the run's name, its resolved
config and every metrics line; its id is kept in WORKDIR/wandb_id, so a resumed run
continues the same W&B run.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import time

import jax

# Wall-clock fields of metrics.jsonl: they differ between identical runs.
TIMING_KEYS = ("tokens_per_s", "examples_per_s", "step_s", "data_wait_s", "elapsed_s", "eta_s",
               "model_tflops_per_s", "mfu")  # fmt: skip

log = logging.getLogger(__name__)


def _import_summary_writer():
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch
    whenever it is installed (to accept torch tensors, which pjx never logs), and that import
    alone took 2.2 s of a 2-core machine's start-up. Only for a real run (protobuf is heavy
    too). A process that imported torch itself keeps it; torch stays importable after."""
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


# config.wandb: project "" = no W&B run; entity / name / mode "" = W&B's defaults (the run's
# name: the workdir's; mode: WANDB_MODE, else online).
WANDB_DEFAULTS = {"project": "", "entity": "", "name": "", "mode": ""}
WANDB_ID = "wandb_id"  # WORKDIR/wandb_id: the W&B run a resumed run continues


def _start_wandb(workdir, settings, run_config):
    """A W&B run for `workdir`: the one WORKDIR/wandb_id names, else a new one."""
    try:
        import wandb
    except ImportError:
        raise ImportError(
            f"config.wandb.project={settings['project']!r} needs wandb: "
            "pip install 'pjx[wandb]' (or pip install wandb), or leave wandb.project empty"
        ) from None
    id_file = os.path.join(workdir, WANDB_ID)
    if os.path.exists(id_file):
        with open(id_file) as f:
            run_id = f.read().strip()
    else:
        run_id = secrets.token_hex(6)  # W&B run ids: [a-z0-9], unique per project
        with open(id_file, "w") as f:
            f.write(run_id + "\n")
    run = wandb.init(
        project=settings["project"],
        entity=settings.get("entity") or None,
        name=settings.get("name") or os.path.basename(os.path.abspath(workdir)),
        mode=settings.get("mode") or None,
        id=run_id,
        resume="allow",
        config=run_config,
        dir=workdir,  # WORKDIR/wandb/: the run's files (offline runs: `wandb sync` them)
    )
    # Charts against pjx's step: a resumed run may log a step again (the lines past its
    # last checkpoint), which W&B's own monotonic step would drop.
    run.define_metric("step")
    run.define_metric("*", step_metric="step")
    return run


class MetricsLog:
    """metrics.jsonl + TensorBoard + progress lines for one run (process 0 writes)."""

    def __init__(
        self,
        workdir,
        *,
        total_steps,
        resume_step=0,
        progress=True,
        annotate=None,
        wandb=None,
        run_config=None,
    ):
        # annotate(step) -> fields every line carries (DP-SGD: the epsilon spent so far).
        # wandb: the config's `wandb` block (WANDB_DEFAULTS); run_config: the resolved config.
        self.annotate = annotate or (lambda step: {})
        self.active = jax.process_index() == 0
        self.total, self.progress = int(total_steps), progress
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.t_start = self.t_last = time.perf_counter()
        self.steps_timed, self.last_step = 0, resume_step
        self.tb = self.wandb = None
        if not self.active:
            return
        if os.path.exists(self.path):  # resumed: drop lines past the restored step
            with open(self.path) as f:
                keep = [ln for ln in f if ln.strip() and json.loads(ln)["step"] <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(keep)
        SummaryWriter = _import_summary_writer()
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step)
        settings = {**WANDB_DEFAULTS, **dict(wandb or {})}
        if settings["project"]:
            self.wandb = _start_wandb(workdir, settings, run_config or {})

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(failed=exc_type is not None)
        return False

    @staticmethod
    def last_record(workdir) -> dict:
        """The last line of WORKDIR/metrics.jsonl ({} if there is none)."""
        path = os.path.join(workdir, "metrics.jsonl")
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            lines = [ln for ln in f if ln.strip()]
        return json.loads(lines[-1]) if lines else {}

    def start_clock(self):
        """Throughput and ETA count from here (after compilation)."""
        self.t_start = self.t_last = time.perf_counter()

    def _write(self, record):
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {
            f"{record['split']}/{k}": v
            for k, v in record.items()
            if k not in ("step", "split") and isinstance(v, (int, float))
        }
        for k, v in scalars.items():
            self.tb.add_scalar(k, v, record["step"])
        if self.wandb is not None:
            self.wandb.log({"step": record["step"], **scalars})

    def train(self, step, line, unit, units, rates=None) -> dict:
        """A train line for the steps since the last one (`units`: tokens / examples;
        `rates(steps, seconds)`: more speed fields, e.g. pjx.telemetry.Throughput's)."""
        now = time.perf_counter()
        dt = max(now - self.t_last, 1e-9)
        n = step - self.last_step
        self.t_last, self.last_step = now, step
        self.steps_timed += n
        eta = (now - self.t_start) / max(self.steps_timed, 1) * (self.total - step)
        record = {
            "step": int(step),
            "split": "train",
            **line,
            **self.annotate(step),
            f"{unit}_per_s": units / dt,
            **(rates(n, dt) if rates is not None else {}),
            "step_s": dt / max(n, 1),
            "elapsed_s": now - self.t_start,
            "eta_s": eta,
        }
        self._write(record)
        if self.progress:
            log.info(
                f"step {step}/{self.total} | "
                + (f"loss {line['loss']:.4f} | " if "loss" in line else "")
                + f"lr "
                f"{line['learning_rate']:.2e} | {units / dt:,.0f} {unit}/s | "
                + (f"MFU {record['mfu']:.1%} | " if "mfu" in record else "")
                + f"ETA {_hms(eta)}"
            )
        return record

    def eval(self, step, mets) -> dict:
        record = {"step": int(step), "split": "eval", **mets, **self.annotate(step)}
        self._write(record)
        if self.progress:
            shown = " | ".join(f"{k} {v:.4f}" for k, v in mets.items() if k != "count")
            log.info(f"eval @ {step}: {shown}")
        return record

    def close(self, failed=False):
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish(exit_code=1 if failed else 0)
            self.wandb = None


def _hms(seconds) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
