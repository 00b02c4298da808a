"""The gradient of one logical batch: the one path every train step takes.

`gradients(loss_fn, params, batch, rng, ...)` splits the batch into `accum_steps` slices
(one splitter: slice j takes rows j, j+A, j+2A, ..., so with the batch sharded on its
leading axis every slice stays spread over all devices), sums over the slices with one
`lax.scan`, and returns (mean loss, metric sums, gradient):

- `dp=None`: the gradient of the mean loss. Each slice's mean loss is weighted by its
  count and the total divided by the total count, so `accum_steps` slices give the
  gradient of one large batch (for sums of several means, e.g. MLM + NSP, the secondary
  terms are weighted by the primary count).
- `dp=DP(...)`: DP-SGD (Abadi et al. 2016). Each example's gradient (each example a
  batch of one: the privacy unit) is clipped to `l2_norm_clip` and summed, by ghost
  clipping (pjx.ghost_clipping: norms from layer inputs and output gradients) or by
  jax_privacy's vmapped `clipped_grad` (a per-example gradient of every parameter; the
  only way through nn.scan / nn.remat); Gaussian noise of std l2_norm_clip *
  noise_multiplier is added once, in float32, from the step key (replicated: every
  device adds the same noise), and the sum is divided by `expected_batch_size`, a public
  constant, never the realised count. Rows with `weight` 0 (padding) add nothing. Each
  example's key comes from its position in the batch, so the result does not depend on
  `accum_steps`.

Host-side accounting (how much privacy the noise buys) is pjx.privacy's.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from pjx import ghost_clipping

CLIPPING = ("ghost", "vmap")


@dataclasses.dataclass(frozen=True)
class Canaries:
    """Gradient canaries for the one-run privacy audit (pjx.privacy.audit): canary j is the
    gradient value * e_coords[j] on trainable leaf `leaf` (flat coordinates), present in
    the data set when `included[j]`, and then drawn into each step's batch with
    probability `sampling_rate`, like a real example. Its score is what the step
    releases at its coordinate (the privatised gradient)."""

    leaf: int  # index among the trainable leaves, in tree order
    coords: tuple[int, ...]
    included: tuple[bool, ...]
    value: float  # the canary's norm: l2_norm_clip for an honest canary
    sampling_rate: float
    # > 0: "example" canaries. The drawn ones (at most `slots` a step) are a batch of
    # examples whose loss is value * (their coordinate), per-example clipped by the run's
    # own clipping (dp.clipping) before they join the sum, so clipping must scale them to
    # l2_norm_clip. 0: added to the clipped sum as they are.
    slots: int = 0


@dataclasses.dataclass(frozen=True)
class DP:
    """The DP-SGD mechanism of a run (static: compiled into the step)."""

    l2_norm_clip: float
    noise_multiplier: float
    expected_batch_size: int
    microbatch_size: int = 0  # examples per per-example-gradient chunk; 0 = a whole slice
    clipping: str = "ghost"  # "ghost" | "vmap"
    canaries: Canaries | None = None

    def __post_init__(self):
        if self.clipping not in CLIPPING:
            raise ValueError(f"dp.clipping={self.clipping!r}: pick one of {CLIPPING}")


def chunk_rows(rows: int, size: int) -> int:
    """Rows per per-example-gradient chunk: the largest divisor of `rows` up to `size`
    (`dp.microbatch_size`; 0 = all rows at once), so any padded batch splits evenly."""
    if not size or size >= rows:
        return rows
    return max(d for d in range(1, size + 1) if rows % d == 0)


def split(tree, parts: int, batch_sharding=None):
    """[B, ...] leaves -> [parts, B / parts, ...]: slice j holds rows j, j + parts, ..."""

    def one(x):
        x = jnp.moveaxis(x.reshape(x.shape[0] // parts, parts, *x.shape[1:]), 1, 0)
        if batch_sharding is not None:
            spec = jax.sharding.PartitionSpec(None, *batch_sharding.spec)
            x = jax.lax.with_sharding_constraint(
                x, jax.sharding.NamedSharding(batch_sharding.mesh, spec)
            )
        return x

    return jax.tree.map(one, tree)


def _scan_sum(fn, slices):
    """sum_j fn(slice_j) for the leading axis of `slices`, by one lax.scan."""

    def body(carry, xs):
        return jax.tree.map(jnp.add, carry, fn(xs)), None

    zeros = jax.eval_shape(fn, jax.tree.map(lambda x: x[0], slices))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
    return jax.lax.scan(body, zeros, slices)[0]


def gradients(
    loss_fn,
    params,
    batch,
    rng,
    *,
    accum_steps: int = 1,
    batch_sharding=None,
    trainable=None,
    dp: DP | None = None,
    loss_args=(),
):
    """(loss, metric sums, gradient) of one logical batch (see the module docstring).

    `loss_fn(params, batch, rng, *loss_args) -> (mean loss, metrics)` with
    `metrics["count"]` the number of loss terms; `loss_args` are not differentiated (a
    frozen teacher's parameters). `trainable`: a bool pytree like params; under DP, False
    leaves get a zero gradient and do not count towards the clip norm."""
    if dp is None and accum_steps <= 1:  # the plain step
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, metrics), g = grad_fn(params, batch, rng, *loss_args)
        return loss, metrics, g
    if loss_args:
        loss_fn = _with_args(loss_fn, loss_args)
    if dp is None:
        return _accumulated_gradients(loss_fn, params, batch, rng, accum_steps, batch_sharding)
    return _private_gradients(
        loss_fn, params, batch, rng, dp, accum_steps, batch_sharding, trainable
    )


def _with_args(loss_fn, args):
    """loss_fn with its trailing non-differentiated arguments bound: (params, batch, rng)."""
    return lambda p, b, r: loss_fn(p, b, r, *args)


def _accumulated_gradients(loss_fn, params, batch, rng, accum_steps, batch_sharding):
    """The mean gradient over `accum_steps` slices, weighted by their loss terms."""

    def weighted(p, mb, r):
        loss, metrics = loss_fn(p, mb, r)
        count = jax.lax.stop_gradient(metrics["count"])
        return loss * count, (loss, metrics)

    wgrad_fn = jax.value_and_grad(weighted, has_aux=True)

    def one(xs):
        i, mb = xs
        (_, (loss, metrics)), g = wgrad_fn(params, mb, jax.random.fold_in(rng, i))
        return g, loss * metrics["count"], metrics

    slices = (jnp.arange(accum_steps), split(batch, accum_steps, batch_sharding))
    gsum, lsum, msum = _scan_sum(one, slices)
    total = jnp.maximum(msum["count"], 1.0)
    return lsum / total, msum, jax.tree.map(lambda g: g / total, gsum)


def _private_gradients(loss_fn, params, batch, rng, dp, accum_steps, batch_sharding, trainable):
    leaves, treedef = jax.tree.flatten(params)
    mask = [True] * len(leaves) if trainable is None else jax.tree.leaves(trainable)
    train_leaves = [x for x, m in zip(leaves, mask) if m]
    fixed = [x for x, m in zip(leaves, mask) if not m]

    def join(trained):
        it_t, it_f = iter(trained), iter(fixed)
        return jax.tree.unflatten(treedef, [next(it_t) if m else next(it_f) for m in mask])

    k_examples, k_noise = jax.random.split(rng)
    B = len(next(iter(batch.values())))
    keys = jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(k_examples, i)))(jnp.arange(B))

    def vmapped(micro, micro_keys):
        from jax_privacy import clipping  # heavy (scipy, pydantic): only here

        def example_loss(trained, example, key_data):
            return loss_fn(join(trained), example, jax.random.wrap_key_data(key_data[0]))

        rows = len(micro_keys)
        size = chunk_rows(rows, int(dp.microbatch_size))
        grad_fn = clipping.clipped_grad(
            example_loss,
            has_aux=True,
            l2_clip_norm=float(dp.l2_norm_clip),
            batch_argnums=(1, 2),
            keep_batch_dim=True,
            # jax_privacy reshapes into chunks of this size, which must divide the rows.
            microbatch_size=size if size < rows else None,
            dtype=jnp.float32,
        )
        g, aux = grad_fn(train_leaves, micro, micro_keys)
        return g, jax.tree.map(lambda v: jnp.sum(v, axis=0), aux.aux)  # per-example sums

    # Each slice's clipped sum. Chosen here, not in a dispatching function, so the trace
    # goes straight from this function into the clipping (benchmarks/call_depth.py).
    rows = B // max(accum_steps, 1)
    size = chunk_rows(rows, int(dp.microbatch_size))
    ghost = functools.partial(
        ghost_clipping.clipped_sum, loss_fn, params, mask, l2_norm_clip=float(dp.l2_norm_clip)
    )
    if dp.clipping == "vmap":  # clipped_grad splits into chunks itself
        clipped = vmapped
    elif size == rows:
        clipped = ghost
    else:

        def clipped(micro, micro_keys):  # in chunks of `size` rows, summed
            return _scan_sum(lambda c: ghost(*c), split((micro, micro_keys), rows // size))

    if accum_steps <= 1:
        gsum, msum = clipped(batch, keys)
    else:
        slices = split((batch, keys), accum_steps, batch_sharding)
        gsum, msum = _scan_sum(lambda xs: clipped(*xs), slices)
    gsum = list(gsum)
    if dp.canaries is not None and dp.canaries.slots:
        gsum, msum = _add_clipped_canaries(gsum, msum, dp, jax.random.fold_in(rng, 0x43414E))
    elif dp.canaries is not None:
        gsum = _add_canaries(gsum, dp.canaries, jax.random.fold_in(rng, 0x43414E))
    std = float(dp.l2_norm_clip) * float(dp.noise_multiplier)
    noisy = [
        (g + std * z) / float(dp.expected_batch_size)
        for g, z in zip(gsum, standard_normal(k_noise, [g.shape for g in gsum]))
    ]
    if dp.canaries is not None:
        c = dp.canaries
        msum = dict(msum, canary_scores=noisy[c.leaf].reshape(-1)[jnp.asarray(c.coords)])
    it = iter(noisy)
    grads = jax.tree.unflatten(
        treedef, [next(it) if m else jnp.zeros_like(x) for x, m in zip(leaves, mask)]
    )
    loss = msum["loss_sum"] / jnp.maximum(msum["count"], 1.0)
    return loss, msum, grads


NOISE_CHUNK = 1 << 20  # at most this many standard normals per iteration of the loop


def standard_normal(key, shapes):
    """Independent N(0, 1) float32 arrays of `shapes`, drawn in a loop over equal chunks of
    at most NOISE_CHUNK numbers (chunk i from fold_in(key, i)), then cut into the shapes.

    Why a loop: as a plain expression, XLA:CPU fuses the generator (the Threefry hash and
    erf_inv) into every consumer of the noisy gradient (the optimizer's passes over it) and
    so draws each number about five times per step; a loop's result is computed once.
    Equal chunks: fewer than `chunks` numbers are drawn and not used."""
    sizes = [math.prod(s) for s in shapes]
    total = max(1, sum(sizes))
    chunks = -(-total // NOISE_CHUNK)
    size = -(-total // chunks)

    def draw(_, i):
        return None, jax.random.normal(jax.random.fold_in(key, i), (size,), jnp.float32)

    flat = jax.lax.scan(draw, None, jnp.arange(chunks))[1].reshape(-1)
    offsets = np.cumsum([0, *sizes])
    return [flat[a:b].reshape(s) for a, b, s in zip(offsets[:-1], offsets[1:], shapes)]


def _add_canaries(gsum, c: Canaries, key):
    """The clipped sum with the canaries drawn into this step added (before the noise)."""
    drawn = jax.random.bernoulli(key, c.sampling_rate, (len(c.coords),))
    drawn = drawn & jnp.asarray(c.included)
    g = gsum[c.leaf]
    flat = g.reshape(-1).astype(jnp.float32)
    flat = flat.at[jnp.asarray(c.coords)].add(c.value * drawn.astype(jnp.float32))
    gsum[c.leaf] = flat.reshape(g.shape).astype(g.dtype)
    return gsum


def _add_clipped_canaries(gsum, msum, dp: DP, key):
    """The clipped sum with the drawn canaries added as examples (Canaries.slots): each
    drawn canary is a row whose loss is value * (its coordinate), clipped per example by
    ghost_clipping.clipped_sum or jax_privacy's clipped_grad, as the run's rows are. The
    rows see only the canaries' coordinates (a parameter of m entries), so a step costs
    slots x m, not slots x the leaf. `canaries_dropped` counts draws past `slots`."""
    c = dp.canaries
    drawn = jax.random.bernoulli(key, c.sampling_rate, (len(c.coords),)) & jnp.asarray(c.included)
    (idx,) = jnp.nonzero(drawn, size=c.slots, fill_value=0)
    count = jnp.sum(drawn)
    rows = {"canary": idx, "weight": (jnp.arange(c.slots) < count).astype(jnp.float32)}
    keys = jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(key, i)))(idx)
    coords = jnp.asarray(c.coords)
    g = gsum[c.leaf]
    at = [g.reshape(-1)[coords].astype(jnp.float32)]  # the canaries' coordinates

    def canary_loss(ps, row, _key):
        w = row["weight"]
        return float(c.value) * jnp.sum(w * ps[0][row["canary"]]), {"count": jnp.sum(w)}

    if dp.clipping == "vmap":
        from jax_privacy import clipping

        fn = clipping.clipped_grad(
            canary_loss, has_aux=True, l2_clip_norm=float(dp.l2_norm_clip),
            batch_argnums=(1, 2), keep_batch_dim=True, dtype=jnp.float32,
        )  # fmt: skip
        (added,), _ = fn(at, rows, keys)
    else:
        (added,), _ = ghost_clipping.clipped_sum(
            canary_loss, at, [True], rows, keys, float(dp.l2_norm_clip)
        )
    flat = g.reshape(-1).astype(jnp.float32).at[coords].add(added)
    gsum[c.leaf] = flat.reshape(g.shape).astype(g.dtype)
    return gsum, dict(msum, canaries_dropped=jnp.maximum(count - c.slots, 0))
