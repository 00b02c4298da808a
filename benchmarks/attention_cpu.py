"""One attention call on this machine: the einsum form against XLA's fused kernel.

  python benchmarks/attention_cpu.py

For each shape (nanoGPT's Shakespeare, BERT-mini with padding, a longer causal GPT, ViT-B
at 224 px) prints the median microseconds of the forward and of forward + backward of
`pjx.nn.attention.dot_product_attention` under each implementation, and their largest
output difference. `pjx.nn.backend.attention_implementation` picks from these numbers on a
CPU.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from pjx.nn.attention import dot_product_attention

# (batch, length, heads, head dim, causal)
SHAPES = (
    (12, 64, 4, 32, True),
    (32, 128, 4, 64, False),
    (16, 256, 4, 64, True),
    (8, 197, 12, 64, False),
)
IMPLEMENTATIONS = ("einsum", "xla")


def median_us(f, *args, n=100):
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e6


def main():
    for B, T, H, K, causal in SHAPES:
        q, k, v = (
            jax.random.normal(key, (B, T, H, K)) for key in jax.random.split(jax.random.key(0), 3)
        )
        mask = None if causal else (jnp.arange(T)[None, None, None, :] < T - 7)  # 7 pads
        row, outs = [], {}
        for impl in IMPLEMENTATIONS:

            def attend(q, k, v, impl=impl, mask=mask, causal=causal):
                return dot_product_attention(q, k, v, mask=mask, causal=causal, implementation=impl)

            def loss(q, k, v, attend=attend):
                return jnp.sum(jnp.sin(attend(q, k, v)))

            fwd, grad = jax.jit(attend), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
            outs[impl] = fwd(q, k, v)
            row.append(
                f"{impl}: fwd {median_us(fwd, q, k, v):.0f} fwd+bwd {median_us(grad, q, k, v):.0f}"
            )
        diff = float(jnp.max(jnp.abs(outs["einsum"] - outs["xla"])))
        print(
            f"[{B}, {T}, {H}, {K}] {'causal' if causal else 'padded'}: "
            + " | ".join(row)
            + f" us (max diff {diff:.1e})"
        )


if __name__ == "__main__":
    main()
