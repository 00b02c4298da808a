"""Every choice the layers make by backend or device count, in one place: which attention
kernel runs, how a projection contracts on one device, how a lookup table takes its
gradient, and whether jax will compute on the CPU at all (decided before a backend starts).

Each choice keeps the result the same up to summation order; the figures that motivated
them are in BENCHMARKS.md ("CPU: the figures behind pjx's XLA:CPU choices").
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import pkgutil

import jax
import jax.numpy as jnp

# The attention kernels (`attention_implementation`): the explicit einsum form, XLA's fused
# `jax.nn.dot_product_attention`, cuDNN's flash attention.
ATTENTION_IMPLEMENTATIONS = ("einsum", "xla", "cudnn")
CUDNN_DTYPES = ("bfloat16", "float16")


def check_attention_impl(requested: str | None) -> None:
    """Raises ValueError unless `requested` is None or one of ATTENTION_IMPLEMENTATIONS."""
    if requested not in (None, *ATTENTION_IMPLEMENTATIONS):
        raise ValueError(
            f"model.attention_impl={requested!r}: pick one of {ATTENTION_IMPLEMENTATIONS} (or "
            "leave it unset: pjx picks the fastest here)"
        )


def attention_implementation(
    requested: str | None,
    dtype,
    backend: str | None = None,
    *,
    training: bool = False,
    lengths: tuple[int, int] | None = None,
) -> str:
    """The attention kernel to run: `requested` ("einsum" | "xla" | "cudnn") when it can
    run, else an error saying why. None picks cuDNN's flash attention where it can run (an
    NVIDIA GPU, bfloat16 / float16 compute, even query and key `lengths`); on a CPU the
    einsum form when `training` (the call is differentiated) and XLA's fused attention
    otherwise; XLA's fused attention elsewhere.

    Why even lengths: jax's cuDNN kernel refuses to differentiate attention over an odd
    query or key length (ViT's 197 patches + CLS: "Unsupported sequence length"), and a
    forward under `deterministic=True` may still be differentiated (attributions), so the
    automatic pick leaves odd lengths to XLA and only an explicit 'cudnn' in training fails.

    Why the CPU splits: `jax.nn.dot_product_attention` computes in a grouped layout with a
    unit group axis ([1, B, N, T, S] for plain multi-head attention), and XLA:CPU's
    YNNPACK fusions run the softmax backward's multiply-reduce over that rank-5 layout
    slower than over the same data in rank 4. The einsum form keeps rank 4, so its
    forward + backward is the faster one there, while the fused kernel's forward alone is
    (so inference keeps that).
    """
    backend = backend or jax.default_backend()
    check_attention_impl(requested)
    problem = None
    if backend != "gpu":
        problem = f"cuDNN attention runs on NVIDIA GPUs, and this backend is {backend!r}"
    elif jnp.dtype(dtype).name not in CUDNN_DTYPES:
        problem = (
            f"cuDNN flash attention takes {' / '.join(CUDNN_DTYPES)} inputs, not "
            f"{jnp.dtype(dtype).name}: set model.dtype=bfloat16"
        )
    elif lengths is not None and any(n % 2 for n in lengths) and (training or not requested):
        problem = (
            "jax's cuDNN flash attention differentiates only even sequence lengths, not "
            f"queries {lengths[0]} x keys {lengths[1]}"
        )
    if requested == "cudnn" and problem:
        raise ValueError(
            f"model.attention_impl='cudnn': {problem}; or use attention_impl='xla' (or leave "
            "it unset: pjx picks cuDNN where it can run)"
        )
    if requested is not None:
        return requested
    if training and backend == "cpu":  # cuDNN never runs there
        return "einsum"
    return "xla" if problem else "cudnn"


def one_device() -> bool:
    """Tracing for a single device: no mesh in scope (jax.set_mesh), or a mesh of one."""
    mesh = jax.sharding.get_abstract_mesh()
    return mesh.empty or mesh.size == 1


def contract(x, kernel, n_in: int):
    """x's last `n_in` dims against `kernel`'s first `n_in` -> [*x.shape[:-n_in],
    *kernel.shape[n_in:]], in the inputs' dtype.

    On one device as a single [tokens, in] x [in, out] matmul: its weight gradient is then a
    plain GEMM, which XLA:CPU runs faster than a 3-D dot_general's. Not under a mesh, where
    the reshapes would merge sharded dims (heads, batch).
    """
    if one_device():
        lead, feats = x.shape[: x.ndim - n_in], kernel.shape[n_in:]
        x2 = x.reshape(math.prod(lead), math.prod(kernel.shape[:n_in]))
        w2 = kernel.reshape(math.prod(kernel.shape[:n_in]), math.prod(feats))
        return (x2 @ w2).reshape(*lead, *feats)
    dims = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    return jax.lax.dot_general(x, kernel, (dims, ((), ())))


# Tables whose gradient is a one-hot matmul rather than a scatter-add: at most this many
# (ids x rows). XLA:CPU runs scatters serially; the matmul is tiny here and exact up to
# summation order.
ONE_HOT_GRAD_MAX = 1 << 22


@jax.custom_vjp
def _take_rows(table_VxD, ids):
    return jnp.take(table_VxD, ids, axis=0)


def _take_rows_fwd(table_VxD, ids):
    return jnp.take(table_VxD, ids, axis=0), (ids, table_VxD)  # the table: for its shape


def _take_rows_bwd(res, g):
    ids, table_VxD = res
    rows, dtype = table_VxD.shape[0], table_VxD.dtype
    one_hot = jax.nn.one_hot(ids, rows, dtype=g.dtype)
    grad_NxD = jnp.einsum("...n,...d->nd", one_hot, g, preferred_element_type=jnp.float32)
    return grad_NxD.astype(dtype), None


_take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)


def take_rows(table_VxD, ids):
    """`jnp.take(table, ids, axis=0)`; small tables (`ONE_HOT_GRAD_MAX`) take their gradient
    as a one-hot matmul instead of a scatter-add."""
    if math.prod(ids.shape) * table_VxD.shape[0] <= ONE_HOT_GRAD_MAX:
        return _take_rows(table_VxD, ids)
    return jnp.take(table_VxD, ids, axis=0)


def cpu_backend_expected() -> bool:
    """Whether jax will compute on the CPU, decided without starting a backend (settings
    such as malloc's only take full effect before that): JAX_PLATFORMS when set, else
    whether an accelerator is installed at all (TPU's libtpu, or a PJRT plugin such as
    CUDA's, which jax finds through the `jax_plugins` entry points and namespace package)."""
    first = (jax.config.jax_platforms or "").split(",")[0].strip()
    if first:
        return first == "cpu"
    if importlib.util.find_spec("libtpu") is not None:
        return False
    if importlib.metadata.entry_points(group="jax_plugins"):
        return False
    try:
        import jax_plugins
    except ImportError:
        return True
    return not any(pkgutil.iter_modules(getattr(jax_plugins, "__path__", [])))
