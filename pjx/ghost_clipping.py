"""Clipped per-example gradient sums without per-example weight gradients.

DP-SGD needs each example's gradient norm, but materialising a [batch, *shape] gradient
for every kernel (what `vmap(grad)` does) costs batch x parameters of memory traffic per
step, and for an embedding table a scatter of that size. For a layer y = x W the
example's weight gradient is x^T g (g: the cotangent of y), so its norm needs only x and g
(Goodfellow 2015; "ghost clipping", Li et al. 2022; "book-keeping", Bu et al. 2023):

  ||x^T g||^2 = sum_ij (x x^T)_ij (g g^T)_ij        (or from x^T g itself when smaller)

and the clipped sum over examples is one matmul, sum_b c_b x_b^T g_b. Layers that read
the same input (query, key, value) share its Gram matrix: sum_k ||x^T g_k||^2 =
sum_ij (x x^T)_ij (sum_k g_k g_k^T)_ij. This module runs
one vmapped forward / backward per example *with respect to the layers' outputs only*
(a zero added to each covered layer's output, the way flax's `perturb` captures
intermediate gradients), so no weight gradient is formed per example; then computes the
norms and the clipped sums directly.

Covered: `pjx.nn.dense.Dense` (kernel, bias), `Logits`, and the lookup tables
`pjx.nn.embed.Embed` / `LearnedPositions` (||sum_t onehot(id_t) g_t||^2 =
sum_ts [id_t = id_s] g_t . g_s), each when called once per forward, when every
parameter it holds trains, and when the loss reaches its parameters through that call
alone (checked on the traced program: a table also read directly, as BERT's tied MLM
decoder reads the word embeddings, is not covered). Everything else that trains (norms,
a tied embedding used twice, LoRA adapters, convolutions, raw parameters) gets an
ordinary per-example gradient inside the same vmapped backward. The result equals
clipping `vmap(grad)` to float rounding (tests/test_privacy.py). Layers inside lifted
transforms (`nn.scan`, `nn.remat`) cannot hand their activations out of the transform:
use `vmap` clipping there.
"""

from __future__ import annotations

import collections
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from pjx.nn.dense import Dense, Logits
from pjx.nn.embed import Embed, LearnedPositions

_TABLES = (Embed, LearnedPositions)
_MATMULS = (Dense, Logits)
_PARAMS = {Dense: {"kernel", "bias"}, Logits: {"kernel"}}


class _Tape:
    """What one example's forward pass saw: per covered call, its input (and the zero
    added to its output, whose gradient is the output's cotangent)."""

    def __init__(self, zeros=None, cut=()):
        self.zeros = zeros  # None while discovering which calls there are
        self.cut = set(cut)  # calls whose output is replaced by zeros (`_raw_uses`)
        self.calls = {}  # key -> (module type, module path, output shape/dtype, n_in)
        self.uses = collections.Counter()  # module path -> calls of any method
        self.inputs = {}
        self.same_input = {}  # key -> the first key whose call read the very same array

    def intercept(self, next_fun, args, kwargs, context):
        module, method = context.module, context.method_name
        if not isinstance(module, _TABLES + _MATMULS) or method not in ("__call__", "attend"):
            return next_fun(*args, **kwargs)
        path = "/".join(module.path)
        key = f"{path}#{self.uses[path]}"
        self.uses[path] += 1
        y = next_fun(*args, **kwargs)
        if method != "__call__":
            return y
        if key in self.cut:
            return jnp.zeros(y.shape, y.dtype)
        if self.zeros is None:
            n_in = getattr(module, "n_in", 1)
            self.calls[key] = (type(module), path, jax.ShapeDtypeStruct(y.shape, y.dtype), n_in)
            return y
        if key in self.zeros:
            # query / key / value read one array: record it once (they share its Gram matrix)
            first = next((k for k, x in self.inputs.items() if x is args[0]), key)
            self.same_input[key] = first
            if first == key:
                self.inputs[key] = args[0]
            y = y + self.zeros[key].astype(y.dtype)
        return y


def _covered(tape: _Tape, trainable_paths: dict) -> dict:
    """key -> (kind, path, n_in, {param name: flat path}) for the calls handled here."""
    names = collections.defaultdict(dict)
    for p in trainable_paths:
        module, _, name = p.rpartition("/")
        names[module][name] = p
    out = {}
    for key, (kind, path, _, n_in) in tape.calls.items():
        held = names.get(path, {})
        allowed = _PARAMS.get(kind, {"embedding"})
        if tape.uses[path] != 1 or not held or not set(held) <= allowed:
            continue
        if kind is Dense and "kernel" not in held:
            continue
        out[key] = (kind, path, n_in, held)
    return out


