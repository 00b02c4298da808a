"""Pure losses: cross-entropy (MLM, classification, NSP), ELECTRA's replaced-token detection
and contrastive (InfoNCE, NT-Xent).

Every loss returns ``(mean_loss, metrics)``. ``metrics`` holds float32 scalar sums and
counts (``loss_sum``, ``count``, ``correct``, ...) so they add up exactly across
micro-batches, steps and hosts; a mean is ``loss_sum / count`` after summing. All maths
runs in float32 whatever the input dtype. Everything is jit-able; contrastive losses take
global arrays, so under ``jax.jit`` with a batch sharded over devices the negatives still
come from the whole global batch.
"""

import jax
import jax.numpy as jnp

# Finite stand-in for -inf on excluded logits: keeps logsumexp, argmax and gradients
# NaN-free even for rows whose positive is itself excluded (padded rows, weight 0).
_NEG = -1e9


def _safe_mean(loss_sum, count):
    # count == 0 (everything masked) gives 0, not NaN, with finite (zero) gradients.
    return jnp.where(count > 0, loss_sum / jnp.where(count > 0, count, 1.0), 0.0)


def cross_entropy(logits, labels, mask=None, *, label_smoothing=0.0, z_loss=0.0):
    """Softmax cross-entropy with integer labels, averaged over ``mask``.

    Args:
      logits: [..., V] (any float dtype; computed in float32).
      labels: [...] integers. Labels outside [0, V) (e.g. Hugging Face's -100) are ignored.
      mask: [...] 0/1 or float weights; None means all ones.
      label_smoothing: targets are (1 - ls) * onehot + ls / V (optax ``smooth_labels``,
        Szegedy et al. 2016). Unlike T5X we do not subtract the smoothed target's entropy,
        so the minimum loss is > 0 when ls > 0.
      z_loss: adds ``z_loss * logsumexp(logits)**2`` per position (PaLM, Chowdhery et al.
        2022; T5X ``cross_entropy_with_logits``).

    Returns:
      (mean_loss, metrics): metrics ``loss_sum`` (total loss incl. smoothing and z-loss),
      ``nll_sum`` (plain negative log-likelihood: use it for perplexity), ``count``
      (sum of weights), ``correct`` (weighted argmax == label), and ``z_loss_sum`` when
      ``z_loss`` is not the literal 0.
    """
    logits = logits.astype(jnp.float32)
    V = logits.shape[-1]
    labels = jnp.asarray(labels)
    valid = (labels >= 0) & (labels < V)
    w = jnp.ones(labels.shape, jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
    w = jnp.broadcast_to(w, labels.shape) * valid
    safe_labels = jnp.where(valid, labels, 0).astype(jnp.int32)

    lse = jax.nn.logsumexp(logits, axis=-1)
    label_logit = jnp.take_along_axis(logits, safe_labels[..., None], axis=-1)[..., 0]
    nll = lse - label_logit  # -log p(label)
    if isinstance(label_smoothing, (int, float)) and label_smoothing == 0:
        loss = nll
    else:
        # -sum_v q_v log p_v with q = (1-ls) onehot + ls/V; mean_v log p_v = mean(logits) - lse.
        loss = (1.0 - label_smoothing) * nll + label_smoothing * (lse - logits.mean(axis=-1))
    metrics = {}
    if not (isinstance(z_loss, (int, float)) and z_loss == 0):
        zl = z_loss * jnp.square(lse)
        loss = loss + zl
        metrics["z_loss_sum"] = jnp.sum(zl * w)

    # Zero out ignored positions with where, not only a multiply, so inf/NaN there cannot leak.
    loss_sum = jnp.sum(jnp.where(w != 0, loss * w, 0.0))
    count = jnp.sum(w)
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == safe_labels) * w)
    metrics.update(
        loss_sum=loss_sum,
        nll_sum=jnp.sum(jnp.where(w != 0, nll * w, 0.0)),
        count=count,
        correct=correct,
    )
    return _safe_mean(loss_sum, count), metrics


def masked_lm(logits_BxPxV, targets_BxP, weights_BxP, **kw):
    """BERT MLM loss at the gathered masked positions (``masking.mask_tokens`` outputs).

    Unused prediction slots carry weight 0. Keywords go to ``cross_entropy``.
    """
    return cross_entropy(logits_BxPxV, targets_BxP, weights_BxP, **kw)


def classification(logits_BxC, labels_B, weights_B=None, **kw):
    """Sequence/image classification loss; keywords go to ``cross_entropy``.

    BERT's next-sentence prediction is this with C = 2 (``nsp_logits [B,2]``,
    ``next_sentence_label [B]``; label 0 = "B follows A", 1 = random B, as in HF).
    ``weights_B`` is the eval ``weight`` (0 on rows that only pad the last batch).
    """
    return cross_entropy(logits_BxC, labels_B, weights_B, **kw)


