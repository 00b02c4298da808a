"""TrainState, the pure train / eval steps, and what a run's plan builds (`Setup`).

`train_step` is one module-level pure function, jitted once with the state's and the
batch's shardings and the state donated. Without DP-SGD, accumulation or frozen leaves it
is the plain step (pjx.grads adds those around the same `value_and_grad`):

    (loss, mets), g = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
    updates, opt_state = tx.update(g, opt_state, params)
    params = optax.apply_updates(params, updates)

`build(plan)` reads a pjx.plan.Plan (the run resolved once), never the config. The loop
that runs the step is pjx.loop; a whole run (tokenizer, data, checkpoints, stages) is
pjx.run.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pjx import distributed, grads, lora, models, optim, sharding, tasks
from pjx.plan import Plan


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of updates applied
    params: Any
    opt_state: Any
    rng: jax.Array  # base key; step s uses fold_in(rng, s), so resume is exact
    # The parameters' moving average (optimizer.ema_decay), None when off: what the run
    # evaluates and saves as its weights (`weights`).
    ema: Any = None


def weights(state: TrainState):
    """The parameters a run evaluates and releases: the moving average when it keeps one."""
    return state.params if state.ema is None else state.ema


def train_step(
    state: TrainState,
    batch,
    *frozen,
    model,
    loss_fn,
    tx,
    lr_fn,
    accum_steps=1,
    batch_sharding=None,
    dp=None,
    trainable=None,
    ema_decay=0.0,
):
    """One optimizer update from the gradient of one logical batch (pjx.grads: summed over
    `accum_steps` slices; under DP-SGD, `dp` (a `grads.DP`), clipped per example and
    noised), and of the parameters' moving average when the state keeps one. `trainable`
    marks the leaves that train. `frozen`: the task's frozen parameters (`Setup.frozen`:
    distill's teacher), passed to the loss after `rng`."""
    rng = jax.random.fold_in(state.rng, state.step)
    loss, mets, g = grads.gradients(
        functools.partial(loss_fn, model, train=True),
        state.params,
        batch,
        rng,
        accum_steps=accum_steps,
        batch_sharding=batch_sharding,
        trainable=trainable,
        dp=dp,
        loss_args=frozen,
    )
    updates, opt_state = tx.update(g, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # The norm of what trains: frozen leaves' gradients stay unused, so XLA drops them.
    leaves = jax.tree.leaves(g)
    keep = jax.tree.leaves(trainable) if trainable is not None else [True] * len(leaves)
    norm = optax.tree.norm([x for x, t in zip(leaves, keep) if t])
    out = dict(mets, loss=loss, learning_rate=lr_fn(state.step), grad_norm=norm)
    ema = state.ema
    if ema is not None:
        ema = optim.ema_update(ema, params, state.step + 1, ema_decay, trainable)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema), out


def eval_step(params, batch, rng, *frozen, model, loss_fn):
    """Metric sums of one eval batch (its `weight` masks padding rows)."""
    _, mets = loss_fn(model, params, batch, rng, *frozen, train=False)
    return mets


# ----------------------------------------------------------------------------- setup
@dataclasses.dataclass(frozen=True, kw_only=True)
class Scorer:
    """What scoring a plan's model needs, and no optimizer (pjx.evaluation): the model, its
    task and loss, the mesh, the parameters' shapes on their shardings, the jitted eval
    step, and the task's frozen models."""

    plan: Plan
    model: nn.Module
    task: tasks.Task
    loss_fn: Callable  # the task's loss with its runtime arguments bound
    mesh: jax.sharding.Mesh
    abstract_params: Any  # ShapeDtypeStructs with shardings (what parameters load onto)
    eval_fn: Callable  # jitted eval_step(params, batch, rng, *frozen)
    # The task's frozen models (`Task.frozen_models`: distill's teacher), whose parameters
    # every step takes as arguments after its own: () for other tasks. `abstract_frozen`:
    # their ShapeDtypeStructs, sharded like a model's parameters; `frozen`: the arrays,
    # placed by `with_frozen` (pjx.run loads them).
    frozen_models: tuple = ()
    abstract_frozen: tuple = ()
    frozen: tuple = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Setup(Scorer):
    """Everything built from a run's plan: a `Scorer`, and the optimizer's state, the
    shardings of the whole train state and the jitted train step."""

    trainable: Any  # bool pytree like params: False = frozen (optimizer.freeze, LoRA's base)
    state_shardings: Any
    abstract_state: Any  # ShapeDtypeStructs with shardings (restore target)
    batch_sharding: Any
    init: Callable  # rng -> sharded TrainState
    step_fn: Callable  # jitted train_step(state, batch, *frozen)


