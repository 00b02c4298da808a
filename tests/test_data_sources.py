"""pjx.data sources: URIs, slices, readers (text / tsv / idx / tfds / embedded), bad input."""

from __future__ import annotations

import gzip
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import lm_config

from pjx import data
from pjx.data import embedded, sources
from pjx.data.sources import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs = lambda name: pytest.mark.skipif(
    not (SHARED / name).exists(), reason=f"needs ../shared/data/{name}"
)


# ----------------------------------------------------------------------------- URIs
@pytest.mark.parametrize(
    "uri, expect",
    [
        ("tfds:mnist", ("tfds", "mnist", "", "")),
        ("tfds:glue/sst2:validation[:50%]", ("tfds", "glue/sst2", "validation", ":50%")),
        ("tfds:mnist:3.0.1", ("tfds", "mnist:3.0.1", "", "")),
        ("text:/x/*.txt[90%:]", ("text", "/x/*.txt", "", "90%:")),
        ("tsv:a/train.tsv", ("tsv", "a/train.tsv", "", "")),
        ("idx:/m:test", ("idx", "/m", "test", "")),
        ("embedded", ("embedded", "", "", "")),
        ("embedded:classify[:80%]", ("embedded", "", "classify", ":80%")),
    ],
)
def test_parse_uri(uri, expect):
    u = sources.parse_uri(uri)
    assert (u.kind, u.path, u.split, u.slice) == expect


def test_bad_uris():
    with pytest.raises(DataError, match="unknown data source"):
        sources.parse_uri("csv:x.csv")
    with pytest.raises(DataError, match="bad slice"):
        sources.parse_uri("text:x.txt[1:2:3]")
    with pytest.raises(DataError, match="needs a path"):
        sources.parse_uri("text:")


def test_slices_follow_tfds():
    n = 7
    ref = list(range(n))
    cases = {":50%": ref[:4], "50%:": ref[4:], "2:5": ref[2:5], "-2:": ref[5:], ":": ref}
    for spec, want in cases.items():
        assert ref[sources.slice_bounds(spec, n)] == want, spec
    # train / eval halves of a percent split partition the examples
    for n in (9, 10, 101):
        a, b = sources.slice_bounds(":90%", n), sources.slice_bounds("90%:", n)
        assert list(range(n))[a] + list(range(n))[b] == list(range(n))


