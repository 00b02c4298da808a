"""`distill`: task-agnostic knowledge distillation during pretraining, a BERT-family
teacher into a student encoder (DistilBERT, Sanh et al. 2019; MiniLMv2, Wang et al. 2021).

Each step masks the batch as `mlm` does (80/10/10, on device), runs the frozen teacher on
the same corrupted input (its parameters are the step's extra argument, under
`stop_gradient`: no gradient, no optimizer state, no checkpoint; pjx.train) and the
student, and adds the terms `distill.losses` weighs (`"logits:5,hidden_cosine:1,mlm:2"`):

- `logits`: T^2 KL(teacher || student) of the MLM distributions at the masked positions,
  at temperature `distill.temperature` (DistilBERT's L_ce; the teacher needs an MLM head);
- `hidden_cosine`: 1 - cos of the last hidden states on real tokens (DistilBERT's L_cos);
  a student of another width compares its `projected_hidden_state`, a learned projection
  to the teacher's width (TinyBERT's W_h; `model.distill_width`, set by pjx.teacher);
- `attention_relations`: MiniLMv2's Q-Q, K-K, V-V self-attention relations of the last
  layer, in `distill.relation_heads` heads (0: the teacher's heads), KL(teacher ||
  student) over real keys (any widths the heads divide);
- `embedding`: MSE of the embedding-layer outputs (equal widths);
- `mlm`: the student's own masked-LM loss (DistilBERT's L_mlm).

The `distill` config block (pjx.config) holds the options; `teacher` (anything
`init_from` takes), `student_init` and the teacher's resolved architecture
(`teacher_model`) and parameter hash (`teacher_hash`) are read by pjx.teacher and
pjx.run, not by the loss. Data and encoding are `mlm`'s, without NSP pairs.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

import pjx.tasks.base as base
from pjx import losses as loss_lib
from pjx import models
from pjx.models import bert
from pjx.nn.attention import make_attention_mask
from pjx.tasks.mlm import MLM

TERMS = ("logits", "hidden_cosine", "attention_relations", "embedding", "mlm")
# The `config.distill` block (pjx.config.base_config): DistilBERT's loss weights (5, 1, 2
# for L_ce, L_cos, L_mlm) and temperature 2.
DEFAULTS = dict(
    teacher="",
    student_init="every_other",
    losses="logits:5,hidden_cosine:1,mlm:2",
    temperature=2.0,
    relation_heads=0,
    teacher_model=None,  # filled in by pjx.resolution.resolve: the teacher's Config fields
    teacher_hash="",  # filled in by pjx.run: a hash of the teacher's parameters
)
STUDENT_INITS = ("every_other", "random")
# Options of the block that are no loss arguments (read where the run is assembled).
RUN_OPTIONS = ("teacher", "student_init", "teacher_hash")


def parse_losses(spec) -> tuple[tuple[str, float], ...]:
    """`distill.losses` -> ((term, weight), ...): "logits:5,mlm:2" (a term alone weighs 1)
    or a mapping {term: weight}. An unknown term or a bad weight names the key."""
    if isinstance(spec, Mapping):
        items = [(str(k), v) for k, v in spec.items()]
    elif isinstance(spec, (tuple, list)):
        items = [tuple(x) for x in spec]
    else:
        items = []
        for part in str(spec).replace(" ", "").split(","):
            if part:
                name, _, w = part.partition(":")
                items.append((name, w or 1.0))
    out = []
    for name, w in items:
        if name not in TERMS:
            raise ValueError(f"distill.losses: unknown term {name!r}; choose from {TERMS}")
        try:
            w = float(w)
        except ValueError:
            raise ValueError(f"distill.losses: {name}'s weight {w!r} is not a number") from None
        if w < 0:
            raise ValueError(f"distill.losses: {name}'s weight {w} is negative")
        out.append((name, w))
    if len({n for n, _ in out}) != len(out) or not any(w > 0 for _, w in out):
        raise ValueError(
            f"distill.losses={spec!r}: name each term once, at least one with a weight > 0"
        )
    return tuple(out)


def teacher_model(fields):
    """The frozen teacher's Linen model from its resolved Config fields."""
    return models.create("bert", None, **dict(fields))


