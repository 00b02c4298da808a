"""Stand-ins shared by the tests: a byte tokenizer, generated documents, and files in the
layouts of the local data sets (MNIST idx, a GLUE TSV)."""

from __future__ import annotations

import gzip
import os
import signal
import struct
from pathlib import Path

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


def write_idx(folder: Path, n=80) -> Path:
    """MNIST-layout idx files (gzipped) of n random 28x28 digits in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + labels.tobytes())
    return folder


def write_sst2(path: Path, n=80, words=6) -> Path:
    """A GLUE SST-2-layout TSV (sentence, label) of n short generated sentences of `words`
    words each, or of a length drawn from the range `words` = (fewest, most)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    vocab = "a fine good bad dull film plot acting and the was very".split()

    def sentence():
        k = words if isinstance(words, int) else int(rng.integers(words[0], words[1] + 1))
        return " ".join(rng.choice(vocab, k))

    rows = [f"{sentence()} \t{i % 2}" for i in range(n)]
    path.write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    return path


class IndexedBatches:
    """Batch i is `make_batch(i)`, with get_state / set_state like pjx.data's iterators."""

    def __init__(self, make_batch):
        self.make_batch, self.i = make_batch, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.i += 1
        return self.make_batch(self.i - 1)

    def get_state(self):
        return {"i": self.i}

    def set_state(self, state):
        self.i = state["i"]


class Preempting:
    """Data iterator `it` that sends its process SIGTERM when it hands out its batch number
    `kill_at` (counted from 0; how a preemption arrives); its state is `it`'s."""

    def __init__(self, it, kill_at=None):
        self.it, self.kill_at, self.n = it, kill_at, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.n == self.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
        self.n += 1
        return next(self.it)

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)
