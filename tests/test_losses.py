"""pjx.losses against straightforward NumPy references, gradients, sharded == unsharded."""

import functools

import chex
import float32
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pjx import losses

RTOL, ATOL = 1e-5, 1e-5


def np_log_softmax(x, axis=-1):
    x = np.asarray(x, np.float64)
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def np_logsumexp(x, axis=-1):
    x = np.asarray(x, np.float64)
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def np_cross_entropy(logits, labels, mask, label_smoothing=0.0, z_loss=0.0):
    """Reference: explicit smoothed one-hot target distribution, loop-free but literal."""
    V = logits.shape[-1]
    logp = np_log_softmax(logits)
    onehot = np.eye(V)[labels]
    q = (1 - label_smoothing) * onehot + label_smoothing / V
    loss = -(q * logp).sum(-1) + z_loss * np_logsumexp(logits) ** 2
    nll = -(onehot * logp).sum(-1)
    correct = (logits.argmax(-1) == labels).astype(np.float64)
    count = mask.sum()
    return (
        (loss * mask).sum() / count,
        {
            "loss_sum": (loss * mask).sum(),
            "nll_sum": (nll * mask).sum(),
            "count": count,
            "correct": (correct * mask).sum(),
        },
    )


def np_normalize(z):
    z = np.asarray(z, np.float64)
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def np_info_nce(za, zb, temperature, symmetric):
    logits = np_normalize(za) @ np_normalize(zb).T / temperature
    N = len(za)
    rows = [-np_log_softmax(logits[i])[i] for i in range(N)]
    cols = [-np_log_softmax(logits[:, j])[j] for j in range(N)]
    per = (np.array(rows) + np.array(cols)) / 2 if symmetric else np.array(rows)
    correct = sum(int(np.argmax(logits[i]) == i) for i in range(N))
    return per.mean(), {"loss_sum": per.sum(), "count": N, "correct": correct}


def np_nt_xent(z1, z2, temperature):
    """SimCLR eq. (1) literally: l(i,j) = -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t)."""
    z = np_normalize(np.concatenate([z1, z2]))
    M = len(z)
    N = M // 2
    s = z @ z.T / temperature
    total, correct = 0.0, 0
    for i in range(M):
        j = (i + N) % M
        others = [k for k in range(M) if k != i]
        total += -(s[i, j] - np.log(np.exp(s[i, others]).sum()))
        correct += int(others[int(np.argmax(s[i, others]))] == j)
    return total / M, {"loss_sum": total, "count": M, "correct": correct}


def assert_metrics_close(got, want):
    for k, v in want.items():
        np.testing.assert_allclose(np.asarray(got[k]), v, rtol=RTOL, atol=ATOL, err_msg=k)
        assert got[k].dtype == jnp.float32 and got[k].shape == (), k


class CrossEntropyTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(
        dict(label_smoothing=0.0, z_loss=0.0),
        dict(label_smoothing=0.1, z_loss=0.0),
        dict(label_smoothing=0.0, z_loss=1e-2),
        dict(label_smoothing=0.2, z_loss=1e-3),
    )
    def test_matches_numpy(self, label_smoothing, z_loss):
        rng = np.random.default_rng(0)
        logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
        labels = rng.integers(0, 11, size=(3, 5))
        mask = (rng.random((3, 5)) < 0.6).astype(np.float32) * rng.uniform(0.5, 2, (3, 5))
        fn = self.variant(
            functools.partial(losses.cross_entropy, label_smoothing=label_smoothing, z_loss=z_loss)
        )
        loss, metrics = fn(logits, labels, mask)
        ref_loss, ref_metrics = np_cross_entropy(logits, labels, mask, label_smoothing, z_loss)
        np.testing.assert_allclose(loss, ref_loss, rtol=RTOL)
        assert_metrics_close(metrics, ref_metrics)
        assert ("z_loss_sum" in metrics) == (z_loss > 0)
        if z_loss:
            ref_z = (z_loss * np_logsumexp(logits) ** 2 * mask).sum()
            np.testing.assert_allclose(metrics["z_loss_sum"], ref_z, rtol=RTOL)

    def test_no_mask_is_plain_mean_and_bf16_inputs(self):
        rng = np.random.default_rng(1)
        logits = rng.normal(size=(4, 7)).astype(np.float32)
        labels = rng.integers(0, 7, size=(4,))
        loss, m = losses.cross_entropy(jnp.asarray(logits, jnp.bfloat16), labels)
        logits_bf = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32))
        ref, _ = np_cross_entropy(logits_bf, labels, np.ones(4))
        assert loss.dtype == jnp.float32
        np.testing.assert_allclose(loss, ref, rtol=RTOL)
        assert float(m["count"]) == 4

    @chex.variants(with_jit=True, without_jit=True)
    def test_ignores_out_of_range_labels(self):
        rng = np.random.default_rng(2)
        logits = rng.normal(size=(6, 5)).astype(np.float32)
        labels = np.array([0, -100, 3, 5, 4, -1])
        loss, m = self.variant(losses.cross_entropy)(logits, labels)
        keep = np.array([0, 2, 4])
        ref, _ = np_cross_entropy(logits[keep], labels[keep], np.ones(3))
        np.testing.assert_allclose(loss, ref, rtol=RTOL)
        assert float(m["count"]) == 3

    @chex.variants(with_jit=True, without_jit=True)
    def test_count_zero_gives_zero_loss_and_finite_grads(self):
        logits = jnp.asarray(np.random.default_rng(3).normal(size=(2, 3, 5)), jnp.float32)
        labels = jnp.zeros((2, 3), jnp.int32)
        fn = self.variant(
            lambda x: losses.cross_entropy(x, labels, jnp.zeros((2, 3)), z_loss=1e-4)[0]
        )
        loss = fn(logits)
        assert float(loss) == 0.0
        g = jax.grad(fn)(logits)
        assert np.all(np.isfinite(g)) and np.all(g == 0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_grads_finite_and_match_softmax_minus_onehot(self):
        rng = np.random.default_rng(4)
        logits = jnp.asarray(rng.normal(size=(5, 9)) * 20, jnp.float32)  # large logits
        labels = rng.integers(0, 9, size=(5,))
        g = self.variant(jax.grad(lambda x: losses.cross_entropy(x, labels)[0]))(logits)
        chex.assert_shape(g, (5, 9))
        assert np.all(np.isfinite(g))
        ref = (np.exp(np_log_softmax(logits)) - np.eye(9)[labels]) / 5
        np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-6)

    def test_metrics_aggregate_exactly_over_micro_batches(self):
        rng = np.random.default_rng(5)
        logits = rng.normal(size=(8, 6)).astype(np.float32)
        labels = rng.integers(0, 6, size=(8,))
        w = rng.integers(0, 2, size=(8,)).astype(np.float32)
        _, full = losses.cross_entropy(logits, labels, w, label_smoothing=0.1)
        parts = [
            losses.cross_entropy(logits[i::2], labels[i::2], w[i::2], label_smoothing=0.1)
            for i in range(2)
        ]
        for k in full:
            np.testing.assert_allclose(sum(p[1][k] for p in parts), full[k], rtol=RTOL)

    def test_wrappers(self):
        rng = np.random.default_rng(6)
        logits = rng.normal(size=(2, 4, 13)).astype(np.float32)
        tgt = rng.integers(0, 13, size=(2, 4))
        w = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], np.float32)
        a = losses.masked_lm(logits, tgt, w, label_smoothing=0.1)
        b = losses.cross_entropy(logits, tgt, w, label_smoothing=0.1)
        chex.assert_trees_all_close(a, b)
        nsp_logits = rng.normal(size=(4, 2)).astype(np.float32)
        nsp_labels = np.array([0, 1, 1, 0])
        loss, m = losses.classification(nsp_logits, nsp_labels)
        np.testing.assert_allclose(
            loss, np_cross_entropy(nsp_logits, nsp_labels, np.ones(4))[0], rtol=RTOL
        )
        loss_w, m_w = losses.classification(nsp_logits, nsp_labels, np.array([1, 1, 0, 0.0]))
        assert float(m_w["count"]) == 2


