"""TrainState, the pure train / eval steps, what a config builds (`Setup`), and the loop.

`train_step` is one module-level pure function, jitted once with the state's and the
batch's shardings and the state donated. The loop (`fit`) dispatches step s+1 before it
reads step s's metrics; it only waits for the device to log, evaluate or checkpoint.
A whole run (tokenizer, data, checkpoints, stages) is pjx.run.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pjx import checkpoint, distributed, grads, lora, models, optim, privacy, sharding, tasks
from pjx.metrics_log import MetricsLog

log = logging.getLogger(__name__)


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
    state: TrainState,
    batch,
    *,
    model,
    loss_fn,
    tx,
    lr_fn,
    accum_steps=1,
    batch_sharding=None,
    dp=None,
    trainable=None,
):
    """One optimizer update from the gradient of one logical batch (pjx.grads: summed over
    `accum_steps` slices; under DP-SGD, `dp` (a `grads.DP`), clipped per example and
    noised). `trainable` marks the leaves that train."""
    rng = jax.random.fold_in(state.rng, state.step)
    fn = lambda p, b, r: loss_fn(model, p, b, r, train=True)
    loss, mets, g = grads.gradients(
        fn,
        state.params,
        batch,
        rng,
        accum_steps=accum_steps,
        batch_sharding=batch_sharding,
        trainable=trainable,
        dp=dp,
    )
    updates, opt_state = tx.update(g, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # The norm of what trains: frozen leaves' gradients stay unused, so XLA drops them.
    leaves = jax.tree.leaves(g)
    keep = jax.tree.leaves(trainable) if trainable is not None else [True] * len(leaves)
    norm = optax.tree.norm([x for x, t in zip(leaves, keep) if t])
    out = dict(mets, loss=loss, learning_rate=lr_fn(state.step), grad_norm=norm)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), out


def eval_step(params, batch, rng, *, model, loss_fn):
    """Metric sums of one eval batch (its `weight` masks padding rows)."""
    _, mets = loss_fn(model, params, batch, rng, train=False)
    return mets


# ----------------------------------------------------------------------------- setup
@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything built from a resolved config: model, task, optimizer, mesh, shardings,
    and the jitted functions."""

    config: Any
    model: nn.Module
    task: tasks.Task
    loss_fn: Callable  # the task's loss with its runtime arguments bound
    trainable: Any  # bool pytree like params: False = frozen (optimizer.freeze, LoRA's base)
    mesh: jax.sharding.Mesh
    state_shardings: Any
    abstract_state: Any  # ShapeDtypeStructs with shardings (restore target)
    batch_sharding: Any
    init: Callable  # rng -> sharded TrainState
    step_fn: Callable  # jitted train_step(state, batch)
    eval_fn: Callable  # jitted eval_step(params, batch, rng)


def build(config, *, tokenizer=None, mesh=None, devices=None, dp_mechanism=None) -> Setup:
    """The model, task, optimizer and jitted steps of a resolved config (`pjx.config.resolve`;
    any mapping with its keys will do: read by key, so plain dicts work without
    ml_collections, as on a bare accelerator host). `dp_mechanism`: fields of the DP-SGD
    step's `grads.DP` to replace (pjx.audit's canaries)."""
    model_cfg, family = config["model"], config["model"]["name"]
    fields = {k: v for k, v in model_cfg.items() if k not in ("name", "size")}
    lora_cfg = config.get("lora") or {}
    model = lora.adapted(models.create(family, model_cfg["size"], **fields), lora_cfg, family)
    task = tasks.get(config["task"])
    args = task.args(dict(config["task_args"]))
    loss_fn = functools.partial(task.loss, **task.runtime_args(args, tokenizer, model.config))
    frozen_by_lora = None
    if lora.enabled(lora_cfg):  # only the adapters and the task's heads train
        frozen_by_lora = lambda p: jax.tree.map(
            lambda t: not t, lora.trainable(p, lora_cfg, family)
        )
    tx, lr_fn = optim.make(config["optimizer"], config["steps"], frozen=frozen_by_lora)
    mesh = mesh or sharding.make_mesh(config["mesh"], devices)
    inputs = models.example_inputs(
        model_cfg["name"], model.config, 1, config["data"].get("seq_len") or None
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
    if lora.enabled(lora_cfg):
        lora.check(boxed, lora_cfg, family)
    abstract = jax.eval_shape(init_state, jax.random.PRNGKey(0))
    param_sh = sharding.param_shardings(boxed, mesh)
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state_sh = TrainState(
        step=repl,
        params=param_sh,
        opt_state=sharding.mirror_shardings(abstract.opt_state, abstract.params, param_sh, mesh),
        rng=repl,
    )
    batch_sh = sharding.batch_sharding(mesh, privacy.batch_rows(config))
    # Which parameters train (static): frozen ones get no gradient, no DP clipping, no
    # optimizer state, and count in no gradient norm.
    trainable = jax.tree.map(lambda _: True, abstract.params)
    pattern = config["optimizer"].get("freeze", "") or ""
    if pattern:
        trainable = jax.tree.map(lambda f: not f, optim.frozen_mask(abstract.params, pattern))
    if frozen_by_lora is not None:
        trainable = jax.tree.map(
            lambda t, f: t and not f, trainable, frozen_by_lora(abstract.params)
        )
    dp_cfg, dp = config.get("dp") or {}, None
    if privacy.enabled(dp_cfg):  # planned by pjx.run: the noise of the steps this start runs
        dp = grads.DP(
            l2_norm_clip=float(dp_cfg["l2_norm_clip"]),
            noise_multiplier=float(dp_cfg["noise_multiplier"]),
            expected_batch_size=int(config["batch_size"]),
            microbatch_size=int(dp_cfg.get("microbatch_size") or 0),
            clipping=privacy.clipping_method(dp_cfg, config["model"]),
        )
        dp = dataclasses.replace(dp, **(dp_mechanism or {}))
    step = functools.partial(
        train_step,
        model=model,
        loss_fn=loss_fn,
        tx=tx,
        lr_fn=lr_fn,
        accum_steps=int(config["optimizer"].get("accum_steps", 1) or 1),
        batch_sharding=batch_sh,
        dp=dp,
        trainable=trainable,
    )
    return Setup(
        config=config,
        model=model,
        task=task,
        loss_fn=loss_fn,
        trainable=trainable,
        mesh=mesh,
        state_shardings=state_sh,
        abstract_state=jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh
        ),
        batch_sharding=batch_sh,
        init=jax.jit(init_state, out_shardings=state_sh),
        step_fn=jax.jit(
            step,
            in_shardings=(state_sh, batch_sh),
            out_shardings=(state_sh, repl),
            donate_argnums=0,
        ),
        eval_fn=jax.jit(
            functools.partial(eval_step, model=model, loss_fn=loss_fn), out_shardings=repl
        ),
    )


