"""Pre-training corruptions as pure jax transforms, run on device inside the jitted step.

- ``mask_tokens``: BERT's masked-LM recipe (Devlin et al. 2019; google-research/bert
  ``create_pretraining_data.py``).
- ``span_corrupt``: T5's span corruption (Raffel et al. 2020; google-research/
  text-to-text-transfer-transformer ``t5/data/preprocessors.py``).
- ``gumbel_sample`` + ``replace_tokens``: ELECTRA's corrupted input (Clark et al. 2020;
  google-research/electra ``pretrain/pretrain_helpers.py``), tokens sampled from a
  generator's softmax written over the masked positions.

Shapes are static (they depend only on the input shape and Python arguments), so both
functions jit once per shape. Each row draws its own randomness from ``key``.
"""

import jax
import jax.numpy as jnp
import numpy as np


def num_predictions(L, rate=0.15, max_predictions=None):
    """P, the static number of prediction slots per row: ``max_predictions`` if given,
    else ``max(1, round(rate * L))`` (Python's round: half to even)."""
    if max_predictions is not None:
        return int(max_predictions)
    return max(1, int(round(rate * L)))


def mask_tokens(
    key,
    tokens,
    *,
    rate=0.15,
    mask_id,
    vocab_size,
    special_ids,
    max_predictions=None,
    pad_id=0,
    mask_fraction=0.8,
    random_fraction=0.1,
):
    """BERT masking: per row pick ``n`` candidate positions, corrupt them 80/10/10.

    Candidates are tokens not in ``special_ids`` and not ``pad_id``. Per row
    ``n = min(P, n_candidates, max(1, round(rate * n_candidates)))`` positions are chosen
    uniformly without replacement (BERT uses ``len(tokens)`` incl. [CLS]/[SEP] in place of
    n_candidates; we follow the candidate count so padding does not inflate it). Each
    chosen token independently becomes ``mask_id`` with prob. 0.8, a random token with
    prob. 0.1, itself with prob. 0.1. Random tokens are uniform over the vocabulary minus
    ``special_ids``, ``mask_id`` and ``pad_id`` (BERT samples the whole vocabulary).

    Args:
      key: PRNG key.
      tokens: [B,L] int token ids (unmasked).
      rate: masking rate.
      mask_id, vocab_size, special_ids: [MASK] id, vocabulary size, ids never masked
        (e.g. [CLS], [SEP], [UNK]); a Python sequence (static).
      max_predictions: P, the static number of prediction slots; default
        ``max(1, round(rate * L))`` (``num_predictions``).
      pad_id: padding id, never masked.
      mask_fraction, random_fraction: the shares of chosen tokens that become ``mask_id``
        and a random token (the rest stay themselves); BERT's 0.8 / 0.1, ELECTRA's
        0.85 / 0.0 (``pretrain_helpers.mask``).

    Returns dict:
      input_ids [B,L] int32: corrupted tokens.
      masked_positions [B,P] int32: chosen positions in ascending order, 0 in unused slots.
      masked_targets [B,P] int32: original tokens there, 0 in unused slots.
      masked_weights [B,P] float32: 1 for used slots, 0 for unused.
      targets [B,L] int32: the original tokens; weights [B,L] float32: 1 where chosen
        (for heads that predict at every position).
    """
    tokens = jnp.asarray(tokens).astype(jnp.int32)
    B, L = tokens.shape
    P = num_predictions(L, rate, max_predictions)
    if not 1 <= P <= L:
        raise ValueError(f"need 1 <= max_predictions <= L, got P={P}, L={L}")
    excluded = np.unique(np.asarray(list(special_ids) + [mask_id, pad_id], np.int64))
    replacements = np.setdiff1d(np.arange(vocab_size), excluded).astype(np.int32)
    if replacements.size == 0:
        raise ValueError("no non-special token ids to draw random replacements from")
    is_special = jnp.isin(tokens, jnp.asarray(np.unique(list(special_ids) + [pad_id]), jnp.int32))
    candidate = ~is_special

    k_choose, k_action, k_random = jax.random.split(key, 3)
    n_cand = candidate.sum(axis=1)
    n = jnp.maximum(1, jnp.round(rate * n_cand).astype(jnp.int32))
    n = jnp.minimum(jnp.minimum(n, n_cand), P)  # [B]
    positions, used_BxP, chosen = _choose(k_choose, candidate, n, P)

    # BERT: `if rng.random() < 0.8: [MASK] elif rng.random() < 0.5: keep else: random`.
    u = jax.random.uniform(k_action, (B, L))
    rand_tok = jnp.asarray(replacements)[jax.random.randint(k_random, (B, L), 0, replacements.size)]
    input_ids = jnp.where(chosen & (u < mask_fraction), mask_id, tokens)
    input_ids = jnp.where(chosen & (u >= 1.0 - random_fraction), rand_tok, input_ids)
    input_ids = input_ids.astype(jnp.int32)

    targets = jnp.take_along_axis(tokens, positions, axis=1)
    return {
        "input_ids": input_ids,
        "masked_positions": positions,
        "masked_targets": jnp.where(used_BxP, targets, 0).astype(jnp.int32),
        "masked_weights": used_BxP.astype(jnp.float32),
        "targets": tokens,
        "weights": chosen.astype(jnp.float32),
    }


