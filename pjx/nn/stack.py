"""A block repeated n times: unscanned (Hugging Face's `{name}_{i}` layout) or as one
`nn.scan` (stacked parameters), with a rematerialisation policy per block."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax

from pjx import remat as remat_lib

# `model.remat`: what a block keeps for the backward pass (jax.checkpoint policies).
REMAT_POLICIES = {
    "none": None,  # keep everything: no recomputation
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only the block's input
    "dots": jax.checkpoint_policies.checkpoint_dots,  # keep every matmul output
    # keep the weight matmuls, recompute the attention scores (batch-dim dots)
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat(name: str) -> None:
    if name not in REMAT_POLICIES:
        raise ValueError(f"model.remat={name!r}: choose one of {sorted(REMAT_POLICIES)}")


@functools.cache
def _scan_cell(block: type[nn.Module]) -> type[nn.Module]:
    """`block` as an `nn.scan` body: returns (x, None) instead of x."""

    class Cell(block):
        def __call__(self, x, *args):
            return super().__call__(x, *args), None

    Cell.__name__ = Cell.__qualname__ = block.__name__
    return Cell


def repeat(
    block: type[nn.Module],
    n: int,
    x,
    *args,
    name: str,
    scan: bool = False,
    remat: str = "none",
    **block_fields,
):
    """x through `n` blocks `block(**block_fields)(x, *args)` in turn; call inside a
    compact method. `args` are the same for every block and end with `deterministic`.

    Unscanned, the blocks are children `{name}_0 .. {name}_{n-1}` (Hugging Face's layout);
    scanned (`scan=True`), one `nn.scan` child `{name}` whose parameters (and KV cache) have
    a leading layer axis: one block is traced and compiled instead of n. `remat` applies a
    `jax.checkpoint` policy per block (REMAT_POLICIES; unscanned through pjx.remat, which
    keeps XLA from recomputing a block before the backward pass reaches it).
    """
    check_remat(remat)
    static = (len(args) + 1,)  # deterministic (self is 0, x is 1): a Python bool
    cls = _scan_cell(block) if scan else block
    if remat != "none" and scan:  # the loop orders each recomputation after its cotangent
        cls = nn.remat(cls, policy=REMAT_POLICIES[remat], static_argnums=static, prevent_cse=False)
    elif remat != "none":
        cls = remat_lib.remat(cls, policy=REMAT_POLICIES[remat], static_argnums=static)
    if not scan:
        for i in range(n):
            x = cls(**block_fields, name=f"{name}_{i}")(x, *args)
        return x
    stacked = nn.scan(
        cls,
        # Sown values (LayerConfig.sow_qkv) stack like the parameters: one per layer.
        variable_axes={"params": 0, "cache": 0, "intermediates": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * len(args),
        length=n,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    x, _ = stacked(**block_fields, name=name)(x, *args)
    return x
