"""Character-level and byte-level tokenizers (the small-CPU recipes, e.g. Tiny Shakespeare)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pjx.tokenizers.base import SymbolLayout, Tokenizer, check_family

CHAR_FILE = "char_vocab.json"
_UNKNOWN = "\N{REPLACEMENT CHARACTER}"


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def _check_specials(specials):
    return None if specials in (None, "", "none") else check_family(specials, "specials")


class CharTokenizer(Tokenizer):
    """One id per character of a fixed vocabulary (`chars`, in id order after the specials).

    Without an unk token (specials None or gpt2) a character outside the vocabulary is an
    error; with one (bert, t5) it encodes as unk.
    """

    kind = "char"

    def __init__(self, chars: str, *, specials: str | None = None):
        if len(set(chars)) != len(chars) or not chars:
            raise ValueError("a char vocabulary needs distinct characters and at least one")
        self.chars = chars
        self.specials = _check_specials(specials)
        layout = self._layout = SymbolLayout(len(chars), self.specials)
        self._set_specials(layout.vocab_size, layout.ids, layout.sentinel_ids)
        codes = _codepoints(chars)
        order = np.argsort(codes)
        self._sorted_codes = codes[order]
        self._sorted_ids = (order + layout.offset).astype(np.int64)

    def encode_batch(self, texts):
        texts = list(texts)
        if not texts:
            return []
        # One vectorised lookup over all texts joined, then split back (len() counts code points).
        cps = _codepoints("".join(texts))
        pos = np.minimum(np.searchsorted(self._sorted_codes, cps), len(self._sorted_codes) - 1)
        known = self._sorted_codes[pos] == cps
        ids = self._sorted_ids[pos]
        if not known.all():
            if self.unk_id is None:
                bad = chr(int(cps[np.argmin(known)]))
                raise ValueError(
                    f"character {bad!r} is not in the char vocabulary ({len(self.chars)} chars) "
                    "and it has no unk token: build the vocabulary from text that contains it, "
                    "or use specials=bert|t5 for an unk token"
                )
            ids = np.where(known, ids, self.unk_id)
        ends = np.cumsum([len(t) for t in texts])[:-1]
        return [part.tolist() for part in np.split(ids, ends)]

    def decode(self, ids):
        off = self._layout.offset
        n = len(self.chars)
        return "".join(
            self.chars[i - off] if 0 <= i - off < n else _UNKNOWN for i in self._decodable(ids)
        )

    def _save_files(self, directory):
        write_char_vocab(directory / CHAR_FILE, self.chars, self.specials)
        return {"file": CHAR_FILE}

    @classmethod
    def from_file(cls, path) -> CharTokenizer:
        """A saved vocabulary (.json), or any other text file: its characters, sorted."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no char vocabulary or text file at {path}")
        if path.suffix == ".json":
            try:
                d = json.loads(path.read_text(encoding="utf-8"))
                return cls(d["chars"], specials=d.get("specials"))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(
                    f'{path}: expected a char vocabulary {{"chars": "...", "specials": null}} ({e})'
                ) from None
        opener = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                return train_char([f.read()])
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not valid UTF-8 ({e})") from None


def write_char_vocab(path: Path, chars: str, specials: str | None):
    text = json.dumps({"chars": chars, "specials": specials}, ensure_ascii=False)
    Path(path).write_text(text + "\n", encoding="utf-8")


def train_char(texts: Iterable[str], out_dir=None, *, specials: str | None = None) -> CharTokenizer:
    """The sorted set of characters of `texts` (nanoGPT's shakespeare_char vocabulary)."""
    seen = set()
    for t in texts:
        seen.update(t)
    if not seen:
        raise ValueError("train_char: no text to build a character vocabulary from")
    tok = CharTokenizer("".join(sorted(seen)), specials=specials)
    if out_dir is not None:
        tok.save(out_dir)
    return tok


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids (ByT5-style, Xue et al. 2022), after an optional family's specials."""

    kind = "byte"

    def __init__(self, *, specials: str | None = None):
        self.specials = _check_specials(specials)
        layout = self._layout = SymbolLayout(256, self.specials)
        self._set_specials(layout.vocab_size, layout.ids, layout.sentinel_ids)

    def encode_batch(self, texts):
        off = self._layout.offset
        if off == 0:
            return [list(t.encode("utf-8")) for t in texts]
        return [
            (np.frombuffer(t.encode("utf-8"), np.uint8).astype(np.int64) + off).tolist()
            for t in texts
        ]

    def decode(self, ids):
        off = self._layout.offset
        data = bytes(i - off for i in self._decodable(ids) if 0 <= i - off < 256)
        return data.decode("utf-8", errors="replace")

    def _save_files(self, directory):
        return {"specials": self.specials}
