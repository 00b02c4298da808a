"""pjx.masking: BERT 80/10/10 statistics, T5 span corruption reconstruction and statistics."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from pjx import masking

PAD, CLS, SEP, MASK = 0, 1, 2, 3
SPECIALS = (CLS, SEP, MASK)
V = 50


def make_tokens(rng, B, L):
    """[CLS] text [SEP] padding, with random lengths (padding at the end)."""
    toks = rng.integers(4, V, size=(B, L))
    lengths = rng.integers(3, L + 1, size=B)
    toks[:, 0] = CLS
    for b, n in enumerate(lengths):
        toks[b, n - 1] = SEP
        toks[b, n:] = PAD
    return toks.astype(np.int32)


class MaskTokensTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_shapes_and_structure(self):
        rng = np.random.default_rng(0)
        toks = make_tokens(rng, 64, 32)
        fn = self.variant(
            functools.partial(masking.mask_tokens, mask_id=MASK, vocab_size=V, special_ids=SPECIALS)
        )
        out = jax.tree.map(np.asarray, fn(jax.random.PRNGKey(0), toks))
        P = masking.num_predictions(32)  # round(0.15 * 32) = 5
        assert P == 5
        chex.assert_shape([out["input_ids"], out["targets"], out["weights"]], (64, 32))
        chex.assert_shape(
            [out["masked_positions"], out["masked_targets"], out["masked_weights"]], (64, P)
        )
        assert out["input_ids"].dtype == np.int32 and out["masked_weights"].dtype == np.float32
        cand = ~np.isin(toks, SPECIALS + (PAD,))
        n_cand = cand.sum(1)
        want_n = np.minimum(P, np.minimum(n_cand, np.maximum(1, np.round(0.15 * n_cand))))
        np.testing.assert_array_equal(out["masked_weights"].sum(1), want_n)
        for b in range(64):
            w = out["masked_weights"][b].astype(bool)
            pos = out["masked_positions"][b]
            assert np.all(w[:-1] >= w[1:])  # used slots first
            assert np.all(np.diff(pos[w]) > 0)  # ascending, distinct
            assert np.all(pos[~w] == 0) and np.all(out["masked_targets"][b][~w] == 0)
            assert np.all(cand[b, pos[w]])  # only candidates (no specials, no padding)
            np.testing.assert_array_equal(out["masked_targets"][b][w], toks[b, pos[w]])
            chosen = np.zeros(32, bool)
            chosen[pos[w]] = True
            np.testing.assert_array_equal(out["weights"][b], chosen)
            # Unchosen tokens are untouched.
            np.testing.assert_array_equal(out["input_ids"][b][~chosen], toks[b][~chosen])
        np.testing.assert_array_equal(out["targets"], toks)

    def test_statistics_80_10_10(self):
        rng = np.random.default_rng(1)
        toks = make_tokens(rng, 1024, 64)
        out = jax.jit(
            functools.partial(
                masking.mask_tokens,
                mask_id=MASK,
                vocab_size=V,
                special_ids=SPECIALS,
                max_predictions=20,
            )
        )(jax.random.PRNGKey(1), toks)
        out = jax.tree.map(np.asarray, out)
        cand = ~np.isin(toks, SPECIALS + (PAD,))
        chosen = out["weights"].astype(bool)
        assert not np.any(chosen & ~cand)
        np.testing.assert_allclose(chosen.sum() / cand.sum(), 0.15, atol=0.005)
        inp, orig = out["input_ids"][chosen], toks[chosen]
        n = chosen.sum()
        assert n > 4000
        frac_mask = np.mean(inp == MASK)
        frac_random = np.mean((inp != MASK) & (inp != orig))
        frac_same = np.mean(inp == orig)
        np.testing.assert_allclose(frac_mask, 0.8, atol=0.02)
        # A random replacement equals the original with prob. 1/46, counted as "same".
        np.testing.assert_allclose(frac_random, 0.1 * (1 - 1 / 46), atol=0.015)
        np.testing.assert_allclose(frac_same, 0.1 + 0.1 / 46, atol=0.015)
        # Random replacements never produce specials or padding, and stay in the vocabulary.
        repl = inp[(inp != MASK) & (inp != orig)]
        assert np.all((repl >= 4) & (repl < V))
        # Specials/padding are never touched anywhere.
        np.testing.assert_array_equal(out["input_ids"][~cand], toks[~cand])

    def test_positions_uniform_over_candidates(self):
        toks = np.full((4096, 20), 7, np.int32)
        toks[:, 0], toks[:, -1] = CLS, SEP
        fn = functools.partial(
            masking.mask_tokens, rate=0.25, mask_id=MASK, vocab_size=V, special_ids=SPECIALS
        )
        out = jax.jit(fn)(jax.random.PRNGKey(2), toks)
        freq = np.asarray(out["weights"]).mean(0)
        assert freq[0] == 0 and freq[-1] == 0
        # 18 candidates, round(0.25 * 18) = 4 (half to even) chosen per row.
        np.testing.assert_allclose(freq[1:-1], 4 / 18, atol=0.025)

    def test_max_predictions_caps_and_all_special_rows(self):
        toks = np.array([[CLS, 5, 6, 7, 8, 9, 10, 11, 12, SEP], [CLS, SEP] + [PAD] * 8], np.int32)
        fn = functools.partial(
            masking.mask_tokens,
            rate=0.9,
            mask_id=MASK,
            vocab_size=V,
            special_ids=SPECIALS,
            max_predictions=3,
        )
        out = jax.jit(fn)(jax.random.PRNGKey(3), toks)
        np.testing.assert_array_equal(np.asarray(out["masked_weights"]), [[1, 1, 1], [0, 0, 0]])
        np.testing.assert_array_equal(np.asarray(out["input_ids"])[1], toks[1])

    def test_keys_give_different_masks(self):
        toks = make_tokens(np.random.default_rng(4), 8, 64)
        fn = jax.jit(
            functools.partial(masking.mask_tokens, mask_id=MASK, vocab_size=V, special_ids=SPECIALS)
        )
        a = fn(jax.random.PRNGKey(0), toks)["masked_positions"]
        b = fn(jax.random.PRNGKey(1), toks)["masked_positions"]
        c = fn(jax.random.PRNGKey(0), toks)["masked_positions"]
        assert np.any(np.asarray(a) != np.asarray(b))
        np.testing.assert_array_equal(a, c)


# Sentinels as in Hugging Face T5: <extra_id_0> = 32099, counting down; EOS = 1.
FIRST_SENTINEL, EOS = 32099, 1


def reconstruct(inputs, labels):
    """Invert span corruption on the host: each sentinel in ``inputs`` is replaced by the
    tokens after the same sentinel in ``labels``."""
    is_sent = lambda t: t > 30000
    spans, cur = {}, None
    for t in labels:
        if t == EOS:
            break
        if is_sent(t):
            cur = t
            spans[cur] = []
        else:
            spans[cur].append(t)
    out = []
    for t in inputs:
        if t == EOS:
            break
        out.extend(spans[t] if is_sent(t) else [t])
    return np.array(out)


def np_t5_noise_mask(rng, length, noise_density, mean_noise_span_length):
    """t5.data.preprocessors.random_spans_noise_mask, transcribed to NumPy."""
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)

    def segmentation(num_items, num_segments):
        first = np.arange(num_items - 1) < num_segments - 1
        first = np.pad(rng.permutation(first), [[1, 0]])
        return np.bincount(np.cumsum(first), minlength=num_segments)

    noise_lengths = segmentation(num_noise, num_spans)
    nonnoise_lengths = segmentation(length - num_noise, num_spans)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], 1).reshape(-1)
    starts = np.cumsum(interleaved)[:-1]
    indicator = np.zeros(length, int)
    np.add.at(indicator, starts, 1)
    return np.cumsum(indicator) % 2 == 1


class SpanCorruptTest(chex.TestCase):
    def test_lengths_match_t5_helper(self):
        # t5.data.preprocessors.random_spans_helper(512, 0.15, 3) -> tokens 568, targets 114.
        assert masking.span_corrupt_lengths(568, 0.15, 3.0) == (512, 114)
        # 114 tokens: 17 noise in round(17/3) = 6 spans -> (97 + 6 + 1, 17 + 6 + 1).
        assert masking.span_corrupt_lengths(114) == (104, 24)
        assert masking.span_corrupt_lengths(2) == (3, 3)  # 1 noise, 1 span

    @chex.variants(with_jit=True, without_jit=True)
    def test_reconstructs_exactly(self):
        B, L = 32, 57
        rng = np.random.default_rng(0)
        toks = rng.integers(2, 30000, size=(B, L)).astype(np.int32)
        fn = self.variant(
            functools.partial(
                masking.span_corrupt,
                noise_density=0.2,
                mean_noise_span_length=2.5,
                first_sentinel_id=FIRST_SENTINEL,
                eos_id=EOS,
            )
        )
        out = jax.tree.map(np.asarray, fn(jax.random.PRNGKey(0), toks))
        Li, Lt = masking.span_corrupt_lengths(L, 0.2, 2.5)
        chex.assert_shape([out["input_ids"], out["attention_mask"]], (B, Li))
        chex.assert_shape([out["labels"], out["decoder_attention_mask"]], (B, Lt))
        assert np.all(out["attention_mask"] == 1) and np.all(out["decoder_attention_mask"] == 1)
        num_noise, num_spans = round(L * 0.2), round(round(L * 0.2) / 2.5)
        sentinels = FIRST_SENTINEL - np.arange(num_spans)
        for b in range(B):
            inp, lab = out["input_ids"][b], out["labels"][b]
            assert inp[-1] == EOS and lab[-1] == EOS
            # Sentinels appear in order, once each; the targets start with <extra_id_0>.
            np.testing.assert_array_equal(inp[inp > 30000], sentinels)
            np.testing.assert_array_equal(lab[lab > 30000], sentinels)
            assert lab[0] == FIRST_SENTINEL and inp[0] != FIRST_SENTINEL  # T5: text first
            assert np.sum(lab[:-1] < 30000) == num_noise
            np.testing.assert_array_equal(reconstruct(inp, lab), toks[b])
        # Rows are corrupted independently.
        assert len({tuple(r) for r in out["input_ids"]}) > 1

    def test_sentinel_direction_up(self):
        toks = np.arange(10, 40, dtype=np.int32)[None]
        fn = functools.partial(
            masking.span_corrupt,
            noise_density=0.3,
            mean_noise_span_length=3.0,
            first_sentinel_id=100,
            sentinel_direction=1,
            eos_id=EOS,
        )
        out = jax.jit(fn)(jax.random.PRNGKey(1), toks)
        inp = np.asarray(out["input_ids"][0])
        np.testing.assert_array_equal(inp[inp >= 100], [100, 101, 102])

    def test_statistics(self):
        B, L, density, mean_len = 2000, 100, 0.15, 3.0
        rng = np.random.default_rng(0)
        toks = np.tile(np.arange(2, L + 2, dtype=np.int32), (B, 1))
        out = jax.jit(
            functools.partial(
                masking.span_corrupt,
                noise_density=density,
                mean_noise_span_length=mean_len,
                first_sentinel_id=FIRST_SENTINEL,
                eos_id=EOS,
            )
        )(jax.random.PRNGKey(2), toks)
        labels = np.asarray(out["labels"])
        # Noise positions and span lengths from the targets (token value = position + 2).
        noise = np.zeros((B, L), bool)
        lengths = []
        for b in range(B):
            row = labels[b][:-1]
            noise[b, row[row < 30000] - 2] = True
            starts = np.flatnonzero(row > 30000)
            lengths.extend(np.diff(np.append(starts, len(row))) - 1)
        lengths = np.array(lengths)
        np.testing.assert_allclose(noise.mean(), density, atol=1e-9)  # static count: exact
        np.testing.assert_allclose(lengths.mean(), mean_len, atol=1e-9)
        # Where noise falls matches T5's algorithm run in NumPy (the last span is always
        # noise, so density is not flat near the ends).
        ref = np.stack([np_t5_noise_mask(rng, L, density, mean_len) for _ in range(B)])
        np.testing.assert_allclose(noise.mean(0), ref.mean(0), atol=0.045)
        for lo in range(0, L, 20):
            np.testing.assert_allclose(
                noise[:, lo : lo + 20].mean(), ref[:, lo : lo + 20].mean(), atol=0.012
            )
        # Span lengths follow a uniform random composition of n = 15 into k = 5 parts:
        # P(len = l) = C(n - l - 1, k - 2) / C(n - 1, k - 1).
        n, k = 15, 5
        for ell in range(1, 6):
            p = math.comb(n - ell - 1, k - 2) / math.comb(n - 1, k - 1)
            np.testing.assert_allclose(np.mean(lengths == ell), p, atol=0.015)

    def test_vmappable_per_row_mask(self):
        keys = jax.random.split(jax.random.PRNGKey(3), 4)
        masks = jax.jit(jax.vmap(lambda k: masking.random_spans_noise_mask(k, 30, 0.2, 2.0)))(keys)
        chex.assert_shape(masks, (4, 30))
        assert np.all(np.asarray(masks).sum(1) == 6)
        assert not np.any(np.asarray(masks)[:, 0]) and np.all(np.asarray(masks)[:, -1])
        assert jnp.unique(masks, axis=0).shape[0] > 1