# ----------------------------------------------------------------------------- text
def test_text_documents_gzip_glob_and_slices(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n\nthree\n")
    with gzip.open(tmp_path / "b.txt.gz", "wt") as f:
        f.write("four\nfive")
    cfg = lm_config()
    ex = sources.read(f"text:{tmp_path}/*.txt*", cfg)
    assert ex.texts == ["one", "two", "", "three", "four", "five"]
    assert sources.read(f"text:{tmp_path}/*[-2:]", cfg).texts == ["four", "five"]
    cfg.text_split = "blank_line"
    assert sources.read(f"text:{tmp_path}/a.txt", cfg).texts == ["one\ntwo", "three"]
    uri = f"text:{tmp_path}/a.txt"
    assert list(data.read_texts(uri)) == ["one\n", "two\n", "three\n"]
    assert list(data.read_texts(uri + "[1:]", lm_config(pack="stream"))) == ["two\n\nthree"]
    tsv = tmp_path / "t.tsv"
    tsv.write_text("sentence1\tsentence2\tlabel\na\tb\t0\nc\td\t1\n")
    assert list(data.read_texts(f"tsv:{tsv}", {"preset": "rte", "labels": ("0", "1")})) == [
        "a",
        "c",
        "b",
        "d",
    ]


# ------------------------------------------------------------------------ bad input
def _tsv(tmp_path, rows, name="train.tsv", folder="custom"):
    d = tmp_path / folder
    d.mkdir(exist_ok=True)
    p = d / name
    p.write_text("\n".join("\t".join(r) for r in rows) + "\n")
    return p


def _cfg(**kw):
    return lm_config(text_columns=("sentence",), label_column="label", **kw)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: no such file"):
        sources.read(f"text:{tmp_path}/nope.txt", lm_config())
    with pytest.raises(DataError, match="no files match"):
        sources.read(f"text:{tmp_path}/*.nope", lm_config())
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(DataError, match=r"empty\.tsv: file is empty"):
        sources.read(f"tsv:{tmp_path}/empty.tsv", _cfg(), need_labels=True)
    with pytest.raises(DataError, match="no such folder"):
        sources.read(f"idx:{tmp_path}/nothing", lm_config())


def test_tsv_wrong_column_count_names_file_and_line(tmp_path):
    p = _tsv(tmp_path, [["sentence", "label"], ["good", "1"], ["bad row", "0", "extra"]])
    with pytest.raises(DataError, match=rf"{p}:3: expected 2 tab-separated columns, found 3"):
        sources.read(f"tsv:{p}", _cfg(), need_labels=True)


def test_tsv_label_outside_classes(tmp_path):
    p = _tsv(tmp_path, [["sentence", "label"], ["a", "1"], ["b", "0"], ["c", "7"]])
    with pytest.raises(DataError, match=rf"{p}:4: label '7' is not one of the classes"):
        sources.read(f"tsv:{p}", _cfg(), need_labels=True)


def test_tsv_skip_policy_counts(tmp_path, capsys):
    p = _tsv(tmp_path, [["sentence", "label"], ["a", "1"], ["b", "x"], ["c"], ["d", "0"]])
    ex = sources.read(f"tsv:{p}", _cfg(bad_rows="skip"), need_labels=True)
    assert ex.texts == ["a", "d"] and ex.labels.tolist() == [1, 0]
    assert "skipped 2 bad row(s)" in capsys.readouterr().err


def test_invalid_utf8_names_file_and_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"fine line\nsecond \xff\xfe line\n")
    with pytest.raises(DataError, match=rf"{p}:2: invalid UTF-8 \(byte 0xff at column 8\)"):
        sources.read(f"text:{p}", lm_config())


def test_unknown_tsv_layout_says_how_to_fix(tmp_path):
    p = _tsv(tmp_path, [["x", "y"], ["a", "1"]])
    with pytest.raises(DataError, match="data.preset"):
        sources.read(f"tsv:{p}", lm_config(), need_labels=True)


def test_tsv_layout_from_a_config_read_back_from_json(tmp_path):
    """A saved run config spells unset columns as [] (JSON has no tuples): the preset
    still decides; column index 0 is a real setting."""
    p = _tsv(tmp_path, [["sentence", "label"], ["a b", "1"], ["c", "0"]])
    saved = dict(lm_config().to_dict(), preset="sst2", text_columns=[], labels=[])
    ex = sources.read(f"tsv:{p}", saved, need_labels=True)
    assert ex.texts == ["a b", "c"] and ex.labels.tolist() == [1, 0]
    q = _tsv(tmp_path, [["label", "sentence"], ["1", "x"]], name="swapped.tsv")
    by_index = dict(lm_config().to_dict(), text_columns=["sentence"], label_column=0)
    ex = sources.read(f"tsv:{q}", by_index, need_labels=True)
    assert ex.texts == ["x"] and ex.labels.tolist() == [1]


# ------------------------------------------------------------------------------ GLUE
@needs("sst2")
def test_sst2_single_sentences():
    ex = sources.read(f"tsv:{SHARED}/sst2/train.tsv", lm_config(), need_labels=True)
    assert len(ex) == 67349 and ex.texts_b is None
    assert ex.texts[0] == "hide new secretions from the parental units "
    assert np.bincount(ex.labels).tolist() == [29780, 37569]


@needs("cola")
def test_cola_headerless():
    ex = sources.read(f"tsv:{SHARED}/cola/train.tsv", lm_config(), need_labels=True)
    assert len(ex) == 8551
    assert ex.texts[0].startswith("Our friends won't buy this analysis")
    assert np.bincount(ex.labels).tolist() == [2528, 6023]


@needs("mrpc")
def test_mrpc_pairs_with_bom_header():
    ex = sources.read(f"tsv:{SHARED}/mrpc/train.tsv", lm_config(), need_labels=True)
    assert len(ex) == 3668 and ex.labels[:2].tolist() == [1, 0]
    assert ex.texts[0].startswith("Amrozi accused his brother")
    assert ex.texts_b[0].startswith("Referring to him as only")


