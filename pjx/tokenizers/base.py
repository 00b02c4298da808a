"""The one Tokenizer interface, the special tokens of each model family, the saved layout."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

# `Tokenizer.save(dir)` writes this file (kind, file names, options) beside the model files.
META_FILE = "pjx_tokenizer.json"

SPECIAL_NAMES = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")

# Special tokens per model family, in id order from 0: BERT's [PAD]=0 and T5's pad=0 eos=1
# unk=2 match the published checkpoints' conventions. GPT-2 has a single <|endoftext|> that
# is both its bos and eos (Radford et al. 2019, the released encoder.json).
FAMILY_SPECIALS = {
    "bert": (
        ("pad", "[PAD]"),
        ("unk", "[UNK]"),
        ("cls", "[CLS]"),
        ("sep", "[SEP]"),
        ("mask", "[MASK]"),
    ),
    "modernbert": (
        ("pad", "[PAD]"),
        ("unk", "[UNK]"),
        ("cls", "[CLS]"),
        ("sep", "[SEP]"),
        ("mask", "[MASK]"),
    ),
    "gpt2": (("eos", "<|endoftext|>"),),
    "t5": (("pad", "<pad>"), ("eos", "</s>"), ("unk", "<unk>")),
    # Llama 2's SentencePiece: <unk> 0, <s> 1, </s> 2, no padding piece.
    "llama": (("unk", "<unk>"), ("bos", "<s>"), ("eos", "</s>")),
}
# T5 appends 100 sentinels <extra_id_0..99> at the top of the vocabulary, <extra_id_0> with
# the highest id (Raffel et al. 2020, sec. 3.1.4; the released vocabularies).
NUM_SENTINELS = {"t5": 100}


def sentinel_token(i: int) -> str:
    return f"<extra_id_{i}>"


def check_family(family: str | None, what: str) -> str:
    if family not in FAMILY_SPECIALS:
        raise ValueError(
            f"{what}: unknown model family {family!r}; expected one of {sorted(FAMILY_SPECIALS)}"
        )
    return family


class Tokenizer:
    """Text <-> token ids. `encode` adds no special tokens; the data pipeline places them.

    Special ids are None where the kind has none. `decode` drops special tokens (except
    `unk`, shown as the kind's unknown marker), like Hugging Face's skip_special_tokens.
    """

    kind = ""
    # Threads of one `encode_batch` call, for the kinds whose library spreads a batch over
    # cores (SentencePiece); 0: the library's default (every core). Data workers set 1:
    # there the parallelism is the number of worker processes, one core each.
    encode_threads = 0
    vocab_size: int
    pad_id: int | None
    unk_id: int | None
    cls_id: int | None
    sep_id: int | None
    mask_id: int | None
    bos_id: int | None
    eos_id: int | None
    sentinel_ids: tuple[int, ...]
    special_ids: tuple[int, ...]
    # Where a vocabulary pjx trained came from ({"source": URI}), kept in its folder: a
    # private run refuses a vocabulary trained on its own rows (pjx.privacy).
    trained_on: dict | None = None

    def _set_specials(self, vocab_size, ids: dict, sentinel_ids=(), other_special_ids=()):
        self.vocab_size = int(vocab_size)
        for name in SPECIAL_NAMES:
            setattr(self, f"{name}_id", ids.get(name))
        self.sentinel_ids = tuple(int(i) for i in sentinel_ids)
        every = {i for i in ids.values() if i is not None}
        every |= set(self.sentinel_ids) | {int(i) for i in other_special_ids}
        self.special_ids = tuple(sorted(every))
        self._dropped_on_decode = frozenset(every - {self.unk_id})

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def _decodable(self, ids: Iterable[int]) -> list[int]:
        """Plain ints with the special tokens removed; out-of-vocabulary ids are an error."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
            if i not in self._dropped_on_decode:
                out.append(i)
        return out

    def save(self, directory) -> Path:
        """Writes every file `pjx.tokenizers.load(directory)` needs; returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, **self._save_files(directory)}
        if self.trained_on:
            meta["trained_on"] = self.trained_on
        write_meta(directory, meta)
        return directory

    def _save_files(self, directory: Path) -> dict:
        raise NotImplementedError

    def __repr__(self):
        named = ", ".join(
            f"{n}_id={getattr(self, f'{n}_id')}"
            for n in SPECIAL_NAMES
            if getattr(self, f"{n}_id") is not None
        )
        sentinels = f", {len(self.sentinel_ids)} sentinels" if self.sentinel_ids else ""
        named = f" {named}" if named else ""
        return f"<{type(self).__name__} vocab_size={self.vocab_size}{named}{sentinels}>"


def write_meta(directory: Path, meta: dict):
    (Path(directory) / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def read_meta(directory: Path) -> dict:
    path = Path(directory) / META_FILE
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); re-save the tokenizer") from None
    if not isinstance(meta, dict) or "kind" not in meta:
        raise ValueError(f"{path}: expected a JSON object with a 'kind' key")
    return meta


class SymbolLayout:
    """Ids for a table of base symbols (bytes, characters) plus a family's special tokens.

    Specials come first (so BERT's [PAD] and T5's pad are 0), then the symbols, then T5's
    sentinels at the top with <extra_id_0> highest, the same layout as trained SentencePiece.
    """

    def __init__(self, num_symbols: int, family: str | None):
        front = FAMILY_SPECIALS[family] if family else ()
        n_sentinels = NUM_SENTINELS.get(family, 0)
        self.family = family
        self.offset = len(front)
        self.vocab_size = len(front) + num_symbols + n_sentinels
        self.ids = {name: i for i, (name, _) in enumerate(front)}
        if family == "gpt2":
            self.ids["bos"] = self.ids["eos"]
        self.sentinel_ids = tuple(self.vocab_size - 1 - i for i in range(n_sentinels))
