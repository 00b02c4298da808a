"""Text -> fixed-shape int32 arrays, once per (source, tokenizer, task, length); cached.

Language modelling packs documents into rows of L tokens in order: a document fills the
rest of the current row and continues in the next (`pack`), and every piece gets its own
`segment_ids` value (1, 2, ... within a row; 0 on padding) and `position_ids` restarting at
0, so attention never crosses documents (packing with segment ids as in T5 / Raffel et al.
2020 and Krell et al. 2021). Every token of every document is kept, in order; only row
ends shorter than 8 tokens and the last row are padded.

- mlm (BERT): each piece is `[CLS] tokens [SEP]` (Devlin et al. 2019); with `data.nsp` each
  row is instead one `[CLS] A [SEP] B [SEP]` pair where B is the true continuation of A or,
  with probability 1/2, a span of another document (`next_sentence_label` 0 = IsNext,
  1 = random, as in BERT / Hugging Face), pairs drawn once from the seed (BERT's
  `create_pretraining_data` does the same).
- clm (GPT-2): documents end with the end-of-text token when the tokenizer has one.
- span (T5): all documents concatenated and cut into rows of exactly L tokens, no padding
  (T5's `reduce_concat_tokens` + `split_tokens`); corruption happens on device.
- classify: `[CLS] a [SEP] (b [SEP])`, token types 0 / 1, pad / truncate longest-first.
- seq2seq: `input + [EOS]`, `target + [EOS]`, truncated to L / T and padded; a labelled
  source without `data.target_column` is cast text-to-text first (`text_to_text`).

`data.pack="stream"` joins all examples with newlines into one document first (a
character-level LM on one long text, e.g. Tiny Shakespeare).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pjx.data.sources import DataError, Examples


def _id(tokenizer, name: str, task: str) -> int:
    value = getattr(tokenizer, f"{name}_id", None)
    if value is None:
        raise DataError(f"task {task} needs a tokenizer with a {name} token (data.tokenizer)")
    return int(value)


def _pad_id(tokenizer) -> int:
    value = getattr(tokenizer, "pad_id", None)
    return 0 if value is None else int(value)


def tokenize(tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Token ids of each text (empty / blank texts give empty arrays)."""
    keep = [i for i, t in enumerate(texts) if t and t.strip()]
    out = [np.zeros((0,), np.int32)] * len(texts)
    ids = tokenizer.encode_batch([texts[i] for i in keep]) if keep else []
    for i, row in zip(keep, ids):
        out[i] = np.asarray(row, np.int32)
    return out


def documents(ex: Examples, cfg) -> list[str]:
    texts = list(ex.texts or [])
    if ex.texts_b is not None:
        texts += [t for t in ex.texts_b if t]
    if cfg.get("pack", "documents") == "stream":
        return ["\n".join(texts)]
    return texts


