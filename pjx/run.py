"""A whole run from a config: resolve it, build what the workdir holds, resume or start,
train (pjx.train.fit), and chain stages. What `pjx train` calls.

    from pjx import config, run
    run.run(config.load("configs/quickstart.py"), "runs/quickstart")

A run prints its resolved config and saves it as WORKDIR/config.json, resumes from
WORKDIR/checkpoints when there is one, and writes WORKDIR/metrics.jsonl.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator

import jax

from pjx import checkpoint, lock, logs, plot, privacy, sharding
from pjx import config as config_lib
from pjx import train as train_lib
from pjx import workdir as workdir_lib
from pjx.metrics_log import MetricsLog

log = logging.getLogger(__name__)


def train(
    config,
    workdir: str,
    *,
    train_data: Iterator | None = None,
    eval_data: Iterable | None = None,
    tokenizer=None,
    checkpoints: bool = True,
    devices=None,
) -> dict:
    """Runs `config` in `workdir`; returns the last metrics line (eval, else train).

    `train_data` / `eval_data` default to `pjx.data.build` from the config. Resumes from
    WORKDIR/checkpoints when it holds one. Raises `pjx.train.Preempted` after saving on
    SIGTERM / SIGINT, `pjx.train.NonFiniteLossError` when the loss becomes NaN / Inf.
    """
    logs.setup()
    config = config_lib.resolve_data(config)  # a bad config fails before the workdir exists
    os.makedirs(workdir, exist_ok=True)
    held = lock.hold(workdir)  # one run per workdir
    try:
        while True:
            try:
                return _start(
                    config, workdir, train_data=train_data, eval_data=eval_data,
                    tokenizer=tokenizer, checkpoints=checkpoints, devices=devices,
                )  # fmt: skip
            except _Replan:
                continue
    finally:
        lock.release(held)


class _Replan(Exception):
    """A DP-SGD run restored an older checkpoint than the one it planned from (the newest
    was damaged and is now set aside): it starts again, planning from the restored one."""


def _start(config, workdir, *, train_data, eval_data, tokenizer, checkpoints, devices):
    """`train` once its workdir is held."""
    if tokenizer is None:
        tokenizer = workdir_lib.build_tokenizer(config, workdir)
    config = config_lib.resolve(config, tokenizer)
    mesh = sharding.make_mesh(config.mesh, devices)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    plan, secret, planned_at = None, None, 0
    if privacy.enabled(config.dp):  # fixed once per start, after what the checkpoint ran
        planned_at, record = checkpoint.read_item(ckpt_dir, "privacy") if checkpoints else (0, None)
        plan = plan_privacy(config, tokenizer, workdir, mesh, record)
        privacy.check_replay(
            workdir_lib.saved_segments(workdir), plan, planned_at,
            int(MetricsLog.last_record(workdir).get("step", 0)),
        )  # fmt: skip
        config, secret = config_lib.with_privacy(config, plan), privacy.secret(workdir)
        log.info(plan.describe())
    workdir_lib.save_config(config, workdir)
    log.info(config_lib.describe(config))
    s = train_lib.build(config, tokenizer=tokenizer, mesh=mesh)
    log.info(train_lib.describe(s))
    if train_data is None:
        train_data = workdir_lib.build_data(
            config, tokenizer, train=True, workdir=workdir, mesh=s.mesh, seed=secret
        )
    if eval_data is None and config.eval_data.source:
        eval_data = workdir_lib.build_data(
            config, tokenizer, train=False, workdir=workdir, mesh=s.mesh
        )

    checkpointer = None
    if checkpoints:
        tokenizer_dir = workdir_lib.save_tokenizer(tokenizer, workdir)
        checkpointer = workdir_lib.Checkpointer(
            config, workdir, tokenizer_dir, plan.record if plan else None
        )
    try:
        state, start = None, 0
        if checkpointer is not None:
            state, start = checkpointer.restore(s.abstract_state, train_data)
        if plan is not None and start != planned_at:
            raise _Replan
        if state is None:
            state = train_lib.create_state(s, config.seed, secret=secret)
            if config.init_from:
                state = workdir_lib.init_params_from(
                    config.init_from, state, bool(config.allow_vocab_resize)
                )
        if start >= config.steps:
            log.info(f"run already complete: step {start} of {config.steps} in {workdir}")
            return MetricsLog.last_record(workdir)
        annotate = privacy.Ledger(plan).fields if plan else None
        with MetricsLog(
            workdir,
            total_steps=config.steps,
            resume_step=start,
            progress=config.progress,
            annotate=annotate,
            wandb=config.get("wandb"),
            run_config=config.to_dict(),
        ) as metrics:
            last = train_lib.fit(
                s,
                state,
                start,
                train_data,
                metrics=metrics,
                eval_data=eval_data,
                checkpointer=checkpointer,
            )
        if config.get("write_curves", True) and jax.process_index() == 0:
            out = plot.write_curves(workdir)  # WORKDIR/curves.png: loss and eval metrics
            if out is not None:
                log.info(f"curves: {out}")
        return last
    finally:
        if checkpointer is not None:
            checkpointer.close()  # waits for the last (async) save


def plan_privacy(config, tokenizer, workdir, mesh, ledger=None) -> privacy.Plan:
    """DP-SGD's plan for a resolved config after `ledger` (what the checkpoint ran): N from
    the training table, batches padded to a multiple of the devices the batch is split
    over (times the micro-batches)."""
    multiple = sharding.batch_devices(mesh) * int(config.optimizer.accum_steps or 1)
    return privacy.plan(
        config.dp,
        num_examples=workdir_lib.num_examples(config, tokenizer, workdir),
        batch_size=config.batch_size,
        steps=config.steps,
        multiple=multiple,
        ledger=ledger,
    )


def run(config, workdir: str, overrides=(), **kw) -> dict:
    """Runs the config's stages in order (each in WORKDIR/NAME), or the config itself."""
    logs.setup()
    out = {}
    for stage_dir, cfg in config_lib.stage_configs(config, workdir, overrides):
        if stage_dir != workdir:
            log.info(f"=== stage {os.path.basename(stage_dir)} -> {stage_dir}")
        out = train(cfg, stage_dir, **kw)
    if config.get("stages") and config.get("compare") and config.compare.stages:
        log.info(compare(workdir, config.compare.stages, config.compare.metric))
    return out


# Metrics read as fractions: their differences are stated in points (x 100).
FRACTIONS = ("accuracy", "precision", "recall", "f1", "mcc", "f1_macro", "precision_macro",
             "recall_macro")  # fmt: skip


def compare(workdir, stages, metric: str) -> str:
    """One line: each (label, stage)'s last eval `metric`, the first one's lead over each
    other, e.g. `from pretraining: 0.862 accuracy; from scratch: 0.741 (+12.1 points)`."""
    values = []
    for label, stage in stages:
        evals = [r for r in plot.read_metrics(os.path.join(workdir, stage)) if r["split"] == "eval"]
        if not evals or metric not in evals[-1]:
            raise ValueError(f"compare: stage {stage!r} has no eval {metric!r} in {workdir}")
        values.append((label, float(evals[-1][metric])))
    (first, a), parts = values[0], []
    for label, b in values[1:]:
        lead = f"{100 * (a - b):+.1f} points" if metric in FRACTIONS else f"{a - b:+.4g}"
        parts.append(f"{label}: {b:.3f} ({lead})")
    return "; ".join([f"{first}: {a:.3f} {metric}", *parts])
