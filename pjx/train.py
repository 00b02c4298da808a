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
import json
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

# Wall-clock fields of metrics.jsonl: they differ between identical runs.
TIMING_KEYS = ("tokens_per_s", "examples_per_s", "step_s", "elapsed_s", "eta_s")


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
    from pjx import models

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


# ------------------------------------------------------------------------------ seams
def build_tokenizer(config):
    """The tokenizer named by `config.data.tokenizer` ('' = none / the data's default)."""
    spec = config.data.get("tokenizer", "")
    if not spec:
        return None
    from pjx import tokenizers

    return tokenizers.load(spec)


def build_data(config, tokenizer, *, train: bool):
    """Train: an infinite iterator with get_state/set_state; eval: a re-iterable."""
    from pjx import data as pjx_data

    cfg = config.data if train else config.eval_data
    bs = config.batch_size if train else (config.get("eval_batch_size") or config.batch_size)
    return pjx_data.build(
        cfg,
        task=config.task,
        tokenizer=tokenizer,
        batch_size=bs,
        seed=config.seed,
        train=train,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


class Checkpointer:
    """The one place the loop saves / restores state and reads the data iterator's state."""

    def __init__(self, config, workdir):
        from pjx import checkpoint

        self.ckpt = checkpoint
        every = int(config.get("checkpoint_every", 0) or 0) or max(int(config.steps), 1)
        self.config = config
        self.manager = checkpoint.create_manager(
            os.path.join(workdir, "checkpoints"), checkpoint_every=every
        )

    def restore(self, abstract_state, data_iter):
        state, data_state, step = self.ckpt.maybe_restore(self.manager, abstract_state)
        if state is not None and data_state is not None and hasattr(data_iter, "set_state"):
            data_iter.set_state(data_state)
        return state, step

    def save(self, step, state, data_iter, *, force=False, metrics=None):
        get = getattr(data_iter, "get_state", None)
        self.ckpt.save(
            self.manager,
            step,
            state,
            data_state=get,
            config=self.config,
            metrics=metrics,
            force=force,
        )

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def init_params_from(source, state: TrainState) -> TrainState:
    """`config.init_from`: matching parameters from another run / HF folder."""
    from pjx import init_from

    params, _ = init_from.init_from(source, state.params)
    return state.replace(params=params)


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

    `train_data` / `eval_data` default to `pjx.data.build` from the config.
    """
    os.makedirs(workdir, exist_ok=True)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(config)
    s = setup(config, tokenizer=tokenizer, devices=devices)
    print(describe(s))
    if train_data is None:
        train_data = build_data(config, tokenizer, train=True)
    if eval_data is None and config.eval_data.get("source"):
        eval_data = build_data(config, tokenizer, train=False)
    train_iter = iter(train_data)

    ckpt = Checkpointer(config, workdir) if checkpoints else None
    state, start = (None, 0)
    if ckpt is not None:
        state, start = ckpt.restore(s.abstract_state, train_data)
    if state is None:
        state = create_state(s, config.seed)
        if config.get("init_from"):
            state = init_params_from(config.init_from, state)
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

    batch = first
    with sharding.context(s.mesh):
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
            if is_eval or (ckpt is not None and ckpt.manager.should_save(done)):
                flush(done, write=False)  # never evaluate / save past an unseen NaN
            if is_eval and eval_data is not None:
                last = log.eval(
                    done,
                    evaluate(
                        s,
                        state.params,
                        eval_data,
                        seed=config.seed,
                        max_batches=config.get("eval_steps", 0),
                    ),
                )
            if ckpt is not None and done < config.steps:
                ckpt.save(done, state, train_data)
        flush(config.steps)
        if eval_data is not None:
            last = log.eval(
                config.steps,
                evaluate(
                    s,
                    state.params,
                    eval_data,
                    seed=config.seed,
                    max_batches=config.get("eval_steps", 0),
                ),
            )
        if ckpt is not None:
            ckpt.save(config.steps, state, train_data, force=True)
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


# ---------------------------------------------------------------------------- logging
class Logger:
    """metrics.jsonl + TensorBoard event files + a plain progress line (process 0 only)."""

    def __init__(self, workdir, *, total_steps, resume_step=0, progress=True):
        self.active = jax.process_index() == 0
        self.total, self.progress = int(total_steps), progress
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.t_start = self.t_last = time.perf_counter()
        self.steps_timed, self.last_step = 0, resume_step
        self.tb = None
        if not self.active:
            return
        if os.path.exists(self.path):  # resumed: drop lines past the restored step
            with open(self.path) as f:
                keep = [ln for ln in f if ln.strip() and json.loads(ln)["step"] <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(keep)
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step)
        except ImportError:  # pragma: no cover - optional at runtime
            self.tb = None

    def _write(self, record):
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "split") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{record['split']}/{k}", v, record["step"])

    def train(self, step, line, unit, units) -> dict:
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
            f"{unit}_per_s": units / dt,
            "step_s": dt / max(n, 1),
            "elapsed_s": now - self.t_start,
            "eta_s": eta,
        }
        self._write(record)
        if self.active and self.progress:
            rate = units / dt
            print(
                f"step {step}/{self.total} | loss {line['loss']:.4f} | lr "
                f"{line['learning_rate']:.2e} | {rate:,.0f} {unit}/s | ETA "
                f"{_hms(eta)}",
                flush=True,
            )
        return record

    def eval(self, step, mets) -> dict:
        record = {"step": int(step), "split": "eval", **mets}
        self._write(record)
        if self.active and self.progress:
            shown = " | ".join(f"{k} {v:.4f}" for k, v in mets.items() if k != "count")
            print(f"eval @ {step}: {shown}", flush=True)
        return record

    def close(self):
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _hms(seconds) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
