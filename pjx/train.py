"""TrainState, the pure train / eval steps, and the loop.

`train_step` is one module-level pure function, jitted once with the state's and the
batch's shardings and the state donated. The loop dispatches step s+1 before it reads
step s's metrics; it only syncs with the device to log, evaluate or checkpoint.

metrics.jsonl: one JSON object per event, `{"step", "split", "loss", ...}`. Wall-clock
fields (`TIMING_KEYS`) vary between runs; everything else is a deterministic function
of (config, seed, machine), which is what the determinism test compares.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pjx import optim, sharding, tasks
from pjx import workdir as workdir_lib
from pjx.logger import TIMING_KEYS, Logger

__all__ = ["TIMING_KEYS", "TrainState", "train", "run", "setup", "train_step", "eval_step"]


class Preempted(Exception):
    """SIGTERM / SIGINT arrived: the step finished and a checkpoint was saved."""

    def __init__(self, step: int, path: str):
        super().__init__(
            f"stopped by a signal after step {step}; checkpoint saved in {path}. "
            "Run the same command again to resume."
        )
        self.step, self.path = step, path


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; carries the first bad step."""

    def __init__(self, step: int, value: float):
        super().__init__(
            f"training stopped: loss is {value} at step {step}. No metrics line or checkpoint "
            "was written for it. Lower optimizer.lr, raise warm-up or check the data."
        )
        self.step = step


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of updates applied
    params: Any
    opt_state: Any
    rng: jax.Array  # base key; step s uses fold_in(rng, s), so resume is exact


def train_step(
    state: TrainState, batch, *, model, loss_fn, tx, lr_fn, accum_steps=1, batch_sharding=None
):
    """One optimizer update (gradients accumulated over `accum_steps` micro-batches)."""
    rng = jax.random.fold_in(state.rng, state.step)
    fn = lambda p, b, r: loss_fn(model, p, b, r, train=True)
    loss, mets, grads = optim.accumulate_gradients(
        fn, state.params, batch, rng, accum_steps, batch_sharding
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    out = dict(mets, loss=loss, learning_rate=lr_fn(state.step), grad_norm=optax.global_norm(grads))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), out


def eval_step(params, batch, rng, *, model, loss_fn):
    """Metric sums of one eval batch (its `weight` masks padding rows)."""
    _, mets = loss_fn(model, params, batch, rng, train=False)
    return mets


# ----------------------------------------------------------------------------- setup
@dataclasses.dataclass
class Setup:
    """Everything built from a config: model, task, optimizer, mesh, shardings, steps."""

    config: Any
    model: nn.Module
    task: tasks.Task
    loss_fn: Callable
    tx: optax.GradientTransformation
    lr_fn: Callable
    mesh: jax.sharding.Mesh
    state_shardings: Any
    abstract_state: Any
    batch_sharding: Any
    init: Callable  # rng -> sharded TrainState
    step_fn: Callable  # jitted train_step(state, batch)
    eval_fn: Callable  # jitted eval_step(params, batch, rng)


def model_overrides(config, tokenizer=None) -> dict:
    """`config.model` fields for `pjx.models.create`; vocab_size from the tokenizer."""
    over = {k: v for k, v in config.model.items() if k not in ("name", "size")}
    if tokenizer is not None and "vocab_size" not in over:
        over["vocab_size"] = int(tokenizer.vocab_size)
    if config.model.name == "bert":
        over.setdefault("mlm_head", config.task == "mlm")
        over.setdefault("nsp_head", bool(config.task_args.get("nsp", False)))
    return over