def scorer(plan: Plan, *, tokenizer=None, mesh=None, devices=None) -> Scorer:
    """The model, task, loss and jitted eval step of a plan, without an optimizer."""
    model = _model(plan)
    mesh = mesh or sharding.make_mesh(plan.mesh, devices)
    params = _abstract_params(model, plan.model.family, plan.seq_len, mesh)
    return Scorer(**_scoring(plan, model, mesh, params, tokenizer))


def _scoring(plan: Plan, model, mesh, abstract_params, tokenizer) -> dict:
    """A `Scorer`'s fields, around the parameters' ShapeDtypeStructs (with shardings)."""
    family = plan.model.family
    task = tasks.get(plan.task)
    args = task.args(dict(plan.task_args))
    loss_fn = functools.partial(task.loss, **task.runtime_args(args, tokenizer, model.config))
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    frozen_models = tuple(task.frozen_models(args))
    return dict(
        plan=plan,
        model=model,
        task=task,
        loss_fn=loss_fn,
        mesh=mesh,
        abstract_params=abstract_params,
        eval_fn=jax.jit(
            functools.partial(eval_step, model=model, loss_fn=loss_fn), out_shardings=repl
        ),
        frozen_models=frozen_models,
        abstract_frozen=tuple(
            _abstract_params(m, family, plan.seq_len, mesh) for m in frozen_models
        ),
    )


def build(plan: Plan, *, tokenizer=None, mesh=None, devices=None, dp_mechanism=None) -> Setup:
    """The model, task, optimizer and jitted steps of a run's plan (pjx.plan).
    `dp_mechanism`: fields of the DP-SGD step's `grads.DP` to replace, or a function of
    (abstract params, trainable mask) that returns them (pjx.privacy.audit's canaries)."""
    model = _model(plan)
    mesh = mesh or sharding.make_mesh(plan.mesh, devices)
    tx, lr_fn = _optimizer(plan)
    init_state, abstract, state_sh = _state(plan, model, tx, mesh)
    abstract_state = _with_shardings(abstract, state_sh)
    sc = _scoring(plan, model, mesh, abstract_state.params, tokenizer)
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch_sh = sharding.batch_sharding(mesh, plan.batch.rows)
    frozen_sh = [jax.tree.map(lambda a: a.sharding, a) for a in sc["abstract_frozen"]]
    trainable = trainable_mask(plan, abstract.params)
    dp = _dp(plan, abstract.params, trainable, dp_mechanism)
    step = functools.partial(train_step, model=model, loss_fn=sc["loss_fn"], tx=tx, lr_fn=lr_fn,
                             accum_steps=plan.batch.accum_steps, batch_sharding=batch_sh,
                             dp=dp, trainable=trainable, ema_decay=plan.ema_decay)  # fmt: skip
    return Setup(
        **sc,
        trainable=trainable,
        state_shardings=state_sh,
        abstract_state=abstract_state,
        batch_sharding=batch_sh,
        init=jax.jit(init_state, out_shardings=state_sh),
        # The state is donated: a step updates its buffers in place.
        step_fn=jax.jit(
            step,
            in_shardings=(state_sh, batch_sh, *frozen_sh),
            out_shardings=(state_sh, repl),
            donate_argnums=0,
        ),  # fmt: skip
    )


def state_target(plan: Plan, mesh) -> TrainState:
    """The train state of `plan` as ShapeDtypeStructs on their shardings over `mesh`, what a
    checkpoint restores onto, without building the steps. Equal to `build(plan).
    abstract_state`: the state's shapes do not depend on the batch or DP-SGD's noise."""
    _, abstract, state_sh = _state(plan, _model(plan), _optimizer(plan)[0], mesh)
    return _with_shardings(abstract, state_sh)


def _model(plan: Plan):
    family = plan.model.family
    model = models.create(family, plan.model.size, **plan.model.fields)
    return lora.adapted(model, plan.trainable.lora, family)


def _optimizer(plan: Plan):
    """(optax transformation, learning-rate schedule)."""
    return optim.make(
        plan.optimizer, plan.loop.steps, frozen=_lora_frozen(plan), heads=plan.trainable.heads
    )


