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

from pjx import config as config_lib
from pjx import logs, plot, privacy, sharding
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
    if tokenizer is None:
        tokenizer = workdir_lib.build_tokenizer(config, workdir)
    config = config_lib.resolve(config, tokenizer)
    mesh = sharding.make_mesh(config.mesh, devices)
    ledger = None
    if privacy.enabled(config.dp):  # fixed before the first step (and again on resume)
        p = plan_privacy(config, tokenizer, workdir, mesh)
        config, ledger = config_lib.with_privacy(config, p), privacy.Ledger(p)
        log.info(p.describe())
    workdir_lib.save_config(config, workdir)
    log.info(config_lib.describe(config))
    s = train_lib.build(config, tokenizer=tokenizer, mesh=mesh)
    log.info(train_lib.describe(s))
    if train_data is None:
        train_data = workdir_lib.build_data(
            config, tokenizer, train=True, workdir=workdir, mesh=s.mesh
        )
    if eval_data is None and config.eval_data.source:
        eval_data = workdir_lib.build_data(
            config, tokenizer, train=False, workdir=workdir, mesh=s.mesh
        )

    checkpointer = None
    if checkpoints:
        tokenizer_dir = workdir_lib.save_tokenizer(tokenizer, workdir)
        checkpointer = workdir_lib.Checkpointer(config, workdir, tokenizer_dir)
    try:
        state, start = None, 0
        if checkpointer is not None:
            state, start = checkpointer.restore(s.abstract_state, train_data)
        if state is None:
            state = train_lib.create_state(s, config.seed)
            if config.init_from:
                state = workdir_lib.init_params_from(
                    config.init_from, state, bool(config.allow_vocab_resize)
                )
        if start >= config.steps:
            log.info(f"run already complete: step {start} of {config.steps} in {workdir}")
            return MetricsLog.last_record(workdir)
        annotate = (lambda step: {"dp_epsilon": ledger.epsilon(step)}) if ledger else None
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


def plan_privacy(config, tokenizer, workdir, mesh) -> privacy.Plan:
    """DP-SGD's plan for a resolved config: N from the training table, batches padded to a
    multiple of the devices the batch is split over (times the micro-batches)."""
    multiple = sharding.batch_devices(mesh) * int(config.optimizer.accum_steps or 1)
    return privacy.plan(
        config.dp,
        num_examples=workdir_lib.num_examples(config, tokenizer, workdir),
        batch_size=config.batch_size,
        steps=config.steps,
        multiple=multiple,
    )


def run(config, workdir: str, overrides=(), **kw) -> dict:
    """Runs the config's stages in order (each in WORKDIR/NAME), or the config itself."""
    logs.setup()
    out = {}
    for stage_dir, cfg in config_lib.stage_configs(config, workdir, overrides):
        if stage_dir != workdir:
            log.info(f"=== stage {os.path.basename(stage_dir)} -> {stage_dir}")
        out = train(cfg, stage_dir, **kw)
    return out
