"""`pjx tokenizer train|show`: train a SentencePiece tokenizer on a data source, inspect one."""

from __future__ import annotations

from pathlib import Path

from pjx.cli.common import no_overrides
from pjx.tokenizers.base import FAMILY_SPECIALS


def add_arguments(parser):
    sub = parser.add_subparsers(dest="tokenizer_command", required=True)
    t = sub.add_parser("train", help="train SentencePiece with a model family's special tokens")
    t.add_argument(
        "--source", required=True, help="data URI: text:PATH, tsv:PATH, tfds:NAME, embedded"
    )
    t.add_argument("--vocab-size", type=int, default=8000, help="including the special tokens")
    t.add_argument("--model", choices=("unigram", "bpe"), default="unigram")
    t.add_argument("--family", choices=sorted(FAMILY_SPECIALS), required=True)
    t.add_argument("--out", required=True, help="new folder; load it with tokenizer=DIR")
    s = sub.add_parser("show", help="print a tokenizer's size and special ids, and encode a text")
    s.add_argument("spec", help="a tokenizer spec or folder")
    s.add_argument("text", nargs="?", help="text to encode and decode")


def _train(args) -> int:
    from pjx import data
    from pjx.tokenizers import train_sentencepiece
    from pjx.tokenizers.base import read_meta, write_meta
    from pjx.tokenizers.load import atomic_directory

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} exists and is not empty: choose a new folder")
    count = [0]

    def texts():
        for t in data.read_texts(args.source):
            count[0] += 1
            yield t

    with atomic_directory(out) as tmp:
        tok = train_sentencepiece(
            texts(), tmp, vocab_size=args.vocab_size, model_type=args.model,
            family=args.family,
        )  # fmt: skip
        # Where the vocabulary came from: a private run on these rows refuses it.
        write_meta(tmp, {**read_meta(tmp), "trained_on": {"source": args.source}})
    print(f"trained on {count[0]} texts from {args.source}: {tok}")
    print(f"wrote {out} (use tokenizer={str(out)!r} in a config)")
    return 0


def _show(args) -> int:
    from pjx import tokenizers

    tok = tokenizers.load(args.spec)
    print(tok)
    print(f"special_ids: {list(tok.special_ids)}")
    if args.text is not None:
        ids = tok.encode(args.text)
        print(f"{len(ids)} ids: {ids}")
        print(f"decoded: {tok.decode(ids)!r}")
    return 0


COMMANDS = {"train": _train, "show": _show}


def main(args, overrides=()) -> int:
    """Runs `pjx tokenizer ...`; bad input raises (the pjx command prints one line, exit 2)."""
    no_overrides("tokenizer", overrides)
    try:
        return COMMANDS[args.tokenizer_command](args)
    except ImportError as e:  # e.g. `tokenizers` missing for a tokenizer.json
        raise ValueError(str(e)) from None