# ------------------------------------------------------------------------------ packing
def pack(
    docs: list[np.ndarray], L: int, *, prefix=(), suffix=(), doc_end=(), pad_id=0, min_piece=8
) -> dict:
    """Greedy in-order packing into [N, L]: input_ids, segment_ids, position_ids.

    A document continues in the current row as long as it fits; the rest of the row
    takes a piece of it (when at least `min_piece` tokens, or the whole rest of the
    document, fit; else a new row starts) and the next row continues it as a new segment.
    Every piece is wrapped in `prefix` / `suffix`; `doc_end` ends each document.
    """
    wrap = len(prefix) + len(suffix)
    if L - wrap < 1:
        raise DataError(f"data.seq_len={L} leaves no room for tokens")
    pre, suf, end = (np.asarray(x, np.int32) for x in (prefix, suffix, doc_end))
    pieces, where = [], []  # where: (row, offset, segment) of each piece
    r = used = s = 0
    for d in docs:
        if not len(d):
            continue
        d = np.concatenate([d, end]) if len(end) else d
        i = 0
        while i < len(d):
            space = L - used - wrap
            if space < min(len(d) - i, min_piece):
                r, used, s = r + 1, 0, 0
                space = L - wrap
            take = min(space, len(d) - i)
            pieces.append(np.concatenate([pre, d[i : i + take], suf]))
            where.append((r, used, s + 1))
            used, s, i = used + take + wrap, s + 1, i + take
    if not pieces:
        raise DataError("no tokens to pack: every document is empty")
    lengths = np.fromiter((len(p) for p in pieces), np.int64, len(pieces))
    row, off, seg = np.asarray(where, np.int64).T
    pid = np.repeat(np.arange(len(pieces)), lengths)
    within = np.arange(len(pid)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    rows, cols = row[pid], off[pid] + within
    out = {
        "input_ids": np.full((r + 1, L), pad_id, np.int32),
        "segment_ids": np.zeros((r + 1, L), np.int32),
        "position_ids": np.zeros((r + 1, L), np.int32),
    }
    out["input_ids"][rows, cols] = np.concatenate(pieces)
    out["segment_ids"][rows, cols] = seg[pid]
    out["position_ids"][rows, cols] = within
    return out


def concat_rows(docs: list[np.ndarray], L: int) -> dict:
    """All tokens end to end, cut into full rows of L (the remainder < L is dropped)."""
    flat = np.concatenate([d for d in docs if len(d)] or [np.zeros((0,), np.int32)])
    n = len(flat) // L
    if n == 0:
        raise DataError(f"only {len(flat)} tokens: fewer than one row of data.seq_len={L}")
    return {"input_ids": flat[: n * L].reshape(n, L).astype(np.int32)}


def nsp_pairs(docs: list[np.ndarray], L: int, *, cls_id, sep_id, pad_id, seed: int) -> dict:
    """One `[CLS] A [SEP] B [SEP]` row per chunk of L-3 tokens (see the module docstring)."""
    rng = np.random.default_rng(seed)
    docs = [d for d in docs if len(d) >= 2]
    if len(docs) < 2:
        raise DataError("data.nsp needs at least 2 documents of 2+ tokens")
    body = L - 3
    rows, types, labels = [], [], []
    for i, d in enumerate(docs):
        for start in range(0, len(d), body):
            chunk = d[start : start + body]
            if len(chunk) < 2:
                continue
            k = int(rng.integers(1, len(chunk)))
            a, b = chunk[:k], chunk[k:]
            label = int(rng.random() < 0.5)
            if label:
                j = int(rng.integers(0, len(docs) - 1))
                other = docs[j + (j >= i)]
                s = int(rng.integers(0, max(len(other) - len(b), 0) + 1))
                b = other[s : s + len(b)]
            rows.append(np.concatenate([[cls_id], a, [sep_id], b, [sep_id]]))
            types.append(len(a) + 2)
            labels.append(label)
    n = len(rows)
    lengths = np.asarray([len(r) for r in rows])
    pos = np.arange(L)[None, :]
    out = {
        "input_ids": np.full((n, L), pad_id, np.int32),
        "token_type_ids": ((pos >= np.asarray(types)[:, None]) & (pos < lengths[:, None])),
        "segment_ids": (pos < lengths[:, None]).astype(np.int32),
        "position_ids": np.broadcast_to(pos, (n, L)) * (pos < lengths[:, None]),
        "next_sentence_label": np.asarray(labels, np.int32),
    }
    for i, r in enumerate(rows):
        out["input_ids"][i, : len(r)] = r
    out["token_type_ids"] = out["token_type_ids"].astype(np.int32)
    out["position_ids"] = out["position_ids"].astype(np.int32)
    return out


# ----------------------------------------------------------------------- classification
def truncate_pair(la: int, lb: int, budget: int) -> tuple[int, int]:
    """Longest-first truncation (BERT / HF): drop from the longer; ties drop from b."""
    excess = la + lb - budget
    if excess <= 0:
        return la, lb
    if la > lb:
        d = min(excess, la - lb)
        la, excess = la - d, excess - d
    elif lb > la:
        d = min(excess, lb - la)
        lb, excess = lb - d, excess - d
    return la - excess // 2, lb - (excess - excess // 2)


def classification(tokenizer, ex: Examples, L: int) -> dict:
    cls_id, sep_id = _id(tokenizer, "cls", "classify"), _id(tokenizer, "sep", "classify")
    a = tokenize(tokenizer, ex.texts)
    b = tokenize(tokenizer, ex.texts_b) if ex.texts_b is not None else None
    n = len(a)
    ids = np.full((n, L), _pad_id(tokenizer), np.int32)
    types = np.zeros((n, L), np.int32)
    mask = np.zeros((n, L), np.int32)
    for i in range(n):
        if b is None:
            la = min(len(a[i]), L - 2)
            row = np.concatenate([[cls_id], a[i][:la], [sep_id]])
            nb = 0
        else:
            la, lb = truncate_pair(len(a[i]), len(b[i]), L - 3)
            row = np.concatenate([[cls_id], a[i][:la], [sep_id], b[i][:lb], [sep_id]])
            nb = lb + 1
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
        types[i, len(row) - nb : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "label": ex.labels}


# T5's target words for GLUE labels (in label order; Raffel et al. 2020, appendix D).
T5_TARGETS = {
    "sst2": ("negative", "positive"),
    "cola": ("unacceptable", "acceptable"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "rte": ("entailment", "not_entailment"),
    "qnli": ("entailment", "not_entailment"),
    "wnli": ("not_entailment", "entailment"),
    "mnli": ("entailment", "neutral", "contradiction"),
}


def text_to_text(ex: Examples, prefix: str = "") -> Examples:
    """A labelled set cast as text-to-text, as T5 fine-tunes on GLUE (Raffel et al. 2020,
    sec. 2.4): "sst2 sentence: it was fun" -> "positive"-style label names (or the label
    number when the source names none); pairs become "sentence1: ... sentence2: ..."."""
    if ex.labels is None:
        raise DataError(
            f"{ex.origin}: task seq2seq needs targets: set data.target_column, or use a "
            "labelled source (its label names become the targets)"
        )
    head = f"{prefix} " if prefix else ""
    if ex.texts_b is None:
        inputs = [f"{head}sentence: {a}" for a in ex.texts]
    else:
        inputs = [f"{head}sentence1: {a} sentence2: {b}" for a, b in zip(ex.texts, ex.texts_b)]
    names = T5_TARGETS.get(prefix) or ex.label_names
    targets = [str(names[i]) if names else str(int(i)) for i in ex.labels]
    return dataclasses.replace(ex, texts=inputs, texts_b=None, targets=targets)


def seq2seq(tokenizer, ex: Examples, L: int, T: int, prefix: str = "") -> dict:
    if ex.targets is None:
        ex = text_to_text(ex, prefix)
    eos = _id(tokenizer, "eos", "seq2seq")
    out = {}
    for key, texts, n, mask_key in (
        ("input_ids", ex.texts, L, "attention_mask"),
        ("labels", ex.targets, T, "decoder_attention_mask"),
    ):
        toks = tokenize(tokenizer, texts)
        ids = np.full((len(toks), n), _pad_id(tokenizer), np.int32)
        mask = np.zeros((len(toks), n), np.int32)
        for i, t in enumerate(toks):
            row = np.concatenate([t[: n - 1], [eos]])
            ids[i, : len(row)], mask[i, : len(row)] = row, 1
        out[key], out[mask_key] = ids, mask
    return out


# ----------------------------------------------------------------------------- dispatch
def encode(task: str, ex: Examples, tokenizer, cfg, *, seed: int = 0) -> dict:
    """The cached arrays of a text task (see the module docstring)."""
    if tokenizer is None:
        raise DataError(f"task {task} on {ex.origin} needs data.tokenizer (a tokenizer spec)")
    if ex.texts is None:
        raise DataError(f"{ex.origin} has no text for task {task}")
    L = int(cfg.seq_len)
    if task == "classify":
        if ex.labels is None:
            raise DataError(f"{ex.origin}: task classify needs labels")
        return classification(tokenizer, ex, L)
    if task == "seq2seq":
        target_len = int(cfg.get("target_len", 0) or L)
        return seq2seq(tokenizer, ex, L, target_len, prefix=cfg.get("preset", ""))
    docs = tokenize(tokenizer, documents(ex, cfg))
    pad = _pad_id(tokenizer)
    if task == "mlm":
        cls_id, sep_id = _id(tokenizer, "cls", task), _id(tokenizer, "sep", task)
        if cfg.get("nsp", False):
            return nsp_pairs(docs, L, cls_id=cls_id, sep_id=sep_id, pad_id=pad, seed=seed)
        return pack(docs, L, prefix=[cls_id], suffix=[sep_id], pad_id=pad)
    if task == "clm":
        eos = getattr(tokenizer, "eos_id", None)
        return pack(docs, L, doc_end=[] if eos is None else [int(eos)], pad_id=pad)
    if task == "span":
        return concat_rows(docs, L)
    raise DataError(f"task {task!r} has no text encoding; tasks: mlm clm span seq2seq classify")