def _choose(key, candidate, n, P: int):
    """A uniform subset of n[b] candidate positions per row: ([B,P] positions ascending,
    0 in unused slots; [B,P] used; [B,L] chosen)."""
    B, L = candidate.shape
    # The n largest of i.i.d. uniform scores over candidates (non-candidates score -1 so
    # they are never among the top n <= n_candidates).
    scores = jnp.where(candidate, jax.random.uniform(key, (B, L)), -1.0)
    _, top_BxP = jax.lax.top_k(scores, P)
    used_BxP = jnp.arange(P)[None, :] < n[:, None]
    # Ascending positions (as BERT sorts masked_lms), unused slots last and then 0.
    positions = jnp.sort(jnp.where(used_BxP, top_BxP, L), axis=1)
    used_BxP = positions < L
    positions = jnp.where(used_BxP, positions, 0).astype(jnp.int32)
    chosen = jnp.zeros((B, L), bool)
    chosen = jax.vmap(lambda c, p, u: c.at[p].max(u))(chosen, positions, used_BxP)
    return positions, used_BxP, chosen


def gumbel_sample(key, logits, temperature=1.0):
    """One token per row of ``logits`` [..., V], drawn from softmax(logits / temperature)
    by the Gumbel-max trick (argmax of logits / T plus Gumbel(0, 1) noise), as ELECTRA's
    ``sample_from_softmax`` does. The logits pass through ``stop_gradient``: ELECTRA does
    not backpropagate the discriminator's loss through the sampling (Clark et al. 2020,
    sec. 2). Returns int32 [...]."""
    logits = jax.lax.stop_gradient(logits).astype(jnp.float32) / temperature
    noise = jax.random.gumbel(key, logits.shape, jnp.float32)
    return jnp.argmax(logits + noise, axis=-1).astype(jnp.int32)


def replace_tokens(tokens, positions, replacements, weights):
    """ELECTRA's corrupted input (``_get_fake_data``): ``tokens`` [B,L] with
    ``replacements`` [B,P] written at ``positions`` [B,P] where ``weights`` [B,P] > 0
    (unused slots write nothing).

    Returns dict: ``input_ids`` [B,L] int32, and ``labels`` [B,L] int32, 1 where the token
    now differs from the original (a sample equal to the original counts as original, as
    in ELECTRA), so labels are 0 off the masked positions.
    """
    tokens = jnp.asarray(tokens).astype(jnp.int32)
    L = tokens.shape[1]
    # Unused slots point past the row and are dropped (their position 0 may be a used one).
    where = jnp.where(jnp.asarray(weights) > 0, positions, L)
    write = lambda row, p, r: row.at[p].set(r, mode="drop")
    input_ids = jax.vmap(write)(tokens, where, jnp.asarray(replacements, jnp.int32))
    return {"input_ids": input_ids, "labels": (input_ids != tokens).astype(jnp.int32)}


def _span_counts(L, noise_density, mean_noise_span_length):
    # T5 random_spans_noise_mask: round, then at least 1 noise and 1 non-noise token and at
    # least one span. We also cap spans so every noise and non-noise segment is non-empty
    # (T5 assumes it), which keeps all lengths static and exact for tiny L.
    length = max(L, 2)
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
    num_spans = min(num_spans, num_noise, length - num_noise)
    return num_noise, num_spans


def span_corrupt_lengths(L, noise_density=0.15, mean_noise_span_length=3.0):
    """Static (Li, Lt) of ``span_corrupt`` for rows of length L, EOS included.

    T5's ``random_spans_helper``: Li = non-noise + spans + 1, Lt = noise + spans + 1.
    """
    num_noise, num_spans = _span_counts(L, noise_density, mean_noise_span_length)
    return L - num_noise + num_spans + 1, num_noise + num_spans + 1


