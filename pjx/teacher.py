"""Distillation's teacher (task distill, pjx.tasks.distill): what it is, what the student
it implies is, and what it cannot serve.

- `resolve`: the teacher's architecture (read from `distill.teacher`, anything `init_from`
  takes) as the frozen model the step runs, and with `distill.student_init=every_other`
  the student's (the teacher's body at depth `model.num_layers`, half the teacher's by
  default); every refusal names the key to change: a teacher that is no BERT-family
  encoder, a student of another width than an every_other teacher, a term the teacher
  cannot serve, a data tokenizer other than the teacher's.
- `every_other`: DistilBERT's student init (Sanh et al. 2019, sec. 3): teacher layers 0, 2,
  4, ... into student layers 0, 1, 2, ..., plus the embeddings and heads.
- `param_hash`: what WORKDIR/config.json records (`distill.teacher_hash`), so a resume
  with another teacher is refused (pjx.run).
"""

from __future__ import annotations

import hashlib
import math
import re

import jax
import jax.numpy as jnp
import numpy as np

from pjx import checkpoint, hf, init_from, models, tokenizers
from pjx.tasks import distill as task

# Student fields an every_other init copies from the teacher: a different value cannot
# take the teacher's layers.
SHAPE_FIELDS = ("hidden_size", "num_heads", "mlp_dim", "vocab_size", "max_position_embeddings",
                "type_vocab_size", "variant", "activation")  # fmt: skip
ENCODER = "bert/encoder/layer"  # the layer stack's path (pjx.models.bert.STACKS)


def local(source: str) -> str:
    """`source` as `init_from` reads it: a Hub id becomes its local snapshot (`hf:DIR`)."""
    return str(hf.folder.local_source(source)) if source else ""


def resolve(c) -> tuple[dict, dict]:
    """(the teacher's Config fields, the student fields it fixes) for a distill config `c`
    (its `distill` block, `model` section as written, `init_from`, `data.tokenizer`);
    ValueError naming the key for what cannot work."""
    d = c.distill
    source = local(str(d.teacher or ""))
    if not source:
        raise ValueError(
            "task distill needs distill.teacher: a pjx workdir, hf:DIR or hf:ORG/NAME "
            "(anything init_from takes)"
        )
    if d.student_init not in task.STUDENT_INITS:
        raise ValueError(
            f"distill.student_init={d.student_init!r}: choose one of {task.STUDENT_INITS}"
        )
    family, saved = init_from.source_model(source)
    if family != "bert" or float(saved.get("generator_size") or 0):
        what = "an ELECTRA pair" if family == "bert" else f"a {family!r} model"
        raise ValueError(
            f"distill.teacher={d.teacher} holds {what}: task distill distils BERT-family "
            "encoders (BERT, RoBERTa, DistilBERT, MiniLM layouts)"
        )
    valid = {f for f in models.make_config("bert", None).__dataclass_fields__}
    teacher = {k: v for k, v in saved.items() if k in valid}
    # Only the heads it has (a sentence encoder has no MLM head), computed as the run does.
    own = {k: v for k, v in c.model.items() if k not in ("name", "size")}
    runtime = {k: own[k] for k in ("dtype", "attention_impl", "scan_layers") if k in own}
    teacher.update(
        runtime, nsp_head=False, num_labels=0, generator_size=0.0, remat="none",
        sow_internals=True, mlm_head=bool(saved.get("mlm_head", True)), distill_width=0,
    )  # fmt: skip
    t = models.make_config("bert", None, **teacher)

    student = {"vocab_size": t.vocab_size}  # the teacher's tokenizer, the teacher's ids
    if d.student_init == "every_other":
        if c.get("init_from"):
            raise ValueError(
                f"init_from={c.init_from}: distill.student_init=every_other starts the student "
                "from the teacher's layers; leave init_from unset (or set student_init=random)"
            )
        for k in SHAPE_FIELDS:
            if k in own and own[k] != getattr(t, k):
                raise ValueError(
                    f"model.{k}={own[k]!r} differs from the teacher's {getattr(t, k)!r}: "
                    "distill.student_init=every_other copies the teacher's layers, so the "
                    "student has the teacher's width and shapes (a wider or narrower student "
                    "needs distill.student_init=random)"
                )
        most = math.ceil(t.num_layers / 2)
        n = int(own.get("num_layers", most))
        if not 1 <= n <= most:
            raise ValueError(
                f"model.num_layers={n}: distill.student_init=every_other takes teacher layers "
                f"0, 2, 4, ... of {t.num_layers}, at most {most} student layers"
            )
        body = init_from.HEAD_FIELDS + init_from.RUNTIME_FIELDS + ("sow_internals",)
        student = {k: v for k, v in teacher.items() if k not in body}
        student["num_layers"] = n
    s = models.make_config("bert", c.model.size, **{**student, **own})
    _check_terms(d, t, s)
    if "hidden_cosine" in dict(task.parse_losses(d.losses)) and s.hidden_size != t.hidden_size:
        student["distill_width"] = t.hidden_size  # the student's projection to the teacher
    _check_tokenizer(c, source)
    return dataclass_fields(t), student


def dataclass_fields(config) -> dict:
    return {f: getattr(config, f) for f in config.__dataclass_fields__}


