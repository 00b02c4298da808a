"""BERT WordPiece and Hugging Face tokenizer.json files, through the `tokenizers` package."""

from __future__ import annotations

import json
from pathlib import Path

from pjx.tokenizers.base import SPECIAL_NAMES, Tokenizer, sentinel_token

TOKENIZER_FILE = "tokenizer.json"

# Where a Hugging Face folder does not name a special token, these common spellings are tried.
_DEFAULT_SPECIALS = {
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "cls": ("[CLS]", "<s>"),  # RoBERTa's classifier token is <s>, its separator </s>
    "sep": ("[SEP]", "</s>"),
    "mask": ("[MASK]", "<mask>"),
    "bos": ("<s>", "<|endoftext|>"),
    "eos": ("</s>", "<|endoftext|>"),
}
_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ImportError(
            "WordPiece and tokenizer.json tokenizers need the `tokenizers` package: "
            'pip install "pjx[hf]"'
        ) from None
    return tokenizers


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` used without its post-processor, padding or truncation."""

    def __init__(self, tokenizer, specials: dict[str, str], *, kind: str = "tokenizers"):
        self.kind = kind
        tokenizer.no_padding()  # saved tokenizer.json files often carry a model's padding
        tokenizer.no_truncation()
        self._tok = tokenizer
        self._specials = {k: v for k, v in specials.items() if tokenizer.token_to_id(v) is not None}
        ids = {name: tokenizer.token_to_id(tok) for name, tok in self._specials.items()}
        sentinels = []
        while (i := tokenizer.token_to_id(sentinel_token(len(sentinels)))) is not None:
            sentinels.append(i)
        added = [i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special]
        self._set_specials(tokenizer.get_vocab_size(with_added_tokens=True), ids, sentinels, added)

    def encode_batch(self, texts):
        tok = self._tok
        # encode_batch_fast skips character offsets; both run in parallel in Rust.
        batch = getattr(tok, "encode_batch_fast", tok.encode_batch)
        return [e.ids for e in batch(list(texts), add_special_tokens=False)]

    def decode(self, ids):
        return self._tok.decode(self._decodable(ids), skip_special_tokens=False)

    def _save_files(self, directory):
        self._tok.save(str(directory / TOKENIZER_FILE))
        return {"file": TOKENIZER_FILE, "specials": self._specials}

    @classmethod
    def from_file(cls, path, specials=None, *, kind="tokenizers") -> HFTokenizer:
        """A tokenizer.json; `specials` (name -> token) default to the folder's HF config."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {path}")
        tok = _tokenizers().Tokenizer.from_file(str(path))
        if specials is None:
            specials = hf_special_tokens(path.parent, tok.get_vocab(with_added_tokens=True))
        return cls(tok, specials, kind=kind)

    def __getstate__(self):  # picklable for multi-process data loaders
        return {"json": self._tok.to_str(), "specials": self._specials, "kind": self.kind}

    def __setstate__(self, state):
        tok = _tokenizers().Tokenizer.from_str(state["json"])
        self.__init__(tok, state["specials"], kind=state["kind"])


def wordpiece(vocab_file, *, lowercase: bool = True) -> HFTokenizer:
    """BERT's WordPiece (Devlin et al. 2019; Wu et al. 2016) from a vocab.txt.

    Built the way transformers' BertTokenizer builds it, so ids match: BERT normaliser
    (clean text, split CJK characters, lowercase and strip accents when uncased), BERT
    pre-tokenizer (whitespace and punctuation), greedy longest-match-first with '##'.
    """
    tk = _tokenizers()
    vocab_file = Path(vocab_file)
    if not vocab_file.is_file():
        raise FileNotFoundError(f"no WordPiece vocabulary at {vocab_file} (expected a vocab.txt)")
    tok = tk.Tokenizer(
        tk.models.WordPiece.from_file(
            str(vocab_file), unk_token="[UNK]", max_input_chars_per_word=100
        )
    )
    tok.normalizer = tk.normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tok.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
    tok.decoder = tk.decoders.WordPiece(prefix="##")
    vocab = tok.get_vocab()
    # Registered as special so literal "[MASK]" in text becomes the mask id, as in transformers.
    tok.add_special_tokens([t for t in _BERT_SPECIALS if t in vocab])
    return HFTokenizer(
        tok, dict(zip(("pad", "unk", "cls", "sep", "mask"), _BERT_SPECIALS)), kind="wordpiece"
    )


def hf_config(folder: Path) -> dict:
    """tokenizer_config.json merged over special_tokens_map.json ({} where absent)."""
    out = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = Path(folder) / name
        if path.is_file():
            try:
                out |= json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
    return out


def hf_special_tokens(folder: Path, vocab) -> dict[str, str]:
    """name -> token for a Hugging Face folder: its config first, then common spellings."""
    config = hf_config(folder)
    out = {}
    for name in SPECIAL_NAMES:
        token = config.get(f"{name}_token")
        if isinstance(token, dict):  # serialized AddedToken
            token = token.get("content")
        candidates = (token,) if token else _DEFAULT_SPECIALS[name]
        found = [t for t in candidates if t in vocab]
        if found:
            out[name] = found[0]
    return out