def _lora_frozen(plan: Plan):
    """LoRA: params -> bool pytree, True for the base weights (only the adapters and the
    task's heads train); None without LoRA."""
    if not plan.trainable.lora:
        return None
    cfg, family = plan.trainable.lora, plan.model.family
    return lambda p: jax.tree.map(lambda t: not t, lora.trainable(p, cfg, family))


def trainable_mask(plan: Plan, params):
    """Which parameters train (static): frozen ones get no gradient, no DP clipping, no
    optimizer state, and count in no gradient norm."""
    trainable = jax.tree.map(lambda _: True, params)
    if plan.trainable.freeze:
        frozen = optim.frozen_mask(params, plan.trainable.freeze)
        trainable = jax.tree.map(lambda f: not f, frozen)
    by_lora = _lora_frozen(plan)
    if by_lora is not None:
        trainable = jax.tree.map(lambda t, f: t and not f, trainable, by_lora(params))
    return trainable


def _initializers(plan: Plan, model, tx):
    """(rng -> boxed params, rng -> TrainState) of the model."""
    inputs = models.example_inputs(plan.model.family, model.config, 1, plan.seq_len)

    def init_params(rng):
        return model.init({"params": rng, "dropout": rng}, **inputs)["params"]

    def init_state(rng):
        k_params, k_state = jax.random.split(rng)
        params = nn.meta.unbox(init_params(k_params))
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=k_state,
            ema=params if plan.ema_decay else None,
        )

    return init_params, init_state


def _state(plan: Plan, model, tx, mesh):
    """(rng -> TrainState, its ShapeDtypeStructs, its shardings); LoRA targets checked."""
    init_params, init_state = _initializers(plan, model, tx)
    boxed = jax.eval_shape(init_params, jax.random.PRNGKey(0))
    if plan.trainable.lora:
        lora.check(boxed, plan.trainable.lora, plan.model.family)
    abstract = jax.eval_shape(init_state, jax.random.PRNGKey(0))
    return init_state, abstract, _state_shardings(boxed, abstract, mesh, plan.ema_decay)


def _state_shardings(boxed, abstract, mesh, ema_decay) -> TrainState:
    param_sh = sharding.param_shardings(boxed, mesh)
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return TrainState(
        step=repl,
        params=param_sh,
        opt_state=sharding.mirror_shardings(abstract.opt_state, abstract.params, param_sh, mesh),
        rng=repl,
        ema=param_sh if ema_decay else None,
    )


def _with_shardings(tree, shardings):
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings
    )


def _abstract_params(model, family: str, seq_len, mesh):
    """A frozen model's parameters as ShapeDtypeStructs, sharded as a model's are."""
    inputs = models.example_inputs(family, model.config, 1, seq_len)
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **inputs))["params"]
    return _with_shardings(nn.meta.unbox(boxed), sharding.param_shardings(boxed, mesh))


def _dp(plan: Plan, params, trainable, replace):
    """The plan's DP-SGD mechanism with `replace`'s fields (pjx.privacy.audit), None without."""
    if plan.dp is None:
        return None
    if callable(replace):
        replace = replace(params, trainable)
    return dataclasses.replace(plan.dp, **(replace or {}))


def with_frozen(s: Scorer, trees) -> Scorer:
    """`s` with its frozen models' parameters (`trees`, host or device arrays in the
    layout of `s.abstract_frozen`) placed on their shardings."""
    if len(trees) != len(s.abstract_frozen):
        raise ValueError(f"{len(s.abstract_frozen)} frozen parameter trees, got {len(trees)}")
    placed = tuple(
        jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), t, a)
        for t, a in zip(trees, s.abstract_frozen)
    )
    return dataclasses.replace(s, frozen=placed)


def random_frozen(s: Scorer, seed: int = 0) -> Scorer:
    """`s` with freshly initialised frozen parameters: for timing and tests (`pjx bench`),
    never for training (pjx.run loads the real ones)."""
    trees = []
    for m, a in zip(s.frozen_models, s.abstract_frozen):
        inputs = models.example_inputs(s.plan.model.family, m.config, 1, 8)
        init = lambda m=m, i=inputs: nn.meta.unbox(m.init(jax.random.PRNGKey(seed), **i)["params"])
        out_sh = jax.tree.map(lambda x: x.sharding, a)
        trees.append(jax.jit(init, out_shardings=out_sh)())
    return dataclasses.replace(s, frozen=tuple(trees))


