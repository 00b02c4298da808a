"""Tokenizer specs, the strings configs and the CLI name tokenizers with, parsed in one place.

    KIND:PATH?key=value&...      e.g. sentencepiece:/tok/spiece.model, wordpiece:vocab.txt,
                                 byte?specials=bert, train:sentencepiece?vocab_size=8000

`parse_spec` gives a `TokenizerSpec` (kind, path, typed params); `str(spec)` writes it back,
and `spec.with_params(vocab_size=512)` changes a parameter.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qsl, urlencode

from pjx.values import parse_bool


class TokenizerSpec(NamedTuple):
    kind: str  # a key of KINDS, or "" for a bare path
    path: str  # file or folder; for kind "train", what to train ("sentencepiece", "char")
    params: dict

    def with_params(self, **params) -> TokenizerSpec:
        return self._replace(params={**self.params, **params})

    def __str__(self) -> str:
        body = f"{self.kind}:{self.path}" if self.kind and self.path else self.kind or self.path
        query = {k: str(v).lower() if isinstance(v, bool) else v for k, v in self.params.items()}
        return body + (f"?{urlencode(query)}" if query else "")


SPECS_HELP = (
    "sentencepiece:PATH.model, wordpiece:PATH/vocab.txt, tokenizers:PATH/tokenizer.json, "
    "char:PATH (a saved char_vocab.json or a text file), byte, a directory (saved by "
    "Tokenizer.save, or a Hugging Face model folder), and in configs "
    "train:sentencepiece?vocab_size=N&model_type=unigram|bpe or train:char"
)


# Spec kinds, with an example of each.
KINDS = {
    "sentencepiece": "sentencepiece:PATH/spiece.model",
    "wordpiece": "wordpiece:PATH/vocab.txt",
    "tokenizers": "tokenizers:PATH/tokenizer.json",
    "char": "char:PATH/char_vocab.json",
    "byte": "byte",
    "train": "train:sentencepiece?vocab_size=8000",
}

# Accepted ?key=value parameters per kind, with their types.
PARAMS = {
    "sentencepiece": {"extra_ids": int},
    "wordpiece": {"lowercase": parse_bool},
    "tokenizers": {},
    "char": {"specials": str},
    "byte": {"specials": str},
    "train:sentencepiece": {
        "vocab_size": int,
        "model_type": str,
        "byte_fallback": parse_bool,
        "character_coverage": float,
    },
    "train:char": {"specials": str},
}


def parse_spec(spec: str) -> TokenizerSpec:
    """'KIND:PATH?k=v&..' -> TokenizerSpec(kind, path, typed params). A bare path gets
    kind ''."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty tokenizer spec {spec!r}; expected one of: {SPECS_HELP}")
    body, query = spec, ""
    if "?" in spec and "=" in spec.rsplit("?", 1)[1]:
        body, query = spec.rsplit("?", 1)
    kind, _, path = body.partition(":")
    if kind in KINDS:
        if not path and kind != "byte":
            hint = ""
            if kind == "char":
                hint = " (in a config, 'char' alone builds it from the training text)"
            raise ValueError(
                f"tokenizer spec {spec!r}: {kind} needs a path, e.g. {KINDS[kind]}{hint}"
            )
    elif _looks_like_path(body):
        kind, path = "", body
    else:
        raise ValueError(
            f"unknown tokenizer kind {kind!r} in {spec!r} (and no such path); expected one of: "
            f"{SPECS_HELP}"
        )
    key = f"train:{path}" if kind == "train" else kind
    if kind == "train" and key not in PARAMS:
        raise ValueError(
            f"tokenizer spec {spec!r}: cannot train {path!r}; use train:sentencepiece?vocab_size=N "
            "or train:char (byte needs no training)"
        )
    types = PARAMS.get(key, {})
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(
            f"tokenizer spec {spec!r}: cannot parse {query!r} as key=value&.."
        ) from None
    params = {}
    for k, v in pairs:
        if k not in types:
            raise ValueError(
                f"tokenizer spec {spec!r}: unknown parameter {k!r}; "
                f"{kind or 'a path'} takes {sorted(types) or 'none'}"
            )
        try:
            params[k] = types[k](v)
        except ValueError as e:
            raise ValueError(f"tokenizer spec {spec!r}: parameter {k}={v!r}: {e}") from None
    return TokenizerSpec(kind, path, params)


def _looks_like_path(s: str) -> bool:
    return os.sep in s or s.startswith(".") or Path(s).exists() or "." in Path(s).name