@needs("rte")
def test_rte_string_labels_and_slices():
    uri = f"tsv:{SHARED}/rte/train.tsv"
    ex = sources.read(uri, lm_config(), need_labels=True)
    assert len(ex) == 2490 and ex.label_names == ("entailment", "not_entailment")
    assert ex.labels[0] == 1  # "not_entailment"
    head = sources.read(uri + "[:90%]", lm_config(), need_labels=True)
    tail = sources.read(uri + "[90%:]", lm_config(), need_labels=True)
    assert len(head) + len(tail) == 2490 and head.texts + tail.texts == ex.texts


# ------------------------------------------------------------------------------- idx
def _write_idx(path, arr, gz):
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    blob = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(blob)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, gz):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 6, 7), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    suffix = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", imgs, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, gz)
    ex = sources.read(f"idx:{tmp_path}[1:]", lm_config(), need_labels=True)
    np.testing.assert_array_equal(ex.images[..., 0], imgs[1:])
    np.testing.assert_array_equal(ex.labels, labels[1:])


def test_idx_truncated(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 3, 3)), False)
    blob = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(blob[:-4])
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2), False)
    with pytest.raises(DataError, match="truncated or corrupt"):
        sources.read(f"idx:{tmp_path}", lm_config())


@needs("mnist_tsuga")
def test_mnist_idx():
    ex = sources.read(f"idx:{SHARED}/mnist_tsuga", lm_config(), need_labels=True)
    assert ex.images.shape == (60000, 28, 28, 1) and ex.images.dtype == np.uint8
    # canonical MNIST training label counts
    want = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(ex.labels).tolist() == want
    assert 30 < ex.images.mean() < 35 and ex.images[:, 0, 0].max() == 0  # dark borders


# -------------------------------------------------------------------------- embedded
def test_embedded_corpus_and_task():
    docs = embedded.documents()
    assert len(docs) > 1000 and sum(len(d) for d in docs) > 300_000
    texts, labels = embedded.classification()
    assert len(texts) == len(labels) > 1000
    assert labels.mean() == 0.5  # balanced
    head = labels[: int(0.8 * len(labels))]
    assert 0.45 < head.mean() < 0.55  # shuffled: the [:80%] slice is balanced too
    assert all(len(t.split()) >= 6 for t in texts)
    assert texts == embedded.classification()[0]  # fixed order


# ------------------------------------------------------------------------------ tfds
def test_tfds_not_prepared_offline_fails_at_once(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    cfg = lm_config(source="tfds:mnist", data_dir=str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        data.build(data.Spec(cfg, task="classify", model="vit"), batch_size=4, train=True)
    assert time.perf_counter() - t0 < 30
    msg = str(e.value)
    assert "'mnist' is not prepared" in msg and str(tmp_path) in msg
    assert "data_dir" in msg and "idx:DIR" in msg and "Traceback" not in msg
    with pytest.raises(DataError, match="neither registered nor prepared"):
        sources.read("tfds:no_such_dataset_xyz", lm_config(data_dir=str(tmp_path)))


def test_tfds_array_record_through_the_pipeline(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")

    class PjxTinyText(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {
                "text": tfds.features.Text(),
                "label": tfds.features.ClassLabel(num_classes=2),
            }
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(20):
                yield i, {"text": f"example number {i}", "label": i % 2}

    PjxTinyText(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    cfg = lm_config(data_dir=str(tmp_path), source="tfds:pjx_tiny_text:train[:50%]")
    ex = sources.read(cfg.source, cfg, need_labels=True)
    assert len(ex) == 10
    assert all(int(t.split()[-1]) % 2 == y for t, y in zip(ex.texts, ex.labels))
    from data_fixtures import ByteTok

    cfg.seq_len = 24
    evals = data.build(
        data.Spec(cfg, task="classify", model="bert"),
        tokenizer=ByteTok(),
        batch_size=4,
        train=False,
    )
    assert sum(float(b["weight"].sum()) for b in evals) == 10
