"""Objectives: each task maps (params, batch, rng) to (loss, metrics) and owns its eval metrics.

A `Task` has
  loss(model, params, batch, rng, *, train, **args) -> (loss, metrics)
      pure and jit-able; `metrics` are float32 sums and counts (`loss_sum`, `count`,
      ...) that add up exactly over micro-batches, eval batches and hosts; an eval
      batch's `weight` [B] (0 on padding rows) is folded into every count;
  finalize(summed metrics) -> dict of reported floats (host side);
  unit: "tokens" | "examples" (throughput), and `defaults` for `config.task_args`.
Dispatch is the plain dict `TASKS`. Runtime arguments from the tokenizer (mask id,
special ids, vocabulary size, sentinel ids) come from `runtime_args`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from pjx import losses, masking, metrics


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    loss: Callable
    finalize: Callable
    unit: str
    defaults: dict = dataclasses.field(default_factory=dict)


def _weight(batch, B):
    w = batch.get("weight")
    return jnp.ones((B,), jnp.float32) if w is None else jnp.asarray(w, jnp.float32)


def _apply(model, params, rng, train, *args, **kw):
    rngs = {"dropout": rng} if train else {}
    return model.apply({"params": params}, *args, deterministic=not train, rngs=rngs, **kw)


def _lm_finalize(m) -> dict:
    count = max(float(m["count"]), 1e-12)
    nll = float(m.get("nll_sum", m["loss_sum"]))
    out = {
        "loss": float(m["loss_sum"]) / count,
        "accuracy": float(m["correct"]) / count,
        # Perplexity from the plain NLL (equals exp(loss) without smoothing / z-loss);
        # capped so a diverged model logs a finite number.
        "perplexity": math.exp(min(nll / count, 80.0)),
        "count": float(m["count"]),
    }
    if "nsp_count" in m:
        nc = max(float(m["nsp_count"]), 1e-12)
        out["nsp_loss"] = float(m["nsp_loss_sum"]) / nc
        out["nsp_accuracy"] = float(m["nsp_correct"]) / nc
        out["loss"] += out["nsp_loss"]
    return out


# ------------------------------------------------------------------------------------ mlm
def mlm_loss(
    model,
    params,
    batch,
    rng,
    *,
    train,
    mask_id,
    vocab_size,
    special_ids=(),
    pad_id=0,
    mask_rate=0.15,
    max_predictions=None,
    nsp=False,
    label_smoothing=0.0,
):
    """BERT masked LM (Devlin et al. 2019): 80/10/10 masking on device from the step rng,
    logits only at the masked positions (the model gathers before the vocab matmul)."""
    k_mask, k_drop = jax.random.split(rng)
    ids = batch["input_ids"]
    B = ids.shape[0]
    m = masking.mask_tokens(
        k_mask,
        ids,
        rate=mask_rate,
        mask_id=mask_id,
        vocab_size=vocab_size,
        special_ids=tuple(special_ids),
        max_predictions=max_predictions,
        pad_id=pad_id,
    )
    out = _apply(
        model,
        params,
        k_drop,
        train,
        m["input_ids"],
        attention_mask=batch.get("attention_mask"),
        token_type_ids=batch.get("token_type_ids"),
        position_ids=batch.get("position_ids"),
        segment_ids=batch.get("segment_ids"),
        masked_positions=m["masked_positions"],
    )
    w = _weight(batch, B)
    loss, mets = losses.masked_lm(
        out["mlm_logits"],
        m["masked_targets"],
        m["masked_weights"] * w[:, None],
        label_smoothing=label_smoothing,
    )
    if nsp:
        nsp_loss, nm = losses.classification(out["nsp_logits"], batch["next_sentence_label"], w)
        loss = loss + nsp_loss
        mets = dict(
            mets, nsp_loss_sum=nm["loss_sum"], nsp_count=nm["count"], nsp_correct=nm["correct"]
        )
    return loss, mets


# ------------------------------------------------------------------------------------ clm
def clm_loss(model, params, batch, rng, *, train, label_smoothing=0.0, z_loss=0.0):
    """Next-token prediction; a position counts only if the next token is in the same
    (non-padding) packed segment."""
    ids = batch["input_ids"]
    out = _apply(
        model,
        params,
        rng,
        train,
        ids,
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
        segment_ids=batch.get("segment_ids"),
    )
    seg = batch.get("segment_ids")
    if seg is not None:
        mask = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    elif batch.get("attention_mask") is not None:
        mask = batch["attention_mask"][:, 1:] > 0
    else:
        mask = jnp.ones(ids[:, 1:].shape, bool)
    mask = mask.astype(jnp.float32) * _weight(batch, ids.shape[0])[:, None]
    # Position t predicts token t+1; the last position gets label 0 and weight 0. Keeping all
    # L positions avoids slicing the [B,L,V] logits (a copy, and a pad in the backward pass).
    labels = jnp.concatenate([ids[:, 1:], jnp.zeros_like(ids[:, :1])], axis=1)
    mask = jnp.concatenate([mask, jnp.zeros_like(mask[:, :1])], axis=1)
    return losses.cross_entropy(
        out["logits"], labels, mask, label_smoothing=label_smoothing, z_loss=z_loss
    )


# ------------------------------------------------------------------------- span, seq2seq
def _shift_right(labels, start_id=0):
    """T5 decoder inputs: labels shifted right, decoder_start_token_id (= pad, 0) first."""
    return jnp.concatenate([jnp.full_like(labels[:, :1], start_id), labels[:, :-1]], axis=1)


def _seq2seq(model, params, enc_ids, enc_mask, labels, dec_mask, w, rng, train, ls):
    out = _apply(
        model,
        params,
        rng,
        train,
        enc_ids,
        attention_mask=enc_mask,
        decoder_input_ids=_shift_right(labels),
        decoder_attention_mask=dec_mask,
    )
    mask = jnp.asarray(dec_mask, jnp.float32) * w[:, None]
    return losses.cross_entropy(out["logits"], labels, mask, label_smoothing=ls)


def span_loss(
    model,
    params,
    batch,
    rng,
    *,
    train,
    first_sentinel_id,
    eos_id,
    sentinel_direction=-1,
    noise_density=0.15,
    mean_noise_span_length=3.0,
    label_smoothing=0.0,
):
    """T5 span corruption (Raffel et al. 2020, sec. 3.1.4) on device from the step rng."""
    k_mask, k_drop = jax.random.split(rng)
    ids = batch["input_ids"]
    c = masking.span_corrupt(
        k_mask,
        ids,
        noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length,
        first_sentinel_id=first_sentinel_id,
        sentinel_direction=sentinel_direction,
        eos_id=eos_id,
    )
    return _seq2seq(
        model,
        params,
        c["input_ids"],
        c["attention_mask"],
        c["labels"],
        c["decoder_attention_mask"],
        _weight(batch, ids.shape[0]),
        k_drop,
        train,
        label_smoothing,
    )


def seq2seq_loss(model, params, batch, rng, *, train, label_smoothing=0.0):
    """T5 fine-tuning: teacher-forced cross-entropy on `labels` where decoder_attention_mask."""
    labels = batch["labels"]
    dec_mask = batch.get("decoder_attention_mask")
    if dec_mask is None:
        dec_mask = (labels != 0).astype(jnp.int32)
    return _seq2seq(
        model,
        params,
        batch["input_ids"],
        batch.get("attention_mask"),
        labels,
        dec_mask,
        _weight(batch, labels.shape[0]),
        rng,
        train,
        label_smoothing,
    )


# ------------------------------------------------------------------------------- classify
def classify_loss(model, params, batch, rng, *, train, label_smoothing=0.0):
    """Sequence (BERT [CLS] pooler) or image (ViT) classification; metrics carry the
    confusion matrix so precision / recall / F1 / MCC are exact over the eval set."""
    if "pixel_values" in batch:
        out = _apply(model, params, rng, train, batch["pixel_values"])
    else:
        out = _apply(
            model,
            params,
            rng,
            train,
            batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            token_type_ids=batch.get("token_type_ids"),
        )
    logits = out["logits"]
    labels = batch["label"]
    w = _weight(batch, labels.shape[0])
    loss, mets = losses.classification(logits, labels, w, label_smoothing=label_smoothing)
    mets = dict(mets, confusion=metrics.confusion_matrix(logits, labels, logits.shape[-1], w))
    return loss, mets


def classify_finalize(m) -> dict:
    report = metrics.classification_report(np.asarray(m["confusion"]))
    count = max(float(m["count"]), 1e-12)
    out = {"loss": float(m["loss_sum"]) / count}
    out.update({k: float(v) for k, v in report.items() if np.ndim(v) == 0})
    return out


# ---------------------------------------------------------------------------- contrastive
def contrastive_loss(model, params, batch, rng, *, train, loss="nt_xent", temperature=0.1):
    """SimCLR (Chen et al. 2020): both views through the model in one pass, NT-Xent or
    InfoNCE on the projections; `correct` = top-1 retrieval of the positive pair."""
    a, b = batch["view_a"], batch["view_b"]
    B = a.shape[0]
    z = _apply(model, params, rng, train, jnp.concatenate([a, b], axis=0))["projection"]
    fn = {"nt_xent": losses.nt_xent, "info_nce": losses.info_nce}[loss]
    return fn(z[:B], z[B:], temperature=temperature, weights=_weight(batch, B))


def contrastive_finalize(m) -> dict:
    count = max(float(m["count"]), 1e-12)
    return {"loss": float(m["loss_sum"]) / count, "accuracy": float(m["correct"]) / count}


TASKS: dict[str, Task] = {
    "mlm": Task(
        "mlm",
        mlm_loss,
        _lm_finalize,
        "tokens",
        dict(mask_rate=0.15, max_predictions=None, nsp=False, label_smoothing=0.0),
    ),
    "clm": Task("clm", clm_loss, _lm_finalize, "tokens", dict(label_smoothing=0.0, z_loss=0.0)),
    "span": Task(
        "span",
        span_loss,
        _lm_finalize,
        "tokens",
        dict(noise_density=0.15, mean_noise_span_length=3.0, label_smoothing=0.0),
    ),
    "seq2seq": Task("seq2seq", seq2seq_loss, _lm_finalize, "tokens", dict(label_smoothing=0.0)),
    "classify": Task(
        "classify", classify_loss, classify_finalize, "examples", dict(label_smoothing=0.0)
    ),
    "contrastive": Task(
        "contrastive",
        contrastive_loss,
        contrastive_finalize,
        "examples",
        dict(loss="nt_xent", temperature=0.1),
    ),
}


def get(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name]


def runtime_args(name: str, task_args: dict, tokenizer=None, model_config=None) -> dict:
    """Task defaults + `config.task_args` + what the tokenizer / model fix (hashable)."""
    args = {**get(name).defaults, **dict(task_args or {})}
    if name == "mlm":
        vocab = getattr(model_config, "vocab_size", None)
        if tokenizer is not None:
            args.setdefault("mask_id", _token_id(tokenizer, "mask"))
            args.setdefault("pad_id", _token_id(tokenizer, "pad", 0))
            args.setdefault("special_ids", tuple(_special_ids(tokenizer)))
            vocab = vocab or tokenizer.vocab_size
        args.setdefault("vocab_size", vocab)
        args["special_ids"] = tuple(int(i) for i in args.get("special_ids", ()))
        if args.get("mask_id") is None:
            raise ValueError("task mlm needs a tokenizer with a mask token or task_args.mask_id")
    if name == "span":
        if tokenizer is not None:
            args.setdefault("eos_id", _token_id(tokenizer, "eos", 1))
            sentinels = getattr(tokenizer, "sentinel_ids", None)
            if sentinels:
                args.setdefault("first_sentinel_id", int(sentinels[0]))
                if len(sentinels) > 1:
                    args.setdefault("sentinel_direction", int(np.sign(sentinels[1] - sentinels[0])))
        vocab = getattr(model_config, "vocab_size", None)
        args.setdefault("eos_id", 1)
        args.setdefault("first_sentinel_id", (vocab or 32100) - 1)
    valid = [
        n
        for n, p in inspect.signature(get(name).loss).parameters.items()
        if p.kind == p.KEYWORD_ONLY and n != "train"
    ]
    unknown = sorted(set(args) - set(valid))
    if unknown:
        raise ValueError(f"task_args {unknown} are not options of task {name!r}; valid: {valid}")
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in args.items()}


def _token_id(tokenizer, kind, default=None):
    for attr in (f"{kind}_id", f"{kind}_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return default


def _special_ids(tokenizer):
    ids = getattr(tokenizer, "special_ids", None) or getattr(tokenizer, "all_special_ids", None)
    if ids is not None:
        return ids
    return [
        i
        for i in (_token_id(tokenizer, k) for k in ("cls", "sep", "unk", "bos", "eos"))
        if i is not None
    ]
