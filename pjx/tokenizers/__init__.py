"""One Tokenizer interface over SentencePiece, BERT WordPiece, characters and bytes.

    tok = pjx.tokenizers.load("sentencepiece:/data/spiece.model")   # or a folder
    ids = tok.encode("Hello world")            # no special tokens added
    tok.pad_id, tok.mask_id, tok.sentinel_ids  # None / () where the kind has none

Specs: sentencepiece:PATH.model, wordpiece:PATH/vocab.txt, char:PATH, byte, a directory
(written by Tokenizer.save, or a Hugging Face folder), each optionally followed by
?key=value parameters; configs may also say train:sentencepiece?vocab_size=N or train:char
(see from_config).
"""

from pjx.tokenizers.base import FAMILY_SPECIALS, Tokenizer
from pjx.tokenizers.load import from_config, holds_tokenizer, load
from pjx.tokenizers.spec import TokenizerSpec, parse_spec
from pjx.tokenizers.spm import SentencePieceTokenizer, train_sentencepiece
from pjx.tokenizers.symbols import ByteTokenizer, CharTokenizer, train_char
from pjx.tokenizers.wordpiece import HFTokenizer, wordpiece

__all__ = [
    "FAMILY_SPECIALS",
    "ByteTokenizer",
    "CharTokenizer",
    "HFTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "TokenizerSpec",
    "from_config",
    "holds_tokenizer",
    "load",
    "parse_spec",
    "train_char",
    "train_sentencepiece",
    "wordpiece",
]
