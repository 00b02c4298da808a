"""Distillation: the losses against references; what a BERT sows for them."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pjx import losses, models
from pjx.models import bert

TINY = dict(hidden_size=32, num_heads=2, mlp_dim=64, max_position_embeddings=64)


# ------------------------------------------------------------------------- losses
def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_distill_kl_is_t2_kl_of_tempered_softmaxes():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 3, 7)) * 3, rng.normal(size=(2, 3, 7)) * 3
    mask = np.array([[1, 1, 0], [1, 0, 1]], np.float32)
    T = 2.5
    lp, lq = _log_softmax(t / T), _log_softmax(s / T)
    kl = (np.exp(lp) * (lp - lq)).sum(-1) * T * T
    loss, m = losses.distill_kl(jnp.asarray(s), jnp.asarray(t), mask, temperature=T)
    np.testing.assert_allclose(loss, (kl * mask).sum() / mask.sum(), rtol=1e-5)
    assert float(m["count"]) == 4.0
    same, _ = losses.distill_kl(jnp.asarray(t), jnp.asarray(t), mask, temperature=T)
    assert abs(float(same)) < 1e-6


def test_cosine_and_mse_on_real_tokens():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 4, 5)), rng.normal(size=(2, 4, 5))
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], np.float32)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    loss, _ = losses.cosine_distance(jnp.asarray(a), jnp.asarray(b), mask)
    np.testing.assert_allclose(loss, ((1 - cos) * mask).sum() / mask.sum(), rtol=1e-5)
    loss, _ = losses.mean_squared_error(jnp.asarray(a), jnp.asarray(b), mask)
    mse = ((a - b) ** 2).mean(-1)
    np.testing.assert_allclose(loss, (mse * mask).sum() / mask.sum(), rtol=1e-5)


def test_attention_relations_match_a_loop_over_examples_heads_and_rows():
    """Across widths (student 8, teacher 12; 2 relation heads) against plain Python."""
    rng = np.random.default_rng(2)
    B, L, R = 2, 5, 2
    s = [rng.normal(size=(B, L, 8)) for _ in range(3)]
    t = [rng.normal(size=(B, L, 12)) * 2 for _ in range(3)]
    real = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], np.float32)
    keys = (real[:, None, :] > 0) & np.ones((B, L, L), bool)
    total = count = 0.0
    for b in range(B):
        for i in range(L):
            if not real[b, i]:
                continue
            row = 0.0
            for xs, xt in zip(s, t):
                for r in range(R):
                    ks = real[b] > 0
                    kl = 0.0
                    probs = []
                    for x in (xt, xs):
                        d = x.shape[-1] // R
                        h = x[b, :, r * d : (r + 1) * d]
                        score = h[i] @ h[ks].T / np.sqrt(d)
                        probs.append(np.exp(_log_softmax(score)))
                    p, q = probs
                    kl = float((p * (np.log(p) - np.log(q))).sum())
                    row += kl / R / 3
            total += row
            count += 1
    loss, m = losses.attention_relations(
        [jnp.asarray(x) for x in s], [jnp.asarray(x) for x in t], keys, real, num_heads=R
    )
    np.testing.assert_allclose(loss, total / count, rtol=1e-4)
    assert float(m["count"]) == count


def test_scanned_and_unscanned_bert_sow_the_same_internals():
    kw = dict(TINY, num_layers=3, vocab_size=40, sow_internals=True)
    flat = models.create("bert", None, **kw)
    scan = models.create("bert", None, **kw, scan_layers=True)
    inputs = models.example_inputs("bert", flat.config, 2, 8)
    inputs["input_ids"] = jax.random.randint(jax.random.key(1), (2, 8), 0, 40)
    p = nn.meta.unbox(flat.init(jax.random.key(0), **inputs)["params"])
    enc = p["bert"]["encoder"]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *[enc[f"layer_{i}"] for i in range(3)])
    ps = {**p, "bert": {**p["bert"], "encoder": {"layer": stacked}}}
    a = flat.apply({"params": p}, **inputs, mutable=["intermediates"])[1]["intermediates"]
    b = scan.apply({"params": ps}, **inputs, mutable=["intermediates"])[1]["intermediates"]
    a, b = bert.internals(a, flat.config), bert.internals(b, scan.config)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5)
    assert "intermediates" not in flat.apply({"params": p}, **inputs)  # sown only if asked
