"""Bad input in text / jsonl / Parquet shards: a message naming the file (and line or row
group) and what to do; `data.bad_rows=skip` counts the skipped rows."""

from __future__ import annotations

import gzip
import json

import pytest
from data_fixtures import ByteTok, lm_config

from pjx import data
from pjx.data import shards
from pjx.examples import DataError
from pjx.uri import parse_uri


def _read(source, **kw):
    """Every document of a source through the streaming reader, and the rows skipped."""
    cfg = data.with_defaults(lm_config(source=source, **kw))
    docs, skipped = [], 0
    for chunk in shards.plan(parse_uri(source), cfg):
        ex, k = shards.read_chunk(chunk, cfg)
        docs += ex.texts
        skipped += k
    return docs, skipped


def _stream(source, **kw):
    cfg = lm_config(source=source, seq_len=32, mode="stream", shuffle_buffer=4, **kw)
    return data.build(
        data.Spec(cfg, task="clm", model="gpt2", seed=0),
        tokenizer=ByteTok(),
        batch_size=2,
        train=True,
    )


def test_unreadable_shard_names_the_file(tmp_path):
    good = "\n".join(f"line {i} of text" for i in range(3000)).encode()
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(good))
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress(good)[:2000])  # truncated download
    with pytest.raises(DataError, match=r"b\.txt\.gz: cannot read this shard.*re-download"):
        _read(f"text:{tmp_path}/*.txt.gz")


def test_malformed_json_line_names_file_and_line(tmp_path):
    lines = [json.dumps({"text": f"doc {i}"}) for i in range(50)]
    lines[37] = '{"text": "cut off'
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"a\.jsonl:38: not valid JSON.*data\.bad_rows=skip"):
        _read(f"jsonl:{tmp_path}/a.jsonl", chunk_bytes=200)


def test_bad_rows_skip_counts_and_logs(tmp_path, capsys):
    lines = [json.dumps({"text": f"doc {i}"}) for i in range(50)]
    lines[3], lines[20], lines[44] = "not json", json.dumps({"text": None}), "{"
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    source = f"jsonl:{tmp_path}/a.jsonl"
    docs, skipped = _read(source, bad_rows="skip", chunk_bytes=200)
    assert skipped == 3 and len(docs) == 47 and "doc 3" not in docs
    it = _stream(source, bad_rows="skip")
    next(it)
    assert it.skipped == 3
    out = capsys.readouterr()
    assert "skipped 3 bad rows" in out.out + out.err
    cached = data.sources.read(source, data.with_defaults(lm_config(bad_rows="skip")))
    assert len(cached.texts) == 47


def test_bad_parquet_file_names_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a b c"] * 10}), tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"this is not parquet at all" * 10)
    with pytest.raises(DataError, match=r"b\.parquet: not a readable Parquet file.*re-export"):
        _read(f"parquet:{tmp_path}/*.parquet")


def test_missing_column_names_the_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["a b c"] * 10}), tmp_path / "a.parquet")
    with pytest.raises(DataError, match=r"a\.parquet: no column 'text'.*content.*text_columns"):
        _read(f"parquet:{tmp_path}/a.parquet")
    assert _read(f"parquet:{tmp_path}/a.parquet", text_columns=("content",))[0][0] == "a b c"
    (tmp_path / "a.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataError, match=r"a\.jsonl:1: no field 'text'.*body"):
        _read(f"jsonl:{tmp_path}/a.jsonl")


def test_parquet_null_rows_name_the_row_group(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"doc {i}" for i in range(20)]
    texts[13] = None
    pq.write_table(pa.table({"text": texts}), tmp_path / "a.parquet", row_group_size=5)
    with pytest.raises(DataError, match=r"a\.parquet: row group 2, row 3"):
        _read(f"parquet:{tmp_path}/a.parquet")
    docs, skipped = _read(f"parquet:{tmp_path}/a.parquet", bad_rows="skip")
    assert skipped == 1 and len(docs) == 19