def _gram_sq_norm(a_BxNxI, bs):
    """Per-example sum_k ||a^T b_k||_F^2 over the output gradients `bs` of the layers that
    read the input `a`, by whichever of the two forms costs fewer multiplies: the Gram
    matrices (a a^T, one for all the layers, and sum_k b_k b_k^T) or each a^T b_k itself.
    At a tie the Gram form: it runs faster on XLA:CPU (benchmarks/compare_dp.py)."""
    _, N, I = a_BxNxI.shape
    O = sum(b.shape[-1] for b in bs)
    if N * N * (I + O) <= N * I * O:
        aa = jnp.einsum("bni,bmi->bnm", a_BxNxI, a_BxNxI)
        b = jnp.concatenate(bs, axis=-1) if len(bs) > 1 else bs[0]
        bb = jnp.einsum("bno,bmo->bnm", b, b)
        return jnp.sum(aa * bb, axis=(1, 2))
    return sum(jnp.sum(jnp.square(jnp.einsum("bni,bno->bio", a_BxNxI, b)), axis=(1, 2)) for b in bs)


def clipped_sum(loss_fn, params, trainable, batch, keys, l2_norm_clip: float):
    """(sum_b clip(grad_b) as a list over the trainable leaves of `params` in tree order,
    per-example metric sums).

    `loss_fn(params, example_batch_of_one, key)` -> (loss, metrics); `keys`: per-example
    PRNG key data [B, ...]; `trainable`: a bool per leaf of `params` (tree order)."""
    leaves, treedef = jax.tree.flatten(params)

    def one_loss(ps, example, key_data, tape):
        with nn.intercept_methods(tape.intercept):
            return loss_fn(ps, example, jax.random.wrap_key_data(key_data))

    tape, index, covered = _discover(loss_fn, params, trainable, batch, keys[0])
    ghost = {p for *_, held in covered.values() for p in held.values()}
    other = [i for p, i in index.items() if p not in ghost]

    same_input = {}  # static: filled while per_example is traced

    def per_example(other_leaves, zeros, example, key_data):
        full = list(leaves)
        for i, x in zip(other, other_leaves):
            full[i] = x
        tape = _Tape(zeros)
        example = jax.tree.map(lambda x: x[None], example)
        loss, mets = one_loss(jax.tree.unflatten(treedef, full), example, key_data, tape)
        same_input.update(tape.same_input)
        return loss, (mets, tape.inputs)

    zeros = {
        k: jnp.zeros((len(keys), *tape.calls[k][2].shape), tape.calls[k][2].dtype) for k in covered
    }
    grad = jax.grad(per_example, argnums=(0, 1), has_aux=True)
    (g_other, g_out), (mets, inputs) = jax.vmap(grad, in_axes=(None, 0, 0, 0))(
        [leaves[i] for i in other], zeros, batch, keys
    )

    # Each example's squared norm, then its clip factor (jax_privacy's clip_pytree rule).
    f32 = lambda x: x.astype(jnp.float32)
    sq = sum(jnp.sum(jnp.square(f32(g)), axis=tuple(range(1, g.ndim))) for g in g_other)
    flat_in, flat_out = {}, {}
    readers = collections.defaultdict(list)  # (input's first key, its shape) -> matmuls
    for key, (kind, _, n_in, held) in covered.items():
        first = same_input.get(key, key)
        x, g = inputs[first], f32(g_out[key])
        B = g.shape[0]
        if kind in _TABLES:
            ids = x.reshape(B, -1)
            g = g.reshape(B, ids.shape[1], -1)
            same = (ids[:, :, None] == ids[:, None, :]).astype(jnp.float32)
            sq = sq + jnp.sum(same * jnp.einsum("bnd,bmd->bnm", g, g), axis=(1, 2))
        else:
            I = math.prod(x.shape[x.ndim - n_in :])
            x = f32(x).reshape(B, -1, I)
            g = g.reshape(B, x.shape[1], -1)
            readers[first, x.shape].append(key)
            if "bias" in held:
                sq = sq + jnp.sum(jnp.square(jnp.sum(g, axis=1)), axis=-1)
        flat_in[key], flat_out[key] = x, g
    for keys_ in readers.values():
        sq = sq + _gram_sq_norm(flat_in[keys_[0]], [flat_out[k] for k in keys_])
    norm = jnp.sqrt(sq)
    scale = jnp.nan_to_num(jnp.minimum(1.0, l2_norm_clip / norm), nan=0.0, posinf=0.0)

    sums = [None] * len(leaves)
    for i, g in zip(other, g_other):
        sums[i] = jnp.einsum("b,b...->...", scale, f32(g)).astype(leaves[i].dtype)
    for key, (kind, _, _, held) in covered.items():
        for name, p in held.items():
            s = _scaled_sum(kind, name, flat_in[key], flat_out[key], scale, leaves[index[p]].shape)
            sums[index[p]] = s.astype(leaves[index[p]].dtype)
    msum = jax.tree.map(lambda v: jnp.sum(v, axis=0), mets)
    return [s for s, t in zip(sums, trainable) if t], msum