def _random_segmentation(key, num_items, num_segments):
    """T5: split num_items into num_segments non-empty runs uniformly at random; returns
    lengths [num_segments]. A shuffled 0/1 vector marks the segment starts."""
    first = jnp.arange(num_items - 1) < num_segments - 1
    first = jnp.pad(jax.random.permutation(key, first), (1, 0)).astype(jnp.int32)
    segment_id = jnp.cumsum(first)
    return jax.ops.segment_sum(jnp.ones_like(segment_id), segment_id, num_segments)


def random_spans_noise_mask(key, L, noise_density=0.15, mean_noise_span_length=3.0):
    """T5's ``random_spans_noise_mask`` for one row: bool [L], True on noise.

    Non-noise and noise spans alternate, starting with non-noise and ending with noise.
    """
    num_noise, num_spans = _span_counts(L, noise_density, mean_noise_span_length)
    length = max(L, 2)
    k_noise, k_nonnoise = jax.random.split(key)
    noise_lengths = _random_segmentation(k_noise, num_noise, num_spans)
    nonnoise_lengths = _random_segmentation(k_nonnoise, length - num_noise, num_spans)
    interleaved = jnp.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    span_starts = jnp.cumsum(interleaved)[:-1]
    span_start_indicator = jnp.zeros((length,), jnp.int32).at[span_starts].add(1)
    span_num = jnp.cumsum(span_start_indicator)
    return (span_num % 2 == 1)[:L]


def _spans_to_sentinels(tokens_L, noise_L, out_len, first_sentinel_id, direction, eos_id):
    """T5's ``noise_span_to_unique_sentinel`` (+ EOS) with a static output length: each
    run of ``noise`` becomes one sentinel (first_sentinel_id, then + direction, ...)."""
    prev = jnp.pad(noise_L[:-1], (1, 0))
    first = noise_L & ~prev
    subsequent = noise_L & prev
    sentinel = first_sentinel_id + direction * (jnp.cumsum(first) - 1)
    toks = jnp.where(first, sentinel, tokens_L)
    keep = ~subsequent
    dest = jnp.where(keep, jnp.cumsum(keep) - 1, out_len)  # dropped tokens go out of range
    out = jnp.full((out_len,), eos_id, jnp.int32)  # the last slot stays EOS
    return out.at[dest].set(toks.astype(jnp.int32), mode="drop")


def span_corrupt(
    key,
    tokens,
    *,
    noise_density=0.15,
    mean_noise_span_length=3.0,
    first_sentinel_id,
    sentinel_direction=-1,
    eos_id,
    pad_id=0,
):
    """T5 span corruption of contiguous text rows (no padding inside ``tokens``).

    Per row: ``random_spans_noise_mask`` with static num_noise = round(L * density) and
    num_spans = round(num_noise / mean_len); inputs = non-noise tokens with one sentinel per
    noise span (``noise_span_to_unique_sentinel``), labels = noise tokens with one sentinel
    per non-noise span (``nonnoise_span_to_unique_sentinel``); EOS appended to both, as
    T5's output features do. Sentinels are first_sentinel_id, first_sentinel_id +
    direction, ...; for Hugging Face T5 (vocab 32100) <extra_id_0> = 32099 and they count
    down (direction -1). ``pad_id`` is accepted for interface symmetry; with static exact
    lengths no padding is ever produced.

    Returns dict: ``input_ids`` [B,Li], ``attention_mask`` [B,Li] (ones), ``labels``
    [B,Lt], ``decoder_attention_mask`` [B,Lt] (ones), int32, with
    (Li, Lt) = ``span_corrupt_lengths(L, noise_density, mean_noise_span_length)``.
    Labels are not shifted; the task builds ``decoder_input_ids``.
    """
    del pad_id
    tokens = jnp.asarray(tokens).astype(jnp.int32)
    B, L = tokens.shape
    if L < 2:
        raise ValueError(f"span_corrupt needs rows of length >= 2, got {L}")
    Li, Lt = span_corrupt_lengths(L, noise_density, mean_noise_span_length)
    sentinel_args = (first_sentinel_id, sentinel_direction, eos_id)

    def one_row(k, row):
        noise = random_spans_noise_mask(k, L, noise_density, mean_noise_span_length)
        inputs = _spans_to_sentinels(row, noise, Li, *sentinel_args)
        labels = _spans_to_sentinels(row, ~noise, Lt, *sentinel_args)
        return inputs, labels

    input_ids, labels = jax.vmap(one_row)(jax.random.split(key, B), tokens)
    return {
        "input_ids": input_ids,
        "attention_mask": jnp.ones((B, Li), jnp.int32),
        "labels": labels,
        "decoder_attention_mask": jnp.ones((B, Lt), jnp.int32),
    }
