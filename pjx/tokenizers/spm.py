"""SentencePiece tokenizers (Kudo & Richardson 2018): loading and training per model family."""

from __future__ import annotations

import gzip
import io
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from pjx.tokenizers.base import (
    NUM_SENTINELS,
    Tokenizer,
    check_family,
    sentinel_token,
)

MODEL_FILE = "spiece.model"
log = logging.getLogger(__name__)

# Lines longer than this many characters are cut into chunks before training: SentencePiece
# silently skips sentences over `max_sentence_length` bytes (4 bytes per char at most).
_CHUNK_CHARS = 1 << 14
_MAX_SENTENCE_BYTES = 4 * _CHUNK_CHARS
_TRAIN_THREADS = 16


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model; `extra_ids` sentinels may sit above it (Hugging Face T5 folders)."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, *, extra_ids: int = 0):
        self._proto = bytes(model_proto)
        self._extra_ids = int(extra_ids)
        sp = self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        n = sp.get_piece_size()

        def piece_id(piece):
            i = sp.piece_to_id(piece)
            return i if sp.id_to_piece(i) == piece else None

        def optional(i):  # SentencePiece says -1 for "no such token"
            return i if i >= 0 else None

        ids = {"pad": optional(sp.pad_id()), "unk": optional(sp.unk_id())}
        ids |= {"bos": optional(sp.bos_id()), "eos": optional(sp.eos_id())}
        for name, piece in (("cls", "[CLS]"), ("sep", "[SEP]"), ("mask", "[MASK]")):
            ids[name] = piece_id(piece)
        if ids["bos"] is None and ids["eos"] == piece_id("<|endoftext|>") is not None:
            ids["bos"] = ids["eos"]  # GPT-2: one token starts and ends documents
        sentinels = []
        while (i := piece_id(sentinel_token(len(sentinels)))) is not None:
            sentinels.append(i)
        sentinels += [n + self._extra_ids - 1 - k for k in range(self._extra_ids)]
        control = [i for i in range(n) if sp.is_control(i)]
        self._set_specials(n + self._extra_ids, ids, sentinels, control)
        self._sp_size = n

    @classmethod
    def from_file(cls, path, *, extra_ids: int = 0) -> SentencePieceTokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no SentencePiece model at {path}")
        return cls(path.read_bytes(), extra_ids=extra_ids)

    def encode_batch(self, texts):
        # One C++ call over the whole list, spread over `encode_threads` (0: every core).
        threads = int(self.encode_threads) or None
        return self._sp.encode(list(texts), out_type=int, num_threads=threads)

    def decode(self, ids):
        return self._sp.decode([i for i in self._decodable(ids) if i < self._sp_size])

    @property
    def model_proto(self) -> bytes:
        return self._proto

    def _save_files(self, directory):
        (directory / MODEL_FILE).write_bytes(self._proto)
        return {"file": MODEL_FILE, "extra_ids": self._extra_ids}

    def __getstate__(self):  # picklable for multi-process data loaders
        return {"model_proto": self._proto, "extra_ids": self._extra_ids}

    def __setstate__(self, state):
        self.__init__(state["model_proto"], extra_ids=state["extra_ids"])


# Trainer options per family. BERT / T5 follow their published vocabularies: NFKC-normalised
# text, no byte fallback, an unknown token. GPT-2 is byte-level and lossless (Radford et al.
# 2019), so its vocabulary keeps the text exactly: identity normalisation, whitespace kept,
# byte fallback for unseen characters (the Llama tokenizer's settings).
_FAMILY_OPTIONS = {
    "bert": dict(
        pad_id=0, pad_piece="[PAD]", unk_id=1, unk_piece="[UNK]", bos_id=-1, eos_id=-1,
        control_symbols=["[CLS]", "[SEP]", "[MASK]"],
    ),
    "gpt2": dict(
        eos_id=0, eos_piece="<|endoftext|>", unk_id=1, unk_piece="<unk>", bos_id=-1, pad_id=-1,
        normalization_rule_name="identity", remove_extra_whitespaces=False, byte_fallback=True,
        allow_whitespace_only_pieces=True, split_digits=True,
    ),
    "llama": dict(
        unk_id=0, unk_piece="<unk>", bos_id=1, bos_piece="<s>", eos_id=2, eos_piece="</s>",
        pad_id=-1, normalization_rule_name="identity", remove_extra_whitespaces=False,
        byte_fallback=True, allow_whitespace_only_pieces=True, split_digits=True,
    ),
    "t5": dict(
        pad_id=0, pad_piece="<pad>", eos_id=1, eos_piece="</s>", unk_id=2, unk_piece="<unk>",
        bos_id=-1,
    ),
}  # fmt: skip


_SAME_OPTIONS = {"modernbert": "bert"}  # BERT's specials and normalisation


