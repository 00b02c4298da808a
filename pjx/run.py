"""A run from a config: resolve it, assemble what its workdir holds (tokenizer, data,
resolved config, checkpoints), resume or start, run the loop (pjx.loop.fit), chain
stages. What `pjx train` calls.

    from pjx import config, run
    run.train(config.load("configs/quickstart.py"), "runs/quickstart")

A run prints its resolved config and saves it as WORKDIR/config.json, resumes from
WORKDIR/checkpoints when there is one, and writes WORKDIR/metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from pjx import checkpoint, init_from, logs, loop, plot, privacy, resolution, sharding
from pjx import config as config_lib
from pjx import plan as plan_lib
from pjx import teacher as teacher_lib
from pjx import train as train_lib
from pjx import workdir as workdir_lib
from pjx.checkpoint import lock, saved
from pjx.data import overlap
from pjx.metrics_log import MetricsLog
from pjx.privacy import private_data, replay

log = logging.getLogger(__name__)


def train(
    config,
    workdir: str,
    overrides=(),
    *,
    train_data: Iterator | None = None,
    eval_data: Iterable | None = None,
    tokenizer=None,
    checkpoints: bool = True,
    devices=None,
) -> dict:
    """Runs the config's stages in order, each in WORKDIR/NAME, or the config itself in
    `workdir`, after the `--config.key=value` `overrides`; returns the last metrics line
    (eval, else train).

    `train_data` / `eval_data` default to `pjx.data.build` from the config. Resumes from
    WORKDIR/checkpoints when it holds one. Raises `pjx.loop.Preempted` after saving on
    SIGTERM / SIGINT, `pjx.loop.NonFiniteLossError` when the loss becomes NaN / Inf.
    """
    logs.setup()
    kw = dict(train_data=train_data, eval_data=eval_data, tokenizer=tokenizer)
    last = {}
    whole = bool(config.get("stages") and config.compare.stages)  # one figure for the run
    for stage_dir, cfg in config_lib.stage_configs(config, workdir, overrides):
        if stage_dir != workdir:
            log.info(f"=== stage {os.path.basename(stage_dir)} -> {stage_dir}")
        with start(cfg, stage_dir, checkpoints=checkpoints, devices=devices, **kw) as r:
            c = r.config
            if r.step >= c.steps:
                log.info(f"run already complete: step {r.step} of {c.steps} in {stage_dir}")
                last = MetricsLog.last_record(stage_dir)
                continue
            with MetricsLog(
                stage_dir,
                total_steps=c.steps,
                resume_step=r.step,
                progress=c.progress,
                annotate=r.annotate,
                wandb=c.wandb,
                run_config=c.to_dict(),
            ) as metrics:
                last = loop.fit(
                    r.setup,
                    r.state,
                    r.step,
                    r.train_data,
                    metrics=metrics,
                    eval_data=r.eval_data,
                    checkpointer=r.checkpointer,
                )
            if c.write_curves and not whole and jax.process_index() == 0:
                out = plot.write_curves(stage_dir)  # WORKDIR/curves.png: loss and eval metrics
                if out is not None:
                    log.info(f"curves: {out}")
    if whole:
        line = compare(workdir, config.compare.stages, config.compare.metric)
        if c.write_curves and jax.process_index() == 0:
            names = [name for name, _ in config.stages]
            out = plot.write_stages(
                workdir, names, config.compare.stages, config.compare.metric, line
            )
            log.info(f"curves: {out}")
        log.info(line)
    return last


# ---------------------------------------------------------------------------- assembly
@dataclasses.dataclass(frozen=True)
class Resolved:
    """A run resolved in its workdir: its plan (pjx.plan, whose `config` is the resolved
    config with the DP-SGD plan filled in), tokenizer and mesh."""

    plan: plan_lib.Plan
    tokenizer: Any
    mesh: jax.sharding.Mesh
    privacy: privacy.Plan | None = None  # DP-SGD's accounting; None: no DP-SGD
    secret: int | None = None  # DP-SGD's secret seed (pjx.privacy.secret)

    @property
    def config(self):
        return self.plan.config


@dataclasses.dataclass(frozen=True)
class Run:
    """A run assembled in its workdir, ready for the loop (pjx.loop.fit)."""

    config: Any  # resolved, the DP-SGD plan filled in
    setup: train_lib.Setup
    state: train_lib.TrainState
    step: int  # the step `state` is at: 0, or the restored checkpoint's
    train_data: Iterator
    eval_data: Iterable | None
    checkpointer: checkpoint.Checkpointer | None
    annotate: Callable | None  # DP-SGD: the epsilon fields of each metrics line


@contextlib.contextmanager
def start(
    config, workdir: str, *, train_data=None, eval_data=None, tokenizer=None, checkpoints=True,
    devices=None,
):  # fmt: skip
    """Holds `workdir` (one run at a time) and yields its `Run`: resumed from
    WORKDIR/checkpoints when it holds one, else fresh (with `config.init_from`'s
    parameters). On exit waits for the last (async) save and releases the workdir."""
    config = resolution.resolve_data(config)  # a bad config fails before the workdir exists
    os.makedirs(workdir, exist_ok=True)
    held = lock.hold(workdir)  # one run per workdir
    r = None
    try:
        kw = dict(train_data=train_data, eval_data=eval_data, tokenizer=tokenizer)
        r = _assemble(config, workdir, checkpoints=checkpoints, devices=devices, **kw)
        yield r
    finally:
        if r is not None and r.checkpointer is not None:
            r.checkpointer.close()
        lock.release(held)


def _assemble(config, workdir, *, train_data, eval_data, tokenizer, checkpoints, devices):
    """`start` once its workdir is held. The newest intact checkpoint is restored before
    the run is planned (a train state's shapes do not depend on DP-SGD's plan), so a
    private run plans the steps that remain after the step it really resumes at."""
    tokenizer, config, mesh = _resolve(config, workdir, tokenizer, devices)
    restored = _restore(config, workdir, mesh) if checkpoints else checkpoint.NOTHING_RESTORED
    rs = plan_start(config, workdir, tokenizer, mesh, resumed_at=restored.step)
    config, plan = rs.config, rs.privacy
    s = train_lib.build(rs.plan, tokenizer=tokenizer, mesh=mesh)
    if s.frozen_models:  # distill's teacher: read and checked before anything is written
        config, s = load_teacher(s, config, workdir)
    workdir_lib.save_config(config, workdir)
    log.info(config_lib.describe(config))
    log.info(train_lib.describe(s))
    if train_data is None:
        train_data = workdir_lib.build_data(
            s.plan, tokenizer, train=True, workdir=workdir, mesh=mesh, seed=rs.secret
        )
    if restored.data_state is not None and hasattr(train_data, "set_state"):
        train_data.set_state(restored.data_state)  # where the restored checkpoint read to
    if eval_data is None and config.eval_data.source:
        eval_data = workdir_lib.build_data(
            s.plan, tokenizer, train=False, workdir=workdir, mesh=mesh
        )
    checkpointer = None
    if checkpoints:
        checkpointer = checkpoint.Checkpointer(
            os.path.join(workdir, "checkpoints"),
            config=config,
            every=config.checkpoint_every or max(config.steps, 1),
            keep=config.keep_checkpoints,
            best_metric=config.best_metric or None,
            best_mode=config.best_mode,
            tokenizer_dir=workdir_lib.save_tokenizer(tokenizer, workdir),
            privacy_record=plan.record if plan else None,
        )
    state = restored.state
    if state is None:
        state = fresh_state(s, config, rs.secret)
    annotate = privacy.Ledger(plan).fields if plan else None
    return Run(config, s, state, restored.step, train_data, eval_data, checkpointer, annotate)


def _restore(config, workdir, mesh) -> checkpoint.Restored:
    """The newest intact checkpoint in WORKDIR/checkpoints (a damaged one is set aside),
    restored onto the shardings the resolved `config` gives its train state."""
    target = functools.partial(train_lib.state_target, plan_lib.from_config(config), mesh)
    return checkpoint.restore_newest(os.path.join(workdir, "checkpoints"), target)


def resolve_run(config, workdir, *, tokenizer=None, devices=None) -> Resolved:
    """A run resolved to start from step 0 whatever its workdir holds (what
    pjx.privacy.audit trains): tokenizer (`build_tokenizer` unless given), resolved
    config, mesh and, under DP-SGD, its privacy plan. `config`: after `resolve_data`."""
    tokenizer, config, mesh = _resolve(config, workdir, tokenizer, devices)
    return plan_start(config, workdir, tokenizer, mesh, resumed_at=None)


def _resolve(config, workdir, tokenizer, devices):
    """(tokenizer, resolved config, mesh) of a config after `resolve_data`; the tokenizer
    built (`workdir.build_tokenizer`) unless given."""
    if tokenizer is None:
        tokenizer = workdir_lib.build_tokenizer(config, workdir)
    config = resolution.complete(config, tokenizer)
    return tokenizer, config, sharding.make_mesh(config.mesh, devices)


def plan_start(config, workdir, tokenizer, mesh, *, resumed_at: int | None) -> Resolved:
    """This start's `Resolved` from a resolved config. Under DP-SGD its privacy plan
    continues the ledger of the checkpoint it resumes at (`resumed_at`: that step, 0 for
    none; None: from step 0 whatever the workdir holds, unchecked against its past)."""
    if not privacy.enabled(config.dp):
        return Resolved(plan_lib.from_config(config), tokenizer, mesh)
    private_data.check_vocabulary(config, getattr(tokenizer, "trained_on", None))
    record = None
    if resumed_at:
        step_dir = os.path.join(workdir, "checkpoints", str(resumed_at))
        record = checkpoint.read_step_item(step_dir, "privacy")
        if record is None:
            raise ValueError(
                f"{workdir} holds a checkpoint at step {resumed_at} with no privacy ledger: "
                "the steps that ran were not private, and DP-SGD cannot account for them. "
                "Train privately in a new --workdir (init_from a non-private run on public "
                "data only)."
            )
    inherited = ()
    if record is None:
        inherited, lines = inherited_privacy(config)
        for line in lines:
            log.info(line)
    plan = plan_privacy(config, tokenizer, workdir, mesh, record, inherited=inherited)
    config = resolution.with_privacy(config, plan, workdir_lib.data_fingerprint(config.data))
    if resumed_at is not None:
        before = workdir_lib.saved_config(workdir)
        replay.check_replay(
            json.loads((before.get("dp") or {}).get("segments") or "[]"), plan, resumed_at,
            int(MetricsLog.last_record(workdir).get("step", 0)),
            before=before, now=json.loads(config_lib.to_json(config)),
        )  # fmt: skip
    secret = privacy.secret(workdir)
    log.info(plan.describe())
    return Resolved(plan_lib.from_config(config), tokenizer, mesh, plan, secret)


def inherited_privacy(config) -> tuple[tuple, list[str]]:
    """The private steps that the runs this one learns from ran on its rows (`init_from`,
    and task distill's teacher, whose outputs on these rows the student trains on), and a
    line per source saying which case applies (pjx.privacy.inherit)."""
    sources = {}
    if config.get("init_from"):
        sources[str(config.init_from)] = "init_from"
    if config.get("task") == "distill" and config.distill.teacher:
        sources.setdefault(teacher_lib.local(str(config.distill.teacher)), "distill.teacher")
    segments, lines = (), []
    for source, key in sources.items():
        model = saved.Saved(source)
        source_data = None
        if model.kind == "pjx":
            source_data = (model.raw_config.get("data") or {}).get("source")
        shared = 0
        if source_data:
            shared = overlap.shared_rows(str(source_data), str(config.data.source), config.data)
        ledger = checkpoint.read_step_item(model.path, "privacy") if source_data else None
        found, why = privacy.inherit(
            source, source_data, shared, ledger, str(config.data.source), key=key
        )
        segments, lines = segments + tuple(found), [*lines, why]
    return segments, lines


def plan_privacy(config, tokenizer, workdir, mesh, ledger=None, num_examples=None, inherited=()):
    """DP-SGD's plan (a `pjx.privacy.Plan`) for a resolved config after `ledger` (what the
    checkpoint ran) and the `inherited` segments of init_from's run: N from the training
    table unless given, batches padded to a multiple of the devices the batch is split over
    (times the micro-batches)."""
    multiple = sharding.batch_devices(mesh) * int(config.optimizer.accum_steps or 1)
    return privacy.plan(
        config.dp,
        num_examples=num_examples or workdir_lib.count_examples(config, tokenizer, workdir),
        batch_size=config.batch_size,
        steps=config.steps,
        multiple=multiple,
        ledger=ledger,
        inherited=inherited,
    )


def fresh_state(s: train_lib.Setup, config, secret=None) -> train_lib.TrainState:
    """A new state (`pjx.train.create_state`) with `config.init_from`'s matching
    parameters from another run / HF folder."""
    state = train_lib.create_state(s, config.seed, secret=secret)
    if s.frozen and config.distill.student_init == "every_other":  # DistilBERT's init
        params, fresh = teacher_lib.every_other(state.params, s.frozen[0], config.model.num_layers)
        log.info(
            f"distill: student layers 0..{config.model.num_layers - 1} from teacher layers 0, "
            f"2, ...; the rest from {config.distill.teacher} where it has them "
            f"(initialised fresh: {', '.join(fresh) or 'none'})"
        )
        ema = None if state.ema is None else jax.tree.map(jnp.copy, params)
        state = state.replace(params=params, ema=ema)
    if not config.init_from:
        return state
    params, _ = init_from.init_from(
        config.init_from, state.params, allow_vocab_resize=bool(config.allow_vocab_resize)
    )
    # The moving average starts where the parameters do (a copy: the step donates both).
    ema = None if state.ema is None else jax.tree.map(jnp.copy, params)
    return state.replace(params=params, ema=ema)


def read_teacher(s: train_lib.Scorer, config):
    """Task distill: (the teacher's parameters in the layout `s` takes them, their hash)."""
    params = saved.Saved(config.distill.teacher).params(like=s.abstract_frozen[0])
    return params, teacher_lib.param_hash(params)


def load_teacher(s: train_lib.Setup, config, workdir):
    """Task distill: (`config` with `distill.teacher_hash`, `s` with the teacher's
    parameters as its frozen step argument). A workdir whose checkpoints trained with a
    teacher of another hash is refused."""
    params, digest = read_teacher(s, config)
    before = (workdir_lib.saved_config(workdir).get("distill") or {}).get("teacher_hash")
    ran = checkpoint.complete_step_dirs(os.path.join(workdir, "checkpoints"))
    if before and before != digest and ran:
        raise ValueError(
            f"distill.teacher={config.distill.teacher}: {workdir} trained with another teacher "
            f"(distill.teacher_hash {before[:16]}..., this one's {digest[:16]}...); resume "
            "with the teacher it started with, or start a new --workdir"
        )
    config = config.copy_and_resolve_references()
    config.distill.teacher_hash = digest
    if "teacher_hash" in config.task_args:  # the resolved options repeat the block's
        config.task_args.teacher_hash = digest
    s = dataclasses.replace(s, plan=plan_lib.from_config(config))
    return config, train_lib.with_frozen(s, (params,))


# ----------------------------------------------------------------------------- stages
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
