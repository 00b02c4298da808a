"""Device mesh, the ONE logical-axis rules table, and state / batch shardings.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel + parameters and
optimizer state sharded on the `embed` axis, ZeRO-3 style) and `tensor`
(Megatron-style tensor parallel over heads / MLP / vocab; Shoeybi et al. 2019).
"""

from __future__ import annotations

import contextlib
import logging
import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis name (from the models' initialisers and activation constraints) -> mesh axes.
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("layers", None),  # the stacked-layer axis of scanned parameters
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("position", None),
    ("token_type", None),
    ("relpos_buckets", None),
    ("classes", None),
    ("patch", None),
    ("norm", None),
)

_warned: set = set()
log = logging.getLogger(__name__)


# The `config.mesh` block: sizes of the mesh axes; one may be -1 (= the rest).
MESH_DEFAULTS = dict(data=-1, fsdp=1, tensor=1)


def make_mesh(mesh_cfg=None, devices=None) -> jax.sharding.Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all)."""
    devices = list(devices if devices is not None else jax.devices())
    mesh_cfg = mesh_cfg or MESH_DEFAULTS
    sizes = [int(mesh_cfg.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices not divisible by the fixed mesh axes {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
            f"have {len(devices)}"
        )
    # Auto axes: GSPMD propagates shardings from the constraints we set.
    return jax.make_mesh(
        sizes, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices
    )


@contextlib.contextmanager
def context(mesh):
    """Mesh + rules in scope while tracing, so the models' logical constraints apply."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(jax.set_mesh(mesh))
        stack.enter_context(nn.logical_axis_rules(RULES))
        yield


def _mesh_size(mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def spec_for(logical: P | None, shape, mesh, name: str = "") -> P:
    """Mesh PartitionSpec for one array: rules applied, a mesh axis used at most once,
    and a dimension not divisible by its mesh axes replicated (reported once)."""
    if logical is None or len(shape) == 0:
        return P()
    rules = dict(RULES)
    mesh_axes = [rules.get(n) if n is not None else None for n in tuple(logical)]
    used, out = set(), []
    for dim, (lname, axes) in enumerate(zip(tuple(logical), tuple(mesh_axes))):
        flat = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        flat = tuple(a for a in flat if a not in used and mesh.shape[a] > 1)
        size = _mesh_size(mesh, flat) if flat else 1
        if flat and shape[dim] % size:
            key = (lname, shape[dim], flat)
            if key not in _warned:
                _warned.add(key)
                log.info(
                    f"sharding: {name or 'array'}: dim {dim} ({lname}={shape[dim]}) not "
                    f"divisible by mesh axes {flat} (size {size}); replicating that dim"
                )
            flat = ()
        used.update(flat)
        out.append(None if not flat else (flat[0] if len(flat) == 1 else flat))
    return P(*out)


def param_shardings(abstract_boxed_params, mesh):
    """NamedShardings for a (boxed, abstract) parameter tree, via the rules table."""
    logical = nn.get_partition_spec(abstract_boxed_params)
    unboxed = nn.meta.unbox(abstract_boxed_params)
    is_spec = lambda x: isinstance(x, P) or x is None
    flat_l, _ = jax.tree_util.tree_flatten(logical, is_leaf=is_spec)
    flat_v, treedef = jax.tree_util.tree_flatten_with_path(unboxed)
    out = [
        NamedSharding(
            mesh,
            spec_for(lg, v.shape, mesh, jax.tree_util.keystr(path, simple=True, separator="/")),
        )
        for lg, (path, v) in zip(flat_l, flat_v)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def mirror_shardings(tree, params, param_sh, mesh):
    """Shardings for a tree whose param-shaped leaves (Adam mu / nu) mirror `params`:
    a leaf whose key path ends with a parameter's path and has its shape gets that
    parameter's sharding; everything else (counts, scalars) is replicated."""
    by_path = {}
    for (path, v), sh in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree_util.tree_leaves(param_sh)
    ):
        by_path[tuple(jax.tree_util.keystr((k,), simple=True) for k in path)] = (tuple(v.shape), sh)
    replicated = NamedSharding(mesh, P())

    def pick(path, leaf):
        keys = tuple(jax.tree_util.keystr((k,), simple=True) for k in path)
        for start in range(len(keys)):
            hit = by_path.get(keys[start:])
            if hit is not None and hit[0] == tuple(np.shape(leaf)):
                return hit[1]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, tree)


def batch_devices(mesh) -> int:
    """How many ways the batch is split: data x fsdp."""
    return _mesh_size(mesh, BATCH_AXES)


def batch_sharding(mesh, global_batch: int | None = None) -> NamedSharding:
    """Leading (batch) dim over ('data', 'fsdp'); replicated if it does not divide."""
    if global_batch is not None and global_batch % _mesh_size(mesh, BATCH_AXES):
        key = ("batch", global_batch)
        if key not in _warned:
            _warned.add(key)
            log.warning(
                f"sharding: batch {global_batch} not divisible by data*fsdp="
                f"{_mesh_size(mesh, BATCH_AXES)}; replicating the batch"
            )
        return NamedSharding(mesh, P())
    return NamedSharding(mesh, P(BATCH_AXES))


def process_rows(sharding: NamedSharding, global_rows: int) -> np.ndarray:
    """The rows of a global batch of `global_rows` that this process's devices hold under
    the batch `sharding` (what its data pipeline must produce, in order): a contiguous
    block per process when the batch is split over processes, every row when replicated."""
    index = sharding.addressable_devices_indices_map((int(global_rows),))
    rows = {r for sl in index.values() for r in range(*sl[0].indices(int(global_rows)))}
    return np.asarray(sorted(rows), np.int64)


def global_batch(batch, sharding: NamedSharding):
    """Process-local NumPy batch -> global jax.Arrays laid out as `sharding`."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )


def per_device_bytes(tree, shardings) -> int:
    """Bytes one device holds for `tree` (abstract or concrete) under `shardings`."""
    total = 0
    for x, sh in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(shardings)):
        shape = sh.shard_shape(tuple(x.shape)) if len(x.shape) else ()
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


def describe(mesh) -> str:
    return (
        "mesh "
        + " x ".join(f"{a}={mesh.shape[a]}" for a in MESH_AXES)
        + f" over {mesh.devices.size} {mesh.devices.flat[0].platform} device(s)"
    )


def memory_report(compiled) -> str:
    """The compiled step's per-device memory estimate, where the backend provides one."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        m = None
    if m is None:
        return "compiled step memory: n/a on this backend"
    fields = ["argument", "output", "temp", "generated_code"]
    parts = [
        f"{f}={getattr(m, f + '_size_in_bytes', 0) / 2**20:.1f}MiB"
        for f in fields
        if hasattr(m, f + "_size_in_bytes")
    ]
    return "compiled step memory (per device): " + " ".join(parts)