def _sentences(texts_or_files) -> Iterator[str]:
    """Lines of the texts (or of the files), blank lines skipped, very long lines chunked."""
    if isinstance(texts_or_files, (str, bytes)):
        raise TypeError(
            "train_sentencepiece takes a list of texts or of pathlib.Path files, not one string"
        )
    if isinstance(texts_or_files, os.PathLike):
        texts_or_files = [texts_or_files]
    for item in texts_or_files:
        lines = _file_lines(Path(item)) if isinstance(item, os.PathLike) else item.split("\n")
        for line in lines:
            line = line.rstrip("\r\n")
            if line.strip():
                for k in range(0, len(line), _CHUNK_CHARS):
                    yield line[k : k + _CHUNK_CHARS]


def _file_lines(path: Path) -> Iterator[str]:
    if not path.is_file():
        raise FileNotFoundError(f"no such text file to train a tokenizer on: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        try:
            yield from f
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not valid UTF-8 ({e})") from None


def append_sentinels(model_proto: bytes, n: int) -> bytes:
    """Adds <extra_id_{n-1}> .. <extra_id_0> as the last pieces, so extra_id_0 is the top id.

    Written in protobuf's wire format, not through `sentencepiece_model_pb2`: that module
    is generated for one protobuf runtime (sentencepiece 0.2.3: >= 7.36) and would tie pjx
    to it (Apache Beam needs protobuf < 7). A parser appends repeated-field records in order
    and merges a repeated embedded message into the first, so the result parses exactly as
    the ModelProto with the pieces added and trainer_spec.vocab_size updated."""
    count = spm.SentencePieceProcessor(model_proto=model_proto).get_piece_size()
    out = bytearray(model_proto)
    for i in reversed(range(n)):
        # SentencePiece {piece: 1, score: 2 (float 0), type: 3 = USER_DEFINED (4)}: user
        # pieces are matched in raw text, like Hugging Face's T5 added tokens.
        name = sentinel_token(i).encode()
        piece = _field(1, 2) + _varint(len(name)) + name + _field(2, 5) + bytes(4)
        piece += _field(3, 0) + _varint(4)
        out += _field(1, 2) + _varint(len(piece)) + piece  # ModelProto.pieces
    spec = _field(4, 0) + _varint(count + n)  # TrainerSpec.vocab_size
    out += _field(2, 2) + _varint(len(spec)) + spec  # ModelProto.trainer_spec (merged)
    return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        low, v = v & 0x7F, v >> 7
        out.append(low | (0x80 if v else 0))
        if not v:
            return bytes(out)


def train_sentencepiece(
    texts_or_files: Iterable,
    out_dir=None,
    *,
    vocab_size: int,
    model_type: str = "unigram",
    family: str = "bert",
    byte_fallback: bool | None = None,
    character_coverage: float = 0.9995,
    input_sentence_size: int = 2_000_000,
) -> SentencePieceTokenizer:
    """Trains a SentencePiece model with `family`'s special tokens; saves it to `out_dir`.

    `texts_or_files`: texts (str) or text files (pathlib.Path, .gz allowed), one sentence or
    paragraph per line. The same texts give the same model on any machine.
    """
    check_family(family, "train_sentencepiece")
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    n_sentinels = NUM_SENTINELS.get(family, 0)
    options = dict(_FAMILY_OPTIONS[_SAME_OPTIONS.get(family, family)])
    if byte_fallback is not None:
        options["byte_fallback"] = bool(byte_fallback)
    count = [0]

    def counted():
        for s in _sentences(texts_or_files):
            count[0] += 1
            yield s

    spm.set_random_generator_seed(0)  # whatever the trainer samples, the same every run
    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=counted(),
            model_writer=proto,
            vocab_size=vocab_size - n_sentinels,
            model_type=model_type,
            character_coverage=character_coverage,
            # Sample at most this many sentences (reservoir, seeded) so a large corpus
            # trains in bounded time and memory.
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            max_sentence_length=_MAX_SENTENCE_BYTES,
            # Fixed, not os.cpu_count(): the result depends on how sentences are split
            # among threads, and the same texts should give the same model everywhere.
            num_threads=_TRAIN_THREADS,
            minloglevel=2,  # errors only: the trainer logs every EM step otherwise
            # A soft limit: text too small for `vocab_size` pieces gets the vocabulary it
            # supports (reported below) instead of an error. Pieces are unchanged otherwise.
            hard_vocab_limit=False,
            **options,
        )
    except RuntimeError as e:
        if count[0] == 0:
            raise ValueError(
                "train_sentencepiece: no text to train on (all inputs empty)"
            ) from None
        raise ValueError(f"SentencePiece training failed on {count[0]} sentences: {e} ") from None
    model = proto.getvalue()
    trained = spm.SentencePieceProcessor(model_proto=model).get_piece_size() + n_sentinels
    if trained < vocab_size:
        log.warning(
            f"tokenizer: {count[0]} sentences support {trained} pieces, not the "
            f"vocab_size={vocab_size} asked for; the vocabulary has {trained} (more text "
            "gives more)"
        )
    if n_sentinels:
        model = append_sentinels(model, n_sentinels)
    tok = SentencePieceTokenizer(model)
    if out_dir is not None:
        tok.save(out_dir)
    return tok
