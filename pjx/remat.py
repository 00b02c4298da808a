"""`model.remat` for a stack of unscanned blocks: `jax.checkpoint` whose recomputation
cannot run before the backward pass reaches the block.

`jax.checkpoint(prevent_cse=True)` ties a block's recomputation to its output cotangent
with an optimization barrier, but XLA:CPU expands barriers before it schedules, and its
scheduler then recomputes each block right after the forward pass: the activations are
all alive at once again and remat saves nothing (a scanned stack is spared by its loop).
Here the saved residuals take a data dependence on the cotangent instead (`r + 0 * ct`,
which XLA does not fold for floats because of NaN / Inf), so the recomputation waits for
it on every backend; the values are unchanged whenever the cotangent is finite.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax.core import lift
from flax.linen import transforms


def checkpoint(fun, *, policy=None, static_argnums: tuple[int, ...] = ()):
    """`jax.checkpoint(fun, policy=...)` (`policy` None: save nothing) whose recomputation
    depends on the output cotangent. Residuals that are leaves of the first argument (the
    parameters) are passed as they are: they are not recomputed."""
    ckpt = jax.checkpoint(fun, policy=policy, prevent_cse=True, static_argnums=static_argnums)

    def call(*args):
        dynamic = [i for i in range(len(args)) if i not in static_argnums]

        def f(*dyn):
            full = list(args)
            for i, a in zip(dynamic, dyn):
                full[i] = a
            return ckpt(*full)

        is_param = []  # per residual leaf, found when `fwd` is traced

        @jax.custom_vjp
        def g(*dyn):
            return f(*dyn)

        def fwd(*dyn):
            out, vjp = jax.vjp(f, *dyn)
            params = {id(x) for x in jax.tree.leaves(dyn[0])} if dynamic[:1] == [0] else set()
            is_param[:] = [id(x) in params for x in jax.tree.leaves(vjp)]
            return out, vjp

        def bwd(vjp, ct):
            anchor = _anchor(ct)
            leaves, tree = jax.tree.flatten(vjp)
            leaves = [
                x if p or anchor is None or not jnp.issubdtype(x.dtype, jnp.floating)
                else x + (0 * anchor).astype(x.dtype)
                for x, p in zip(leaves, is_param)
            ]  # fmt: skip
            return jax.tree.unflatten(tree, leaves)(ct)

        g.defvjp(fwd, bwd)
        return g(*[args[i] for i in dynamic])

    return call


def _anchor(ct):
    """One element of the cotangent (the first floating leaf), or None."""
    for x in jax.tree.leaves(ct):
        if jnp.issubdtype(x.dtype, jnp.floating) and x.size:
            return x.reshape(-1)[0]
    return None


def _lifted(fn, variables=True, rngs=True, static_argnums=(), policy=None):
    """`flax.core.lift.checkpoint` with `checkpoint` above in place of `jax.checkpoint`."""

    def inner(scope_fn, repack_fn, variable_groups, rng_groups, *args):
        @functools.wraps(fn)
        def rematted(variable_groups, rng_groups, *args):
            scope = scope_fn(variable_groups, rng_groups)
            y = fn(scope, *args)
            return y, repack_fn(scope)

        static = tuple(i + 2 for i in static_argnums)  # after the two groups
        return checkpoint(rematted, policy=policy, static_argnums=static)(
            variable_groups, rng_groups, *args
        )

    return lift.pack(inner, (variables,), (variables,), (rngs,), name="remat")


def remat(module_cls, *, policy=None, static_argnums: tuple[int, ...] = ()):
    """`nn.remat(module_cls, policy=..., static_argnums=...)` (argument 0 is `self`) with
    the recomputation after the cotangent; the parameter paths are the module's own."""
    static = tuple(i - 1 for i in static_argnums)  # `self` is not passed on
    return transforms.lift_transform(_lifted, module_cls, static_argnums=static, policy=policy)