def replaced_token_detection(logits, labels, mask=None):
    """ELECTRA's discriminator loss (Clark et al. 2020, eq. 2; google-research/electra
    ``run_pretraining.py`` ``_get_discriminator_output``): sigmoid cross-entropy of "this
    token was replaced" at every position, averaged over ``mask`` (the non-padding tokens).

    Args:
      logits: [...] one logit per token (any float dtype; computed in float32).
      labels: [...] 1 where the token was replaced, else 0.
      mask: [...] 0/1 or float weights; None means all ones.

    Returns:
      (mean_loss, metrics): ``loss_sum``, ``count`` (sum of weights), ``correct`` (the
      prediction logit > 0 matches the label), ``positives`` (weighted replaced tokens).
    """
    x = jnp.asarray(logits).astype(jnp.float32)
    y = jnp.asarray(labels).astype(jnp.float32)
    w = jnp.ones(x.shape, jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
    w = jnp.broadcast_to(w, x.shape)
    # max(x, 0) - x y + log(1 + exp(-|x|)): -y log s(x) - (1 - y) log(1 - s(x)), stable.
    loss = jnp.maximum(x, 0.0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))
    loss_sum = jnp.sum(jnp.where(w != 0, loss * w, 0.0))
    count = jnp.sum(w)
    metrics = {
        "loss_sum": loss_sum,
        "count": count,
        "correct": jnp.sum(((x > 0) == (y > 0.5)) * w),
        "positives": jnp.sum(y * w),
    }
    return _safe_mean(loss_sum, count), metrics


def _l2_normalize(x, eps=1e-12):
    x = x.astype(jnp.float32)
    # Same clamp as torch.nn.functional.normalize: zero rows stay zero (finite grads).
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def _contrastive_metrics(loss_N, logits_NxM, positive_N, w_N):
    loss_sum = jnp.sum(jnp.where(w_N != 0, loss_N * w_N, 0.0))
    count = jnp.sum(w_N)
    correct = jnp.sum((jnp.argmax(logits_NxM, axis=-1) == positive_N) * w_N)
    metrics = {"loss_sum": loss_sum, "count": count, "correct": correct}
    return _safe_mean(loss_sum, count), metrics


