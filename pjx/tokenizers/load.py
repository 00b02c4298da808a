"""Tokenizer specs (`KIND:PATH?key=value`) -> Tokenizer; training into a workdir on first run."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from pjx.tokenizers.base import META_FILE, Tokenizer, check_family, read_meta, write_meta
from pjx.tokenizers.spec import SPECS_HELP, parse_spec
from pjx.tokenizers.spm import SentencePieceTokenizer, train_sentencepiece
from pjx.tokenizers.symbols import ByteTokenizer, CharTokenizer, train_char
from pjx.tokenizers.wordpiece import HFTokenizer, hf_config, wordpiece


def load(spec: str) -> Tokenizer:
    """A tokenizer from a spec (see SPECS_HELP); `train:` specs go through `from_config`."""
    kind, path, params = parse_spec(spec)
    if kind == "train":
        raise ValueError(
            f"{spec!r} trains a tokenizer: use pjx.tokenizers.from_config(..., workdir=)"
        )
    if kind == "byte":
        if path:
            raise ValueError(f"tokenizer spec {spec!r}: byte takes no path (use 'byte')")
        return ByteTokenizer(**params)
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"tokenizer spec {spec!r}: no such file or directory: {p}")
    return LOADERS[kind](p, spec, **params)


def _char(p: Path, spec: str, **params) -> CharTokenizer:
    if params and p.suffix == ".json":
        raise ValueError(f"tokenizer spec {spec!r}: a saved char vocabulary fixes its specials")
    tok = CharTokenizer.from_file(p)
    return CharTokenizer(tok.chars, **params) if params else tok


def _bare_path(p: Path, spec: str) -> Tokenizer:
    if p.is_dir():
        return load_directory(p)
    if p.suffix == ".model":
        return SentencePieceTokenizer.from_file(p)
    if p.name == "vocab.txt":
        return wordpiece(p)
    if p.name == "tokenizer.json":
        return HFTokenizer.from_file(p)
    if p.name == "char_vocab.json":
        return CharTokenizer.from_file(p)
    raise ValueError(
        f"tokenizer spec {spec!r}: cannot tell the kind of {p}; expected one of: {SPECS_HELP}"
    )


LOADERS = {
    "sentencepiece": lambda p, spec, **kw: SentencePieceTokenizer.from_file(p, **kw),
    "wordpiece": lambda p, spec, **kw: wordpiece(p / "vocab.txt" if p.is_dir() else p, **kw),
    "tokenizers": lambda p, spec: HFTokenizer.from_file(p / "tokenizer.json" if p.is_dir() else p),
    "char": _char,
    "": _bare_path,
}


# The Hugging Face files load_directory reads a tokenizer from (besides META_FILE).
HF_FILES = ("spiece.model", "tokenizer.model", "tokenizer.json", "vocab.txt")


def holds_tokenizer(d) -> bool:
    """Whether load_directory finds a tokenizer file in folder `d`."""
    return any((Path(d) / name).is_file() for name in (META_FILE, *HF_FILES))


def load_directory(d) -> Tokenizer:
    """A folder written by `Tokenizer.save`, or a Hugging Face model folder."""
    d = Path(d)
    tok = _load_directory(d)
    if (d / META_FILE).is_file():
        tok.trained_on = read_meta(d).get("trained_on")
    return tok


def _load_directory(d: Path) -> Tokenizer:
    if (d / META_FILE).is_file():
        meta = read_meta(d)
        kind, file = meta["kind"], d / str(meta.get("file", ""))
        if kind == "sentencepiece":
            return SentencePieceTokenizer.from_file(file, extra_ids=meta.get("extra_ids", 0))
        if kind in ("wordpiece", "tokenizers"):
            return HFTokenizer.from_file(file, meta.get("specials"), kind=kind)
        if kind == "char":
            return CharTokenizer.from_file(file)
        if kind == "byte":
            return ByteTokenizer(specials=meta.get("specials"))
        raise ValueError(f"{d / META_FILE}: unknown tokenizer kind {kind!r}")
    config = hf_config(d)
    for name in ("spiece.model", "tokenizer.model"):
        if (d / name).is_file():
            tok = SentencePieceTokenizer.from_file(d / name)
            extra = 0 if tok.sentinel_ids else _hf_extra_ids(config)
            return SentencePieceTokenizer.from_file(d / name, extra_ids=extra) if extra else tok
    if (d / "tokenizer.json").is_file():
        with contextlib.suppress(ImportError):
            return HFTokenizer.from_file(d / "tokenizer.json")
    if (d / "vocab.txt").is_file():
        return wordpiece(d / "vocab.txt", lowercase=bool(config.get("do_lower_case", True)))
    if (d / "tokenizer.json").is_file():
        return HFTokenizer.from_file(d / "tokenizer.json")  # raises the install hint
    raise FileNotFoundError(
        f"no tokenizer in {d}: expected {META_FILE} (written by Tokenizer.save) or a Hugging "
        f"Face tokenizer file ({', '.join(HF_FILES)})"
    )


def _hf_extra_ids(config: dict) -> int:
    """Hugging Face T5 keeps its 100 sentinels outside spiece.model, above its pieces."""
    if "extra_ids" in config:
        return int(config["extra_ids"])
    listed = config.get("additional_special_tokens") or config.get("extra_special_tokens") or []
    listed = [t.get("content") if isinstance(t, dict) else t for t in listed]
    return sum(bool(re.fullmatch(r"<extra_id_\d+>", str(t))) for t in listed)


@contextlib.contextmanager
def atomic_directory(final: Path):
    """Yields a temporary sibling folder, renamed to `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        os.rename(tmp, final)  # atomic on POSIX; fails if `final` exists and is not empty
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _train_sentencepiece(texts, out, family, **params):
    if "vocab_size" not in params:
        raise ValueError(
            "train:sentencepiece needs vocab_size, e.g. train:sentencepiece?vocab_size=8000"
        )
    return train_sentencepiece(
        texts, out, family=check_family(family, "train:sentencepiece"), **params
    )


def _train_char(texts, out, family, **params):
    return train_char(texts, out, **params)


TRAINERS = {"sentencepiece": _train_sentencepiece, "char": _train_char}


def from_config(spec, *, workdir, family, texts=None, trained_on=None) -> Tokenizer | None:
    """The run's tokenizer: `load(spec)`, or for `train:` specs the one in WORKDIR/tokenizer/,
    trained from `texts` (iterable of str, consumed only when training) on the first run;
    `trained_on` (e.g. {"source": URI}) is recorded with it.

    None for an empty spec (the caller picks a default).
    """
    if not spec:
        return None
    spec = "train:char" if spec == "char" else spec  # char alone: from the training text
    kind, what, params = parse_spec(spec)
    if kind != "train":
        return load(spec)
    out = Path(workdir) / "tokenizer"
    recipe = {"spec": spec, "family": family}
    if out.exists():
        return _load_trained(out, recipe)
    if texts is None:
        raise ValueError(f"tokenizer {spec!r}: the first run trains it and needs texts=")
    try:
        with atomic_directory(out) as tmp:
            TRAINERS[what](texts, tmp, family, **params)
            meta = {**read_meta(tmp), "trained_from": recipe}
            write_meta(tmp, {**meta, "trained_on": trained_on} if trained_on else meta)
    except OSError:
        if not (out / META_FILE).is_file():
            raise
        # Another process (another host on a shared disk) finished first: use its tokenizer.
    return _load_trained(out, recipe)


def _load_trained(out: Path, recipe: dict) -> Tokenizer:
    if not (out / META_FILE).is_file():
        raise ValueError(
            f"{out} exists but holds no trained tokenizer ({META_FILE}); delete it to retrain"
        )
    stored = read_meta(out).get("trained_from") or {}
    same = stored.get("family") == recipe["family"] and (
        stored.get("spec") and parse_spec(stored["spec"]) == parse_spec(recipe["spec"])
    )
    if not same:
        raise ValueError(
            f"{out} holds a tokenizer trained from {stored.get('spec')!r} (family "
            f"{stored.get('family')!r}) but the config asks for {recipe['spec']!r} (family "
            f"{recipe['family']!r}): use a new workdir, or delete {out} to retrain"
        )
    return load_directory(out)
