"""Text -> fixed-shape int32 rows: the host-side packing the language-model tasks share.

Packing puts documents into rows of L tokens in order: a document fills the rest of the
current row and continues in the next (`pack`), and every piece gets its own `segment_ids`
value (1, 2, ... within a row; 0 on padding) and `position_ids` restarting at 0, so
attention never crosses documents (packing with segment ids as in T5 / Raffel et al. 2020
and Krell et al. 2021). Every token of every document is kept, in order; only row ends
shorter than 8 tokens and the last row are padded. `data.pack=none` keeps one document
per row instead (`one_per_row`, truncated: DP-SGD's privacy unit). `concat_rows` cuts one
token stream into full rows (T5's `reduce_concat_tokens` + `split_tokens`); `nsp_pairs` makes BERT's
next-sentence pairs. Which task uses which, and with which special tokens, is the task's
business (pjx.tasks).
"""

from __future__ import annotations

import numpy as np

from pjx.examples import DataError, Examples


def tokenize(tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Token ids of each text (empty / blank texts give empty arrays)."""
    keep = [i for i, t in enumerate(texts) if t and t.strip()]
    out = [np.zeros((0,), np.int32)] * len(texts)
    ids = tokenizer.encode_batch([texts[i] for i in keep]) if keep else []
    for i, row in zip(keep, ids):
        out[i] = np.asarray(row, np.int32)
    return out


def documents(ex: Examples, stream: bool = False) -> list[str]:
    """The texts of `ex` as documents (second sentences of pairs too); `stream` joins them
    all with newlines into one document (a character-level LM on one long text)."""
    texts = list(ex.texts or [])
    if ex.texts_b is not None:
        texts += [t for t in ex.texts_b if t]
    return ["\n".join(texts)] if stream else texts


def pack(
    docs: list[np.ndarray], L: int, *, prefix=(), suffix=(), doc_end=(), pad_id=0, min_piece=8
) -> dict:
    """Greedy in-order packing into rows [R, L]: input_ids, segment_ids, position_ids.

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


def one_per_row(docs: list[np.ndarray], L: int, *, prefix=(), suffix=(), doc_end=(), pad_id=0):
    """One row per non-empty document, truncated to fit (`data.pack=none`): no row holds
    two documents, so removing a document removes exactly its row (DP-SGD's unit)."""
    wrap = len(prefix) + len(suffix)
    if L - wrap < 1:
        raise DataError(f"data.seq_len={L} leaves no room for tokens")
    rows = [
        np.concatenate([prefix, np.concatenate([d, doc_end])[: L - wrap], suffix]).astype(np.int32)
        for d in docs
        if len(d)
    ]
    if not rows:
        raise DataError("no tokens: every document is empty")
    lengths = np.asarray([len(r) for r in rows])
    pos = np.arange(L)[None, :]
    inside = pos < lengths[:, None]
    out = {
        "input_ids": np.full((len(rows), L), pad_id, np.int32),
        "segment_ids": inside.astype(np.int32),
        "position_ids": (np.broadcast_to(pos, inside.shape) * inside).astype(np.int32),
    }
    for i, r in enumerate(rows):
        out["input_ids"][i, : len(r)] = r
    return out


def rows(docs, L: int, mode: str, **kw) -> dict:
    """Rows of documents by `data.pack` (`mode`): "none" one per document, else packed."""
    return one_per_row(docs, L, **kw) if mode == "none" else pack(docs, L, **kw)


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