class Distill(MLM):
    name = "distill"
    section = "distill"
    defaults = dict(mask_rate=0.15, max_predictions=None, **DEFAULTS)

    def loss(
        self,
        model,
        params,
        batch,
        rng,
        teacher_params=None,
        *,
        train,
        teacher_model,
        mask_id,
        vocab_size,
        special_ids=(),
        pad_id=0,
        mask_rate=0.15,
        max_predictions=None,
        losses=(("mlm", 1.0),),
        temperature=2.0,
        relation_heads=0,
    ):
        if teacher_params is None:
            raise ValueError("task distill's loss takes the teacher's parameters after rng")
        terms = dict(parse_losses(losses))
        k_mask, k_drop = jax.random.split(rng)
        ids = batch["input_ids"]
        m = self.mask(k_mask, ids, mask_id, vocab_size, special_ids, pad_id, mask_rate,
                      max_predictions)  # fmt: skip
        inputs = dict(
            attention_mask=batch.get("attention_mask"),
            token_type_ids=batch.get("token_type_ids"),
            position_ids=batch.get("position_ids"),
            segment_ids=batch.get("segment_ids"),
            masked_positions=m["masked_positions"],
        )
        # Only the embedding and relation terms read what the models sow.
        sown = (
            {"mutable": ["intermediates"]}
            if {"embedding", "attention_relations"} & set(terms)
            else {}
        )

        def run(module, p, key, is_train):
            out = base.apply(module, p, key, is_train, m["input_ids"], **inputs, **sown)
            if not sown:
                return out
            out, state = out
            return {**out, **bert.internals(state["intermediates"], module.config)}

        student = run(model, params, k_drop, train)
        # The teacher is frozen: no gradient reaches its parameters (nor anything through it).
        teacher = jax.lax.stop_gradient(
            run(teacher_model, jax.lax.stop_gradient(teacher_params), None, False)
        )

        heads = relation_heads or teacher_model.config.num_heads
        parts = _parts(terms, student, teacher, batch, m, temperature, heads)
        mets = parts["mlm"][1]
        total = 0.0
        for name, weight in terms.items():
            loss, pm = parts[name]
            total = total + weight * loss
            mets[f"{name}_loss_sum"] = pm["loss_sum"]
            mets[f"{name}_weighted_sum"] = weight * pm["loss_sum"]
            mets[f"{name}_count"] = pm["count"]
        return total, mets

    def finalize(self, m) -> dict:
        out = base.lm_finalize(m)  # the student's masked-LM loss, accuracy and perplexity
        out["mlm_loss"] = out.pop("loss")
        total = 0.0
        for name in TERMS:
            if f"{name}_count" in m:
                count = max(float(m[f"{name}_count"]), 1e-12)
                out[f"{name}_loss"] = float(m[f"{name}_loss_sum"]) / count
                total += float(m[f"{name}_weighted_sum"]) / count
        out["loss"] = total
        return out

    def arg_names(self) -> list[str]:
        return [*super().arg_names(), *RUN_OPTIONS]

    def model_fields(self, family, args) -> dict:
        # The student's MLM head serves `logits` and `mlm`; sown internals the other terms.
        return {"mlm_head": True, "nsp_head": False, "sow_internals": True}

    def runtime_args(self, args, tokenizer, model_config) -> dict:
        args = {k: v for k, v in dict(args).items() if k not in RUN_OPTIONS}
        if not args.get("teacher_model"):
            raise ValueError("task distill needs distill.teacher (resolved by pjx.config)")
        args["teacher_model"] = teacher_model(args["teacher_model"])
        args["losses"] = parse_losses(args["losses"])
        return super().runtime_args(args, tokenizer, model_config)

    def frozen_models(self, args) -> tuple:
        return (teacher_model(args["teacher_model"]),)

    # Data: mlm's rows, never NSP pairs.
    def encoding_key(self, args, seed) -> dict:
        return super().encoding_key({**args, "nsp": False}, seed)

    def encode(self, ex, tokenizer, data_cfg, args, seed):
        return super().encode(ex, tokenizer, data_cfg, {**args, "nsp": False}, seed)

    def batch_spec(self, batch_size, data_cfg, model_config, args) -> dict:
        return super().batch_spec(batch_size, data_cfg, model_config, {**args, "nsp": False})


def _parts(terms, student, teacher, batch, m, temperature, relation_heads) -> dict:
    """name -> (mean loss, metric sums) of each term asked for (`mlm` always: its metrics
    are the task's)."""
    B, L = batch["input_ids"].shape
    w = base.weight(batch, B)
    real = batch.get("attention_mask")
    real = jnp.ones((B, L), jnp.float32) if real is None else real.astype(jnp.float32)
    real = real * w[:, None]
    masked = m["masked_weights"] * w[:, None]
    parts = {"mlm": loss_lib.masked_lm(student["mlm_logits"], m["masked_targets"], masked)}
    if "logits" in terms:
        parts["logits"] = loss_lib.distill_kl(
            student["mlm_logits"], teacher["mlm_logits"], masked, temperature=temperature
        )
    if "hidden_cosine" in terms:
        hidden = student.get("projected_hidden_state", student["last_hidden_state"])
        parts["hidden_cosine"] = loss_lib.cosine_distance(
            hidden, teacher["last_hidden_state"], real
        )
    if "embedding" in terms:
        parts["embedding"] = loss_lib.mean_squared_error(
            student["embedding_output"], teacher["embedding_output"], real
        )
    if "attention_relations" in terms:
        keys = make_attention_mask(
            L, L, kv_mask=batch.get("attention_mask"), q_segment_ids=batch.get("segment_ids")
        )
        keys = jnp.ones((B, L, L), bool) if keys is None else keys[:, 0]
        qkv = ("query", "key", "value")
        parts["attention_relations"] = loss_lib.attention_relations(
            [student[n] for n in qkv],
            [teacher[n] for n in qkv],
            jnp.broadcast_to(keys, (B, L, L)),
            real,
            num_heads=relation_heads,
        )
    return parts