def _check_terms(d, t, s) -> None:
    """Each term of `distill.losses` against teacher `t` and student `s` configs."""
    terms = dict(task.parse_losses(d.losses))
    if "logits" in terms:
        if not t.mlm_head:
            raise ValueError(
                f"distill.losses: term 'logits' needs the teacher's MLM head, and "
                f"distill.teacher={d.teacher} has none (a sentence encoder such as "
                "all-MiniLM-L6-v2 keeps only its body): drop 'logits' from distill.losses"
            )
        if t.vocab_size != s.vocab_size:
            raise ValueError(
                f"model.vocab_size={s.vocab_size}: term 'logits' compares MLM distributions "
                f"over the teacher's {t.vocab_size} ids; leave model.vocab_size unset"
            )
    if "embedding" in terms and s.hidden_size != t.hidden_size:
        raise ValueError(
            f"distill.losses: term 'embedding' compares embedding outputs of equal widths, but "
            f"model.hidden_size={s.hidden_size} and the teacher's is {t.hidden_size}: drop "
            "'embedding' (hidden_cosine and attention_relations work across widths)"
        )
    if "attention_relations" in terms:
        heads = int(d.relation_heads or t.num_heads)
        if heads < 1 or s.hidden_size % heads or t.hidden_size % heads:
            raise ValueError(
                f"distill.relation_heads={heads}: relation heads must divide both widths "
                f"(student {s.hidden_size}, teacher {t.hidden_size}); set "
                "--config.distill.relation_heads to a common divisor"
            )


def _check_tokenizer(c, source: str) -> None:
    """The student reads text with the teacher's tokenizer: a `data.tokenizer` the config
    names (or init_from's) that tokenizes differently is refused."""
    folder = checkpoint.tokenizer_dir(source)
    spec = str(c.data.get("tokenizer") or "")
    if folder is None:
        if not spec:
            raise ValueError(
                f"distill.teacher={c.distill.teacher} keeps no tokenizer: name the one it was "
                "trained with in data.tokenizer"
            )
        return
    if spec.startswith("train:"):
        raise ValueError(
            f"data.tokenizer={spec!r} trains a new vocabulary, but a student reads text with "
            f"its teacher's tokenizer ({folder}): leave data.tokenizer unset"
        )
    others = [("data.tokenizer", spec)] if spec else []
    if c.get("init_from"):
        src = local(str(c.init_from))
        other = checkpoint.tokenizer_dir(src if src.startswith("hf:") else src)
        if other is not None:
            others.append(("init_from", str(other)))
    if not others:
        return
    mine = fingerprint(tokenizers.load(str(folder)))
    for key, other in others:
        if fingerprint(tokenizers.load(other)) != mine:
            raise ValueError(
                f"{key}={other!r} tokenizes text differently from distill.teacher's tokenizer "
                f"({folder}): a student shares its teacher's vocabulary; leave {key} unset"
            )


PROBE = "The quick brown fox, naïve café 123 -- jumps over the lazy dog."


def fingerprint(tok) -> tuple:
    """What makes two tokenizers read text alike: sizes, special ids, every id's text and
    a probe sentence's ids."""
    specials = tuple(
        getattr(tok, f"{n}_id", None) for n in ("pad", "unk", "cls", "sep", "mask", "bos", "eos")
    )
    pieces = tuple(tok.decode([i]) for i in range(int(tok.vocab_size)))
    return int(tok.vocab_size), specials, pieces, tuple(tok.encode(PROBE))


# ----------------------------------------------------------------------------- params
def _flat(tree) -> dict:
    return {checkpoint.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def param_hash(params) -> str:
    """SHA-256 of the parameters (paths, dtypes, shapes, bytes) in the unscanned layout, so
    a scanned and an unscanned read of one teacher hash alike."""
    flat = models.unstack_layers({k: np.asarray(v) for k, v in _flat(params).items()})
    h = hashlib.sha256()
    for path in sorted(flat):
        x = np.ascontiguousarray(flat[path])
        h.update(f"{path}|{x.dtype}|{x.shape}|".encode())
        h.update(x.tobytes())
    return h.hexdigest()


def every_other(student, teacher, num_layers: int) -> tuple[dict, list[str]]:
    """DistilBERT's init: `student` (params) with teacher layer 2i in student layer i and
    every other parameter of the same path and shape (embeddings, pooler, MLM head) copied
    from `teacher`; both in one layout (scanned or not). Returns (params, the paths kept
    as initialised: what the teacher lacks)."""
    t = _flat(teacher)
    fresh, out = [], {}
    for path, x in _flat(student).items():
        if path.startswith(ENCODER + "/"):  # scanned: [teacher layers, ...] -> every other
            y = t.get(path)
            y = None if y is None else y[0::2][:num_layers]
        else:
            m = re.match(rf"{ENCODER}_(\d+)/(.*)", path)
            src = f"{ENCODER}_{2 * int(m[1])}/{m[2]}" if m else path
            y = t.get(src)
        if y is None or tuple(y.shape) != tuple(x.shape):
            fresh.append(path)
            out[path] = x
        else:
            # A copy: the train step donates the student's buffers, never the teacher's.
            out[path] = jax.device_put(jnp.array(y, dtype=x.dtype, copy=True), x.sharding)
    flat_paths = [
        checkpoint.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(student)[0]
    ]
    treedef = jax.tree.structure(student)
    return jax.tree.unflatten(treedef, [out[p] for p in flat_paths]), fresh
