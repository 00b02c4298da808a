"""pjx glue: a tiny pretrained run fine-tuned on generated GLUE-layout TSVs (SST-2, MRPC),
two seeds of two steps; the table, JSON and chart agree with each run's metrics.jsonl."""

import json
import shlex
import shutil
from pathlib import Path

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


def test_task_groups_run_into_one_out_and_another_source_is_refused(source, data, tmp_path):
    """Task groups run by separate calls (each with its own settings) share OUT: glue.json
    holds every task; a call with another source into the same OUT is refused before any
    run starts, instead of reporting the first source's runs as its own."""
    out, fast = tmp_path / "glue", [*FAST, "--config.steps=1"]
    glue.glue(source, out, tasks=["sst2"], seeds=1, overrides=fast)
    sst2 = (out / "sst2" / "seed0" / "metrics.jsonl").read_text()
    results = glue.glue(source, out, tasks=["mrpc"], seeds=1, overrides=fast)
    assert list(results) == ["sst2", "mrpc"]
    assert json.loads((out / "glue.json").read_text()) == results
    last = json.loads(sst2.splitlines()[-1])
    assert results["sst2"]["accuracy"]["values"] == [last["accuracy"]]
    assert "| sst2 | accuracy |" in (out / "glue.md").read_text()
    with pytest.raises(ValueError, match=r"sst2/seed0 holds a run fine-tuned from .*mlm.*"
                       r"not from 'scratch': give each source its own --out"):  # fmt: skip
        glue.glue("scratch", out, tasks=["sst2"], seeds=1, overrides=fast)
    assert (out / "sst2" / "seed0" / "metrics.jsonl").read_text() == sst2
    assert json.loads((out / "glue.json").read_text()) == results


def test_a_curve_refuses_another_source_of_the_same_folder_name(source, data, tmp_path):
    from pjx.glue import curve

    shutil.copytree(source, tmp_path / "other" / "mlm")  # another run, also named `mlm`
    out, fast = tmp_path / "curve", [*FAST, "--config.steps=1"]
    curve.run([source], out, "8", tasks=["sst2"], seeds=1, overrides=fast)
    with pytest.raises(ValueError, match="holds a run fine-tuned from .*, not from .*other"):
        curve.run([str(tmp_path / "other" / "mlm")], out, "8", tasks=["sst2"], seeds=1,
                  overrides=fast)  # fmt: skip


def test_tasks_without_data_are_named(data, tmp_path, capsys):
    source = str(tmp_path / "never_read")  # no run starts: the data is checked first
    argv = ["glue", source, "--out", str(tmp_path / "g"), "--tasks", "sst2,cola", *FAST]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "no GLUE data for cola" in err and "cola/train.tsv" in err and "PJX_DATA" in err
    assert not (tmp_path / "g").exists()
    with pytest.raises(ValueError, match="unknown GLUE task.*qnli"):
        glue.glue(source, tmp_path / "g", tasks=["qnli"])


# ------------------------------------------------------------- the label-efficiency curve
# The tiny architecture as overrides: `scratch` builds it, init_from runs read it back.
TINY_ARGS = [f"--config.model.{k}={v}" for k, v in TINY.items()]


def _rows(path):
    """(header, rows) of a rows file written by pjx.glue.curve."""
    head, *rows = [line.split("\t") for line in path.read_text().splitlines()]
    return head, rows