class ContrastiveTest(chex.TestCase):
    def _z(self, seed, N=8, E=6, scale=1.0):
        rng = np.random.default_rng(seed)
        za = rng.normal(size=(N, E)).astype(np.float32) * scale
        zb = (za + 0.7 * rng.normal(size=(N, E))).astype(np.float32)  # correlated positives
        return za, zb

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(
        dict(symmetric=True, temperature=0.1),
        dict(symmetric=False, temperature=0.1),
        dict(symmetric=True, temperature=0.5),
    )
    def test_info_nce_matches_numpy(self, symmetric, temperature):
        za, zb = self._z(0, scale=3.0)  # unnormalised inputs: normalisation is inside
        fn = self.variant(
            functools.partial(losses.info_nce, temperature=temperature, symmetric=symmetric)
        )
        loss, m = fn(za, zb)
        ref, ref_m = np_info_nce(za, zb, temperature, symmetric)
        np.testing.assert_allclose(loss, ref, rtol=RTOL)
        assert_metrics_close(m, ref_m)

    def test_info_nce_asymmetric_differs_and_symmetric_is_swap_invariant(self):
        za, zb = self._z(1)
        sym_ab = losses.info_nce(za, zb, temperature=0.2)[0]
        sym_ba = losses.info_nce(zb, za, temperature=0.2)[0]
        asym_ab = losses.info_nce(za, zb, temperature=0.2, symmetric=False)[0]
        asym_ba = losses.info_nce(zb, za, temperature=0.2, symmetric=False)[0]
        np.testing.assert_allclose(sym_ab, sym_ba, rtol=RTOL)
        np.testing.assert_allclose(sym_ab, (asym_ab + asym_ba) / 2, rtol=RTOL)
        assert abs(float(asym_ab) - float(asym_ba)) > 1e-4

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(dict(temperature=0.1), dict(temperature=0.5))
    def test_nt_xent_matches_numpy(self, temperature):
        z1, z2 = self._z(2, scale=2.0)
        loss, m = self.variant(functools.partial(losses.nt_xent, temperature=temperature))(z1, z2)
        ref, ref_m = np_nt_xent(z1, z2, temperature)
        np.testing.assert_allclose(loss, ref, rtol=RTOL)
        assert_metrics_close(m, ref_m)

    @parameterized.parameters("info_nce", "nt_xent")
    def test_padded_rows_are_dropped(self, name):
        za, zb = self._z(3, N=8)
        fn = jax.jit(functools.partial(getattr(losses, name), temperature=0.2))
        w = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
        loss_w, m_w = fn(za, zb, weights=w)
        loss_5, m_5 = fn(za[:5], zb[:5])
        np.testing.assert_allclose(loss_w, loss_5, rtol=RTOL)
        chex.assert_trees_all_close(m_w, m_5, rtol=RTOL)
        g = jax.jit(jax.grad(lambda a: fn(a, zb, weights=w)[0]))(jnp.asarray(za))
        assert np.all(np.isfinite(g)) and np.all(g[5:] == 0)

    @parameterized.parameters("info_nce", "nt_xent")
    def test_count_zero_and_grads_finite(self, name):
        za, zb = self._z(4)
        za[0] = 0.0  # a zero embedding must not produce NaN through the normalisation
        loss_fn = getattr(losses, name)

        @jax.jit
        def grads(za, zb, t, w):
            g = jax.grad(lambda a, b, t: loss_fn(a, b, temperature=t)[0], argnums=(0, 1, 2))
            g0 = jax.grad(lambda a: loss_fn(a, zb, temperature=t, weights=w)[0])(za)
            return g(za, zb, t), g0, loss_fn(za, zb, temperature=t, weights=w)

        (ga, gb, g_t), g0, (loss, m) = grads(za, zb, 0.05, np.zeros(8, np.float32))
        assert np.all(np.isfinite(ga)) and np.all(np.isfinite(gb))
        assert np.isfinite(g_t) and g_t != 0  # learnable (traced) temperature
        assert float(loss) == 0.0 and float(m["count"]) == 0.0
        assert np.all(g0 == 0)

    @pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
    @parameterized.parameters(
        ("info_nce", dict(symmetric=True)), ("info_nce", dict(symmetric=False)), ("nt_xent", {})
    )
    def test_sharded_equals_unsharded(self, name, kw):
        za, zb = self._z(5, N=16, E=12)
        fn = jax.jit(functools.partial(getattr(losses, name), temperature=0.1, **kw))
        want = fn(za, zb)
        mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
        sharding = NamedSharding(mesh, P("data"))
        za_s, zb_s = jax.device_put(za, sharding), jax.device_put(zb, sharding)
        assert len(za_s.sharding.device_set) == 8
        got = fn(za_s, zb_s)
        float32.assert_trees_close(got, want, rtol=1e-6)
        # And against the reference, so both cannot be wrong the same way (e.g. per-shard).
        ref = np_info_nce(za, zb, 0.1, kw["symmetric"]) if kw else np_nt_xent(za, zb, 0.1)
        np.testing.assert_allclose(got[0], ref[0], rtol=RTOL)