def create_state(s: Setup, seed: int, *, secret: int | None = None) -> TrainState:
    """A fresh state: parameters from `seed`; the step key (dropout, masking, DP noise)
    from `secret` when given (DP-SGD: pjx.privacy.secret), else from `seed`."""
    # The out_shardings place every parameter; no activation constraint is needed here.
    state = s.init(jax.random.PRNGKey(seed))
    if secret is not None:
        key = jax.device_put(privacy.secret_key_data(secret), s.state_shardings.rng)
        state = state.replace(rng=key)
    return state


def compile_step(s: Setup, batch):
    """AOT-compile the train step for the shapes of this process's share of a batch."""
    G = privacy.batch_rows(s.config)  # the global batch (padded under DP-SGD)
    with sharding.context(s.mesh):
        abstract_batch = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct((G, *x.shape[1:]), x.dtype, sharding=s.batch_sharding),
            batch,
        )
        return s.step_fn.lower(s.abstract_state, abstract_batch).compile()


def describe(s: Setup) -> str:
    trained, params = lora.count(s.abstract_state.params, s.trainable)
    pb = sharding.per_device_bytes(s.abstract_state.params, s.state_shardings.params)
    ob = sharding.per_device_bytes(s.abstract_state.opt_state, s.state_shardings.opt_state)
    return (
        f"{sharding.describe(s.mesh)}\nmodel {s.config['model']['name']}/"
        f"{s.config['model']['size']}: {params:,} parameters, {trained:,} trained "
        f"({100 * trained / max(params, 1):.2f}%); per device: params {pb / 2**20:.2f} MiB, "
        f"optimizer state {ob / 2**20:.2f} MiB"
    )


def evaluate(s: Setup, params, batches: Iterable, *, seed: int = 0, max_batches: int = 0) -> dict:
    """The task's metrics over every batch of `batches` (sums on device, one sync)."""
    total = metric_sums(s, params, batches, seed=seed, max_batches=max_batches)
    return {} if total is None else s.task.finalize(total)


def metric_sums(s: Setup, params, batches: Iterable, *, seed: int = 0, max_batches: int = 0):
    """The task's metric sums over `batches` on the host (None for no batch), before
    `task.finalize` turns them into metrics.

    Batches are process-local: each process passes its share of every global batch
    (`batches.global_batch_size` rows; a plain list's rows times the processes)."""
    total = None
    key = jax.random.PRNGKey(seed + 1)  # masking (mlm / span) is the same every eval
    with sharding.context(s.mesh):
        for i, batch in enumerate(batches):
            if max_batches and i >= max_batches:
                break
            b = dict(batch)
            rows = len(next(iter(b.values())))
            b.setdefault("weight", np.ones((rows,), np.float32))
            G = getattr(batches, "global_batch_size", rows * jax.process_count())
            sh = sharding.batch_sharding(s.mesh, G)
            mets = s.eval_fn(params, sharding.global_batch(b, sh), jax.random.fold_in(key, i))
            total = mets if total is None else jax.tree.map(jnp.add, total, mets)
    return None if total is None else distributed.host_value(total)