def _scaled_sum(kind: str, name: str, x, g, scale, shape):
    """sum_b scale_b * (the gradient of one covered parameter of example b), from the
    layer's flattened inputs `x` and output gradients `g`."""
    if kind in _TABLES:
        table = jnp.zeros(shape, jnp.float32)
        return table.at[x.reshape(-1)].add((g * scale[:, None, None]).reshape(-1, shape[-1]))
    if name == "kernel":
        # sum_b c_b x_b^T g_b as one 2-D matmul of the scaled input, transposed first:
        # given the 3-D einsum, XLA:CPU fuses the input's producer (GELU) into a
        # transposing copy that took 3x the matmul itself.
        xt = (x * scale[:, None, None]).reshape(-1, x.shape[-1]).T
        return (xt @ g.reshape(-1, g.shape[-1])).reshape(shape)
    return jnp.einsum("b,bno->o", scale, g).reshape(shape)


def _discover(loss_fn, params, trainable, batch, key_data):
    """(tape of one example's forward: the covered calls and their output shapes,
    {trainable path: leaf index}, the calls handled here: `_covered`)."""
    paths = [
        jax.tree_util.keystr(p, simple=True, separator="/")
        for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    ]
    index = {p: i for i, (p, t) in enumerate(zip(paths, trainable)) if t}
    tape = _Tape()
    first = jax.tree.map(lambda x: x[:1], batch)
    with nn.intercept_methods(tape.intercept):
        jax.eval_shape(loss_fn, params, first, jax.random.wrap_key_data(key_data))
    covered = _covered(tape, index)
    raw = _raw_uses(loss_fn, params, index, covered, first, key_data)
    return tape, index, {k: v for k, v in covered.items() if not set(v[3].values()) & raw}


def _raw_uses(loss_fn, params, index, covered, first, key_data) -> set:
    """The covered parameters that reach the loss other than through their covered call
    (BERT's MLM decoder reads the word embedding table directly: its share of the
    gradient would be lost). Found on the program itself: with every covered call's output
    replaced by zeros, which parameters does the loss still depend on?"""
    paths = sorted({p for *_, held in covered.values() for p in held.values()})
    if not paths:
        return set()
    leaves, treedef = jax.tree.flatten(params)

    def loss(ghost_leaves):
        full = list(leaves)
        for p, x in zip(paths, ghost_leaves):
            full[index[p]] = x
        tape = _Tape(cut=covered)
        with nn.intercept_methods(tape.intercept):
            out, _ = loss_fn(
                jax.tree.unflatten(treedef, full), first, jax.random.wrap_key_data(key_data)
            )
        return out

    args = [jax.ShapeDtypeStruct(leaves[index[p]].shape, leaves[index[p]].dtype) for p in paths]
    program = jax.make_jaxpr(loss)(args).jaxpr
    reached = _dependencies(program)
    return {paths[i] for i in reached}


def _dependencies(program) -> set:
    """Indices of the program's inputs that its first output depends on (an equation's
    outputs depend on all of its inputs: exact for primitives, conservative for nested
    programs, which only ever adds a per-example gradient)."""
    deps = {v: {i} for i, v in enumerate(program.invars)}
    for eqn in program.eqns:
        found = set()
        for v in eqn.invars:
            if not hasattr(v, "val"):  # literals carry no dependency
                found |= deps.get(v, set())
        for v in eqn.outvars:
            deps[v] = found
    out = program.outvars[0]
    return set() if hasattr(out, "val") else deps.get(out, set())


def covered_paths(loss_fn, params, trainable, batch, key) -> set:
    """The parameter paths whose per-example norms come from layer inputs / output
    gradients (the rest get per-example gradients): for reports and tests."""
    _, _, covered = _discover(loss_fn, params, trainable, batch, jax.random.key_data(key))
    return {p for *_, held in covered.values() for p in held.values()}