def create_state(s: Setup, seed: int, *, secret: int | None = None) -> TrainState:
    """A fresh state: parameters from `seed`; the step key (dropout, masking, DP noise)
    from `secret` when given (DP-SGD: pjx.privacy.secret), else from `seed`."""
    # The out_shardings place every parameter; no activation constraint is needed here.
    state = s.init(jax.random.PRNGKey(seed))
    if secret is not None:
        key = jax.device_put(_key_data(secret), s.state_shardings.rng)
        state = state.replace(rng=key)
    return state


def _key_data(seed: int):
    """A threefry key (two uint32 words) from the low 64 bits of a secret seed."""
    return np.array([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF], np.uint32)


def abstract_batch(s: Setup, batch):
    """The global batch (padded under DP-SGD) whose share of this process is `batch`, as
    ShapeDtypeStructs with the batch sharding: what the train step compiles for."""
    G = s.plan.batch.rows
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((G, *x.shape[1:]), x.dtype, sharding=s.batch_sharding),
        batch,
    )


def trim_padding(s: Scorer, batch: dict) -> dict:
    """`batch` cut to the smallest multiple of `data.length_bucket` columns that holds the
    longest row of the global batch (the task's `padded_keys`; other arrays as they are).

    Columns past every row's attention mask only carry padding that attention and pooling
    mask out, so the loss is the same; a batch of short sentences then costs its length,
    not seq_len (SST-2 at seq_len 64: most batches fit 48). Each width compiles once. Every
    process must feed the same shape, so the width is the largest over processes. Dropout
    draws its masks per shape: with dropout on, a trimmed run is as random as a padded one,
    not the same draw."""
    multiple, keys = s.plan.loop.length_bucket, s.task.padded_keys
    if not multiple or not keys or "attention_mask" not in batch:
        return batch
    mask = np.asarray(batch["attention_mask"])
    full = mask.shape[1]
    used = np.flatnonzero(mask.any(axis=0))
    longest = int(used[-1]) + 1 if used.size else 1
    width = distributed.max_over_processes(min(full, -(-longest // multiple) * multiple))
    if width >= full:
        return batch
    return {k: np.asarray(v)[:, :width] if k in keys else v for k, v in batch.items()}


def compile_step(s: Setup, batch):
    """AOT-compile the train step for the shapes of this process's share of a batch."""
    with sharding.context(s.mesh):
        return s.step_fn.lower(
            s.abstract_state, abstract_batch(s, batch), *s.abstract_frozen
        ).compile()


def describe(s: Setup) -> str:
    trained, params = lora.count(s.abstract_state.params, s.trainable)
    pb = sharding.per_device_bytes(s.abstract_state.params, s.state_shardings.params)
    ob = sharding.per_device_bytes(s.abstract_state.opt_state, s.state_shardings.opt_state)
    return (
        f"{sharding.describe(s.mesh)}\nmodel {s.plan.model.family}/"
        f"{s.plan.model.size}: {params:,} parameters, {trained:,} trained "
        f"({100 * trained / max(params, 1):.2f}%); per device: params {pb / 2**20:.2f} MiB, "
        f"optimizer state {ob / 2**20:.2f} MiB"
    )


def evaluate(s: Scorer, params, batches: Iterable, *, seed: int = 0, max_batches: int = 0) -> dict:
    """The task's metrics over every batch of `batches` (sums on device, one sync)."""
    total = metric_sums(s, params, batches, seed=seed, max_batches=max_batches)
    return {} if total is None else s.task.finalize(total)


def metric_sums(s: Scorer, params, batches: Iterable, *, seed: int = 0, max_batches: int = 0):
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
            b = trim_padding(s, dict(batch))
            rows = len(next(iter(b.values())))
            b.setdefault("weight", np.ones((rows,), np.float32))
            G = getattr(batches, "global_batch_size", rows * jax.process_count())
            sh = sharding.batch_sharding(s.mesh, G)
            gb, k = sharding.global_batch(b, sh), jax.random.fold_in(key, i)
            mets = s.eval_fn(params, gb, k, *s.frozen)
            total = mets if total is None else jax.tree.map(jnp.add, total, mets)
    return None if total is None else distributed.host_value(total)