# ------------------------------------------------------------------------------- loop
class _Window:
    """Train metrics of dispatched steps that are not logged yet, in step order. `read`
    fetches them to the host (once) and stops at the first non-finite `watch` value (the
    loss; under DP-SGD the released gradient's norm, not a function of the raw data)."""

    def __init__(self, watch: str = "loss"):
        self.steps: list[tuple[int, Any]] = []  # (step, device or host metrics)
        self.watch = watch

    def add(self, step: int, mets):
        self.steps.append((step, mets))

    def read(self, upto: int) -> list[tuple[int, dict]]:
        n = sum(st <= upto for st, _ in self.steps)
        host = distributed.host_value([m for _, m in self.steps[:n]])
        self.steps[:n] = [(st, m) for (st, _), m in zip(self.steps[:n], host)]
        for st, m in self.steps[:n]:
            if not np.isfinite(m[self.watch]):
                raise NonFiniteLossError(st, float(m[self.watch]))
        return self.steps[:n]

    def pop(self, upto: int) -> list[tuple[int, dict]]:
        out = self.read(upto)
        del self.steps[: len(out)]
        return out


def _train_line(window: list[tuple[int, dict]], private: bool = False) -> dict:
    """The metrics.jsonl fields of a window of steps: mean loss, the last lr / grad norm.
    Under DP-SGD (`private`) only what the mechanism released: the loss and accuracy of
    the realised batches are functions of the raw training data, so they stay unlogged."""
    host = [m for _, m in window]
    line = {
        "learning_rate": float(host[-1]["learning_rate"]),
        "grad_norm": float(host[-1]["grad_norm"]),
    }
    if private:
        return line
    line = {"loss": float(np.mean([m["loss"] for m in host])), **line}
    if "correct" in host[-1]:
        count = sum(float(m["count"]) for m in host)
        line["accuracy"] = sum(float(m["correct"]) for m in host) / max(count, 1e-12)
    return line


def _units(batch, unit: str, global_rows: int) -> int:
    """Tokens or examples of one global batch, from this process's share of it."""
    if unit == "tokens" and "input_ids" in batch:
        return int(np.prod(np.shape(batch["input_ids"])[1:])) * global_rows
    return global_rows


def fit(
    s: Setup,
    state: TrainState,
    start: int,
    train_data: Iterator,
    *,
    metrics: MetricsLog,
    eval_data: Iterable | None = None,
    checkpointer=None,
) -> dict:
    """Steps `start`+1 .. `config.steps`; returns the last metrics line written.

    Logs every `log_every` steps, evaluates every `eval_every` steps and at the end, saves
    when `checkpointer.due(step)` and at the end. Raises `Preempted` after saving on
    SIGTERM / SIGINT, `NonFiniteLossError` at the first NaN / Inf loss (before anything is
    evaluated or saved past it).
    """
    c = s.config
    total, log_every, eval_every = int(c.steps), max(int(c.log_every or 1), 1), int(c.eval_every)
    batches = iter(train_data)
    batch = next(batches)
    t0 = time.perf_counter()
    compiled = compile_step(s, batch)
    log.info(
        f"compiled train step in {time.perf_counter() - t0:.1f}s; "
        f"{sharding.memory_report(compiled)}"
    )
    metrics.start_clock()
    per_step, unit = _units(batch, s.task.unit, privacy.batch_rows(c)), s.task.unit
    private = privacy.enabled(c.get("dp") or {})
    window, last = _Window("grad_norm" if private else "loss"), {}

    def log_train(upto):
        nonlocal last
        steps = window.pop(upto)
        if steps:
            line = _train_line(steps, private)
            last = metrics.train(steps[-1][0], line, unit, per_step * len(steps))

    def run_eval(step) -> dict | None:
        nonlocal last
        if eval_data is None:
            return None
        mets = evaluate(s, state.params, eval_data, seed=c.seed, max_batches=c.eval_steps)
        last = metrics.eval(step, mets)
        return mets

    with sharding.context(s.mesh), checkpoint.PreemptionGuard() as guard:
        for step in range(start, total):
            if step > start:
                batch = next(batches)
            state, mets = compiled(state, sharding.global_batch(batch, s.batch_sharding))
            done = step + 1
            window.add(done, mets)
            # The previous step has finished (or is about to): reading it does not wait
            # for the step just dispatched.
            if done - 1 > start and (done - 1) % log_every == 0:
                log_train(done - 1)
            if done == total:
                break
            is_eval = bool(eval_every) and done % eval_every == 0
            stop = guard.should_stop(done)
            save = checkpointer is not None and (stop or checkpointer.due(done))
            if not (is_eval or save or stop):
                continue
            if done % log_every == 0 or stop:
                log_train(done)  # this step's line before its eval line
            window.read(done)  # never evaluate or save past an unseen NaN
            eval_mets = run_eval(done) if is_eval else None
            if save:
                checkpointer.save(done, state, train_data, force=stop, metrics=eval_mets)
            if stop:
                where = checkpointer.directory if checkpointer else "(checkpoints disabled)"
                raise Preempted(done, where)
        log_train(total)
        eval_mets = run_eval(total)
        if checkpointer is not None:
            checkpointer.save(total, state, train_data, force=True, metrics=eval_mets)
    return last