def info_nce(za, zb, *, temperature, symmetric=True, weights=None):
    """CLIP-style InfoNCE (van den Oord et al. 2018; Radford et al. 2021).

    Rows of ``za`` [N,E] and ``zb`` [N,E] are L2-normalised; logits = za @ zb.T / temperature
    and row i's positive is column i. ``symmetric`` averages the row-wise (a -> b) and
    column-wise (b -> a) cross-entropies, as CLIP does. ``temperature`` may be a traced
    (learnable) scalar. ``weights`` [N] (optional): rows with weight 0 are padding and are
    excluded both as anchors and as negatives.

    Returns (mean_loss, metrics) with ``loss_sum``, ``count`` (sum of weights: N),
    ``correct`` (row-wise top-1 retrieval of the positive).
    """
    N = za.shape[0]
    w = jnp.ones((N,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    logits = _l2_normalize(za) @ _l2_normalize(zb).T / temperature  # [N,N]
    logits = jnp.where((w > 0)[None, :], logits, _NEG)  # padded columns are no negatives
    diag = jnp.diagonal(logits)
    loss = jax.nn.logsumexp(logits, axis=1) - diag
    if symmetric:
        logits_t = jnp.where((w > 0)[:, None], logits, _NEG)  # padded rows, seen column-wise
        loss = 0.5 * (loss + jax.nn.logsumexp(logits_t, axis=0) - diag)
    return _contrastive_metrics(loss, logits, jnp.arange(N), w)


def nt_xent(z1, z2, *, temperature, weights=None):
    """SimCLR's NT-Xent loss (Chen et al. 2020, eq. 1).

    The 2N views z = [z1; z2] are L2-normalised; every view is an anchor whose positive is
    the other view of its example and whose negatives are the other 2N - 2 views
    (self-similarity excluded). Mean over the 2N anchors. ``weights`` [N] (optional): pairs
    with weight 0 are padding, excluded as anchors and as negatives.

    Returns (mean_loss, metrics) with ``loss_sum``, ``count`` (sum of weights over the 2N
    anchors: 2N), ``correct`` (top-1 retrieval of the positive among the 2N - 1 others).
    """
    N = z1.shape[0]
    w = jnp.ones((N,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    w2 = jnp.concatenate([w, w])
    z = _l2_normalize(jnp.concatenate([z1, z2], axis=0))  # [2N,E]
    logits = z @ z.T / temperature  # [2N,2N]
    idx = jnp.arange(2 * N)
    exclude = (idx[:, None] == idx[None, :]) | (w2 <= 0)[None, :]
    logits = jnp.where(exclude, _NEG, logits)
    positive = (idx + N) % (2 * N)
    pos_logit = jnp.take_along_axis(logits, positive[:, None], axis=1)[:, 0]
    loss = jax.nn.logsumexp(logits, axis=1) - pos_logit
    return _contrastive_metrics(loss, logits, positive, w2)


# --------------------------------------------------------------------- distillation
def _weighted(loss, mask):
    """(mean, metrics) of per-position `loss` [...] weighted by `mask` (None: ones)."""
    w = jnp.ones(loss.shape, jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
    w = jnp.broadcast_to(w, loss.shape)
    loss_sum = jnp.sum(jnp.where(w != 0, loss * w, 0.0))
    count = jnp.sum(w)
    return _safe_mean(loss_sum, count), {"loss_sum": loss_sum, "count": count}


def distill_kl(student_logits, teacher_logits, mask=None, *, temperature=1.0):
    """Knowledge distillation's soft-target loss (Hinton et al. 2015; DistilBERT, Sanh et
    al. 2019, ``L_ce``): T^2 KL(softmax(t / T) || softmax(s / T)) per position, averaged
    over ``mask``. The T^2 keeps the gradients' scale independent of T (Hinton et al. sec.
    2). ``student_logits``, ``teacher_logits``: [..., V]; ``mask`` [...]."""
    T = temperature
    log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / T, axis=-1)
    log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / T, axis=-1)
    kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
    return _weighted(kl * (T * T), mask)


def cosine_distance(student, teacher, mask=None):
    """1 - cos(student, teacher) of each vector [..., D] (DistilBERT's ``L_cos`` on the last
    hidden states), averaged over ``mask`` [...]."""
    cos = jnp.sum(_l2_normalize(student) * _l2_normalize(teacher), axis=-1)
    return _weighted(1.0 - cos, mask)


def mean_squared_error(student, teacher, mask=None):
    """The mean over the last axis of (student - teacher)^2 [..., D], averaged over ``mask``
    [...] (TinyBERT's embedding-layer loss, Jiao et al. 2020, eq. 9, without a projection:
    equal widths)."""
    d = student.astype(jnp.float32) - teacher.astype(jnp.float32)
    return _weighted(jnp.mean(d * d, axis=-1), mask)


def _relations(x_BxLxD, num_heads, mask_BxLxL):
    """log softmax(X_r X_r^T / sqrt(d_r)) [B,R,L,L] over the allowed keys, X split into
    `num_heads` relation heads of d_r = D / R."""
    B, L, D = x_BxLxD.shape
    d_r = D // num_heads
    x = x_BxLxD.astype(jnp.float32).reshape(B, L, num_heads, d_r)
    scores = jnp.einsum("BLRK,BSRK->BRLS", x, x) / jnp.sqrt(float(d_r))
    scores = jnp.where(mask_BxLxL[:, None], scores, _NEG)
    return jax.nn.log_softmax(scores, axis=-1)


def attention_relations(student_qkv, teacher_qkv, mask_BxLxL, weights_BxL=None, *, num_heads):
    """MiniLMv2's self-attention relation loss (Wang et al. 2021, eq. 4-5): for each of Q,
    K and V (``*_qkv``: three [B,L,D] arrays; the widths of student and teacher may differ),
    split into ``num_heads`` relation heads, the relation softmax(X X^T / sqrt(d_r)) over the
    keys ``mask_BxLxL`` allows (real tokens of the query's own document); the loss is
    KL(teacher || student) per query row, averaged over heads, over the query rows
    ``weights_BxL`` weighs (real tokens) and over Q, K, V.

    Returns (mean_loss, metrics): ``loss_sum`` (of the row KLs averaged over heads and the
    three relations) and ``count`` (weighted rows)."""
    mask = jnp.asarray(mask_BxLxL, bool)
    kl = 0.0
    for s, t in zip(student_qkv, teacher_qkv, strict=True):
        log_p, log_q = _relations(t, num_heads, mask), _relations(s, num_heads, mask)
        row = jnp.sum(jnp.where(mask[:, None], jnp.exp(log_p) * (log_p - log_q), 0.0), axis=-1)
        kl = kl + jnp.mean(row, axis=1) / len(student_qkv)  # [B,L]
    return _weighted(kl, weights_BxL)