def setup(config, *, tokenizer=None, mesh=None, devices=None) -> Setup:
    from pjx import models, xla_cpu

    xla_cpu.install()  # bit-identical, faster dropout masks on CPU
    model = models.create(
        config.model.name, config.model.size, **model_overrides(config, tokenizer)
    )
    task = tasks.get(config.task)
    args = tasks.runtime_args(config.task, config.task_args.to_dict(), tokenizer, model.config)
    loss_fn = functools.partial(task.loss, **args)
    tx, lr_fn = optim.make(config.optimizer, config.steps)
    mesh = mesh or sharding.make_mesh(config.mesh, devices)
    inputs = models.example_inputs(
        config.model.name, model.config, 1, config.data.get("seq_len") or None
    )

    def init_params(rng):
        return model.init({"params": rng, "dropout": rng}, **inputs)["params"]

    def init_state(rng):
        k_params, k_state = jax.random.split(rng)
        params = nn.meta.unbox(init_params(k_params))
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=k_state
        )

    boxed = jax.eval_shape(init_params, jax.random.PRNGKey(0))
    abstract = jax.eval_shape(init_state, jax.random.PRNGKey(0))
    param_sh = sharding.param_shardings(boxed, mesh)
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state_sh = TrainState(
        step=repl,
        params=param_sh,
        opt_state=sharding.mirror_shardings(abstract.opt_state, abstract.params, param_sh, mesh),
        rng=repl,
    )
    batch_sh = sharding.batch_sharding(mesh, config.batch_size)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh
    )
    init = jax.jit(init_state, out_shardings=state_sh)
    step_fn = jax.jit(
        functools.partial(
            train_step,
            model=model,
            loss_fn=loss_fn,
            tx=tx,
            lr_fn=lr_fn,
            accum_steps=int(config.optimizer.get("accum_steps", 1) or 1),
            batch_sharding=batch_sh,
        ),
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, repl),
        donate_argnums=0,
    )
    eval_fn = jax.jit(
        functools.partial(eval_step, model=model, loss_fn=loss_fn), out_shardings=repl
    )
    return Setup(
        config,
        model,
        task,
        loss_fn,
        tx,
        lr_fn,
        mesh,
        state_sh,
        abstract,
        batch_sh,
        init,
        step_fn,
        eval_fn,
    )


def create_state(s: Setup, seed: int) -> TrainState:
    # No rules in scope: flax would constrain boxed DenseGeneral kernels before their
    # reshape; the out_shardings alone place every parameter.
    return s.init(jax.random.PRNGKey(seed))


def compile_step(s: Setup, batch):
    """AOT-compile the train step for this batch's shapes; prints the memory estimate."""
    with sharding.context(s.mesh):
        abstract_batch = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s.batch_sharding), batch
        )
        return s.step_fn.lower(s.abstract_state, abstract_batch).compile()


def describe(s: Setup) -> str:
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(s.abstract_state.params))
    pb = sharding.per_device_bytes(s.abstract_state.params, s.state_shardings.params)
    ob = sharding.per_device_bytes(s.abstract_state.opt_state, s.state_shardings.opt_state)
    return (
        f"{sharding.describe(s.mesh)}\nmodel {s.config.model.name}/{s.config.model.size}: "
        f"{params:,} parameters; per device: params {pb / 2**20:.2f} MiB, "
        f"optimizer state {ob / 2**20:.2f} MiB"
    )


def evaluate(s: Setup, params, batches: Iterable, *, seed: int = 0, max_batches: int = 0) -> dict:
    """The task's metrics over every batch of `batches` (sums on device, one sync)."""
    total, n = None, 0
    key = jax.random.PRNGKey(seed + 1)  # masking (mlm / span) is the same every eval
    with sharding.context(s.mesh):
        for i, batch in enumerate(batches):
            if max_batches and i >= max_batches:
                break
            b = dict(batch)
            if "weight" not in b:
                b["weight"] = np.ones((len(next(iter(b.values()))),), np.float32)
            sh = sharding.batch_sharding(s.mesh, len(b["weight"]))
            mets = s.eval_fn(params, sharding.global_batch(b, sh), jax.random.fold_in(key, i))
            total = mets if total is None else jax.tree.map(jnp.add, total, mets)
            n += 1
    if total is None:
        return {}
    return s.task.finalize(jax.device_get(total))


