"""pjx glue: a tiny pretrained run fine-tuned on generated GLUE-layout TSVs (SST-2, MRPC),
two seeds of two steps; the table, JSON and chart agree with each run's metrics.jsonl."""

import json

import numpy as np
import pytest
from data_fixtures import write_sst2

from pjx import cli, evaluation, glue, run
from pjx import config as config_lib

L = 32
TINY = dict(
    num_layers=1, hidden_size=32, num_heads=2, mlp_dim=64, max_position_embeddings=L,
    dropout_rate=0.0, attention_dropout_rate=0.0,
)  # fmt: skip
FAST = [
    "--config.steps=2",
    "--config.batch_size=8",
    "--config.eval_batch_size=8",
    f"--config.data.seq_len={L}",
    "--config.progress=false",
    "--config.write_curves=false",
]


def write_mrpc(path, n=60):
    """A GLUE MRPC-layout TSV (Quality, ids, two strings) of generated sentence pairs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    vocab = "the court said he was a man who shares rose fell sharply on monday".split()
    rows = [
        f"{i % 2}\t{i}\t{i + 1000}\t{' '.join(rng.choice(vocab, 7))}\t"
        f"{' '.join(rng.choice(vocab, 8))}"
        for i in range(n)
    ]
    path.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A pjx MLM run of one step: the checkpoint every task fine-tunes."""
    c = config_lib.base_config()
    c.model.name, c.task = "bert", "mlm"
    c.model.update(TINY)
    c.data.source, c.eval_data.source = "embedded[:50]", ""
    c.data.tokenizer = "byte?specials=bert"
    c.data.seq_len, c.batch_size, c.steps = L, 8, 1
    c.progress, c.write_curves = False, False
    path = tmp_path_factory.mktemp("glue_source") / "mlm"
    run.train(c, str(path))
    return str(path)


@pytest.fixture
def data(tmp_path, monkeypatch):
    write_sst2(tmp_path / "data" / "sst2" / "train.tsv", n=80)
    write_mrpc(tmp_path / "data" / "mrpc" / "train.tsv", n=60)
    monkeypatch.setenv("PJX_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.mark.slow
def test_glue_table_json_chart_and_resume(source, data, tmp_path, capsys):
    out = tmp_path / "glue"
    argv = ["glue", source, "--out", str(out), "--seeds", "2", *FAST]
    assert cli.main(argv) == 0  # every task with data: sst2 and mrpc (cola, rte: none)
    printed = capsys.readouterr().out
    assert "skipped, no data: cola" in printed and "rte" in printed

    results = json.loads((out / "glue.json").read_text())
    assert {t: sorted(m) for t, m in results.items()} == {
        "sst2": ["accuracy"],
        "mrpc": ["accuracy", "f1"],
    }
    for task, per_metric in results.items():
        for metric, stats in per_metric.items():
            seeds = [out / task / f"seed{s}" for s in range(2)]
            values = []
            for workdir in seeds:
                lines = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
                last = [r for r in lines if r["split"] == "eval"][-1]
                assert last["step"] == 2
                values.append(last[metric])
            np.testing.assert_allclose(stats["values"], values)
            np.testing.assert_allclose(stats["mean"], np.mean(values))
            np.testing.assert_allclose(stats["std"], np.std(values, ddof=1))
            saved = json.loads((seeds[1] / "config.json").read_text())
            assert saved["seed"] == 1 and saved["init_from"] == source

    md = (out / "glue.md").read_text()
    rows = [r for r in md.splitlines() if r.startswith("| ") and "---" not in r]
    assert [r.split("|")[1:3] for r in rows[1:]] == [
        [" sst2 ", " accuracy "],
        [" mrpc ", " f1 "],
        [" mrpc ", " accuracy "],
    ]
    sst2 = results["sst2"]["accuracy"]
    assert f"{sst2['mean']:.3f} ± {sst2['std']:.3f}" in rows[1]
    assert "2 x 8" in rows[1] and "2 seed(s)" in md and source in md
    assert (out / "glue.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "glue.png").stat().st_size > 1000

    # Each run is a pjx workdir that `pjx eval` reads.
    scored = evaluation.evaluate(str(out / "sst2" / "seed0"), f"tsv:{data}/sst2/train.tsv[90%:]")
    assert 0.0 <= scored["accuracy"] <= 1.0

    # Again: the finished runs are read back, not trained again.
    before = {p: p.read_text() for p in out.glob("*/seed*/metrics.jsonl")}
    assert cli.main(argv) == 0
    again = capsys.readouterr().out
    assert again.count("already done") == 4 and "=== glue" not in again
    assert {p: p.read_text() for p in out.glob("*/seed*/metrics.jsonl")} == before
    assert json.loads((out / "glue.json").read_text()) == results

    # A later call with other settings reads the runs back and states what they ran with.
    assert cli.main([*argv, "--config.optimizer.lr=0.5"]) == 0
    assert "lr 0.5" not in capsys.readouterr().out
    assert (out / "glue.md").read_text() == md


def test_tasks_without_data_are_named(data, tmp_path, capsys):
    source = str(tmp_path / "never_read")  # no run starts: the data is checked first
    argv = ["glue", source, "--out", str(tmp_path / "g"), "--tasks", "sst2,cola", *FAST]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "no GLUE data for cola" in err and "cola/train.tsv" in err and "PJX_DATA" in err
    assert not (tmp_path / "g").exists()
    with pytest.raises(ValueError, match="unknown GLUE task.*qnli"):
        glue.glue(source, tmp_path / "g", tasks=["qnli"])
