"""Stand-ins shared by the tests/test_data_*.py files."""

from __future__ import annotations

import numpy as np


class ByteTok:
    """Byte-level tokenizer with BERT / GPT-2 / T5-style specials: ids 0-5 are
    [PAD] [UNK] [CLS] [SEP] [MASK] <eos>, byte b is id b + 6."""

    pad_id, unk_id, cls_id, sep_id, mask_id, eos_id = 0, 1, 2, 3, 4, 5
    bos_id = None
    sentinel_ids = ()
    special_ids = (0, 1, 2, 3, 4, 5)
    vocab_size = 262

    def encode(self, text):
        return [b + 6 for b in text.encode("utf-8")]

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids):
        return bytes(i - 6 for i in ids if i >= 6).decode("utf-8", "replace")


def lm_config(**kw):
    from pjx import data

    cfg = data.default_config()
    cfg.update(kw)
    return cfg


def words(rng, n):
    vocab = "the a cat dog sat on mat ran far and then slept".split()
    return " ".join(rng.choice(vocab, n))


def write_docs(path, n_docs=50, seed=0):
    rng = np.random.default_rng(seed)
    docs = [words(rng, int(rng.integers(3, 40))) for _ in range(n_docs)]
    path.write_text("\n".join(docs) + "\n")
    return docs