# ------------------------------------------------------------------------------- loop
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
    """Runs `config` in `workdir`; returns the last eval metrics (or the last train line).

    `train_data` / `eval_data` default to `pjx.data.build` from the config. Resumes from
    WORKDIR/checkpoints when it holds one. Raises `Preempted` after saving on SIGTERM /
    SIGINT, `NonFiniteLossError` when the loss becomes NaN / Inf.
    """
    from pjx import checkpoint, init_from

    os.makedirs(workdir, exist_ok=True)
    config = init_from.resolve_model_config(config)
    tokenizer = tokenizer if tokenizer is not None else workdir_lib.build_tokenizer(config, workdir)
    s = setup(config, tokenizer=tokenizer, devices=devices)
    print(describe(s))
    if train_data is None:
        train_data = workdir_lib.build_data(config, tokenizer, train=True, workdir=workdir)
    if eval_data is None and config.eval_data.get("source"):
        eval_data = workdir_lib.build_data(config, tokenizer, train=False, workdir=workdir)
    train_iter = iter(train_data)

    ckpt = None
    if checkpoints:
        ckpt = workdir_lib.Checkpointer(
            workdir_lib.resolved_config(config, s.model.config),
            workdir,
            workdir_lib.save_tokenizer(tokenizer, workdir),
        )
    state, start = (None, 0)
    if ckpt is not None:
        state, start = ckpt.restore(s.abstract_state, train_data)
    if state is None:
        state = create_state(s, config.seed)
        if config.get("init_from"):
            state = workdir_lib.init_params_from(
                config.init_from, state, bool(config.get("allow_vocab_resize", False))
            )
    if start >= config.steps:
        print(f"run already complete: step {start} of {config.steps} in {workdir}")
        ckpt.close()
        return Logger.last_record(workdir)
    log = Logger(
        workdir, total_steps=config.steps, resume_step=start, progress=config.get("progress", True)
    )

    first = next(train_iter)
    t0 = time.perf_counter()
    compiled = compile_step(s, first)
    print(
        f"compiled train step in {time.perf_counter() - t0:.1f}s; "
        f"{sharding.memory_report(compiled)}"
    )
    log.t_start = log.t_last = time.perf_counter()  # throughput and ETA exclude compilation
    unit = s.task.unit
    per_step = _units(first, unit)

    eval_every, log_every = int(config.eval_every or 0), max(int(config.log_every or 1), 1)
    pending: list = []  # (step, device metrics) not yet read
    last: dict = {}

    def flush(upto, write=True):
        nonlocal pending, last
        window = [(st, m) for st, m in pending if st <= upto]
        if write:
            pending = [(st, m) for st, m in pending if st > upto]
        if not window:
            return
        host = jax.device_get([m for _, m in window])
        for (st, _), m in zip(window, host):
            if not np.isfinite(m["loss"]):
                log.close()
                raise NonFiniteLossError(st, float(m["loss"]))
        if not write:
            return
        line = {
            "loss": float(np.mean([m["loss"] for m in host])),
            "learning_rate": float(host[-1]["learning_rate"]),
            "grad_norm": float(host[-1]["grad_norm"]),
        }
        if "correct" in host[-1]:
            cnt = sum(float(m["count"]) for m in host)
            line["accuracy"] = sum(float(m["correct"]) for m in host) / max(cnt, 1e-12)
        last = log.train(window[-1][0], line, unit, per_step * len(window))

    def run_eval(step) -> dict:
        nonlocal last
        mets = evaluate(
            s, state.params, eval_data, seed=config.seed, max_batches=config.get("eval_steps", 0)
        )
        last = log.eval(step, mets)
        return mets

    batch = first
    with sharding.context(s.mesh), checkpoint.PreemptionGuard() as guard:
        for step in range(start, config.steps):
            if step > start:
                batch = next(train_iter)
            state, mets = compiled(state, sharding.global_batch(batch, s.batch_sharding))
            done = step + 1
            pending.append((done, mets))
            # Read the previous step's metrics only now that this one is dispatched.
            if done - 1 > start and (done - 1) % log_every == 0:
                flush(done - 1)
            is_eval = eval_every and done % eval_every == 0 and done < config.steps
            if done % log_every == 0 and (is_eval or done == config.steps):
                flush(done)
            stop = guard.should_stop(done) and done < config.steps
            saving = ckpt is not None and done < config.steps and (stop or ckpt.due(done))
            if is_eval or saving:
                flush(done, write=False)  # never evaluate / save past an unseen NaN
            eval_mets = run_eval(done) if is_eval and eval_data is not None else None
            if saving:
                ckpt.save(done, state, train_data, force=stop, metrics=eval_mets)
            if stop:
                flush(done)
                log.close()
                where = ckpt.directory if ckpt is not None else "(checkpoints disabled)"
                if ckpt is not None:
                    ckpt.close()
                raise Preempted(done, where)
        flush(config.steps)
        eval_mets = run_eval(config.steps) if eval_data is not None else None
        if ckpt is not None:
            ckpt.save(config.steps, state, train_data, force=True, metrics=eval_mets)
            ckpt.close()
    log.close()
    return last


def _units(batch, unit: str) -> int:
    if unit == "tokens" and "input_ids" in batch:
        return int(np.prod(np.shape(batch["input_ids"])))
    return int(len(next(iter(batch.values()))))


def run(config, workdir: str, overrides=(), **kw) -> dict:
    """Runs the config's stages in order (each in WORKDIR/NAME), or the config itself."""
    from pjx import config as config_lib

    out = {}
    for stage_dir, cfg in config_lib.stage_configs(config, workdir, overrides):
        if stage_dir != workdir:
            print(f"=== stage {os.path.basename(stage_dir)} -> {stage_dir}")
        out = train(cfg, stage_dir, **kw)
    return out