@pytest.mark.slow
def test_curve_same_rows_for_every_source_json_md_chart(source, data, tmp_path):
    out = tmp_path / "curve"
    argv = ["glue", "scratch", source, "--labels", "16,8", "--tasks", "sst2", "--seeds", "2"]
    # Bytes for `scratch` too (the source's own): every run has one shape and compiles once.
    argv += ["--out", str(out), *FAST, *TINY_ARGS, "--config.data.tokenizer=byte?specials=bert"]
    assert cli.main(argv) == 0

    # The rows: the first N of a permutation seeded by the seed, n8 the head of n16, other
    # rows for another seed, each a row of the training slice (the first 90% = 72 rows).
    train = [r.split("\t") for r in (data / "sst2" / "train.tsv").read_text().splitlines()[1:73]]
    picked = {}
    for seed in (0, 1):
        head, n8 = _rows(out / "rows" / "sst2" / f"seed{seed}" / "n8.tsv")
        _, n16 = _rows(out / "rows" / "sst2" / f"seed{seed}" / "n16.tsv")
        assert head == ["row", "sentence", "label"] and n16[:8] == n8 and len(n16) == 16
        for row, sentence, label in n16:
            assert train[int(row)] == [sentence, label]
        picked[seed] = [int(r[0]) for r in n16]
        assert picked[seed] == list(np.random.default_rng(seed).permutation(72)[:16])
    assert picked[0] != picked[1]

    # Every source at a given N and seed trained on that file (and only on it).
    name = source.rstrip("/").split("/")[-1]
    results = json.loads((out / "curve.json").read_text())
    assert list(results) == ["scratch", source] and list(results[source]) == ["sst2"]
    for seed in (0, 1):
        for n in (8, 16):
            rows_file = out / "rows" / "sst2" / f"seed{seed}" / f"n{n}.tsv"
            for folder, init in (("scratch", ""), (name, source)):
                saved = json.loads(
                    (out / folder / "sst2" / f"n{n}" / f"seed{seed}" / "config.json").read_text()
                )
                assert saved["data"]["source"] == f"tsv:{rows_file}" and saved["seed"] == seed
                assert saved["init_from"] == init
                assert saved["eval_data"]["source"].endswith("sst2/train.tsv[90%:]")

    # curve.json: source -> task -> N -> {metric, mean, std, values, per_seed}, from the runs.
    for src, folder in (("scratch", "scratch"), (source, name)):
        assert sorted(results[src]["sst2"], key=int) == ["8", "16"]
        for n, stats in results[src]["sst2"].items():
            assert set(stats) == {"metric", "mean", "std", "values", "per_seed"}
            assert stats["metric"] == "accuracy" and list(stats["per_seed"]) == ["0", "1"]
            runs = [out / folder / "sst2" / f"n{n}" / f"seed{s}" for s in (0, 1)]
            last = [json.loads(open(w / "metrics.jsonl").readlines()[-1]) for w in runs]
            assert all(r["split"] == "eval" and r["step"] == 2 for r in last)
            np.testing.assert_allclose(stats["values"], [r["accuracy"] for r in last])
            np.testing.assert_allclose(list(stats["per_seed"].values()), stats["values"])
            np.testing.assert_allclose(stats["mean"], np.mean(stats["values"]))
            np.testing.assert_allclose(stats["std"], np.std(stats["values"], ddof=1))

    md = (out / "curve.md").read_text()
    table = [r for r in md.splitlines() if r.startswith("| ")]
    assert table[0].startswith("| task | metric | source | N=8 | N=16 |")
    s = results[source]["sst2"]["16"]
    assert table[2].startswith(f"| sst2 | accuracy | {source} | ")
    assert f"{s['mean']:.3f} ± {s['std']:.3f}" in table[2] and "2 x 8" in table[2]
    assert table[1].startswith("| sst2 | accuracy | scratch | ") and "2 seed(s)" in md
    png = (out / "curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


@pytest.mark.parametrize(
    "labels, says",
    [
        ("0,100", "'0' is not a number of labelled rows"),
        ("-5", "'-5' is not a number of labelled rows"),
        ("100,lots", "'lots' is not a number of labelled rows"),
        ("8,1000", "task sst2 has 72 training rows"),
        ("4", "fewer rows than one batch of task sst2 (8)"),
    ],
)
def test_curve_bad_labels_are_refused_before_anything_is_written(
    labels, says, data, tmp_path, capsys
):
    out = tmp_path / "curve"
    argv = ["glue", "scratch", "--labels", labels, "--tasks", "sst2", "--out", str(out), *FAST]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--labels" in err and says in err and "sst2" in err
    assert not out.exists()


def test_several_sources_need_labels(data, tmp_path, capsys):
    argv = ["glue", "scratch", "runs/x", "--out", str(tmp_path / "g"), *FAST]
    assert cli.main(argv) == 2
    assert "--labels" in capsys.readouterr().err and not (tmp_path / "g").exists()


@pytest.mark.slow
def test_readme_curve_command_runs_as_printed(source, tmp_path, monkeypatch):
    """The README's `pjx glue scratch runs/bert_mlm --labels ...` line, run from a folder
    holding runs/bert_mlm (a tiny MLM run) and generated SST-2 rows, with a tiny budget
    appended (one task, one seed, two steps, the tiny model; later flags win)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("pjx glue scratch "))
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "bert_mlm").symlink_to(source)
    write_sst2(tmp_path / "data" / "sst2" / "train.tsv", n=3340)  # 3,006 training rows
    monkeypatch.setenv("PJX_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    tiny = ["--tasks", "sst2", "--seeds", "1", *FAST, *TINY_ARGS]
    assert cli.main([*shlex.split(line)[1:], *tiny]) == 0
    results = json.loads((tmp_path / "runs" / "curve" / "curve.json").read_text())
    assert list(results) == ["scratch", "runs/bert_mlm"]
    for per_task in results.values():
        assert list(per_task) == ["sst2"]
        assert sorted(per_task["sst2"], key=int) == ["100", "300", "1000", "3000"]
    for name in ("curve.md", "curve.png", "rows/sst2/seed0/n3000.tsv"):
        assert (tmp_path / "runs" / "curve" / name).is_file()
