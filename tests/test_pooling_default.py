"""A classifier fine-tuned from a run whose pooler never trained (MLM without NSP) reads the
mean token state unless model.pooling says otherwise; one from an NSP run keeps the pooler."""

import pytest

from pjx import config as config_lib
from pjx import init_from, resolution, run

L = 32
TINY = dict(
    num_layers=1, hidden_size=32, num_heads=2, mlp_dim=64, max_position_embeddings=L,
    dropout_rate=0.0, attention_dropout_rate=0.0,
)  # fmt: skip


def _mlm(path, nsp: bool) -> str:
    """A one-step MLM run (with or without next-sentence prediction)."""
    c = config_lib.base_config()
    c.model.name, c.task, c.task_args.nsp = "bert", "mlm", nsp
    c.model.update(TINY)
    c.data.source, c.eval_data.source = "embedded[:50]", ""
    c.data.tokenizer = "byte?specials=bert"
    c.data.seq_len, c.batch_size, c.steps = L, 8, 1
    c.progress, c.write_curves = False, False
    run.train(c, str(path))
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pooling")
    return {nsp: _mlm(root / f"nsp_{nsp}", nsp) for nsp in (False, True)}


def _classify(source, *overrides):
    c = config_lib.base_config()
    c.model.name, c.task, c.model.num_labels = "bert", "classify", 2
    c.init_from = source
    return config_lib.apply_overrides(c, overrides)


def test_mlm_without_nsp_classifies_from_the_mean_and_says_so(runs, capsys):
    capsys.readouterr()
    assert resolution.resolve(_classify(runs[False])).model.pooling == "mean"
    said = capsys.readouterr().out
    assert "model.pooling='mean'" in said and "without next-sentence" in said
    assert runs[False] in said


def test_nsp_run_keeps_the_pooler_and_explicit_pooling_wins(runs, capsys):
    capsys.readouterr()
    assert resolution.resolve(_classify(runs[True])).model.pooling == "cls"
    pinned = _classify(runs[False], "--config.model.pooling=cls")
    assert resolution.resolve(pinned).model.pooling == "cls"
    pinned = _classify(runs[True], "--config.model.pooling=mean")
    assert resolution.resolve(pinned).model.pooling == "mean"
    assert "model.pooling='mean':" not in capsys.readouterr().out
    # Not without a classifier (MLM continued from MLM), nor from a Hugging Face folder.
    assert init_from.default_pooling(runs[False], {"num_labels": 0}) == ("", "")
    assert init_from.default_pooling("hf:/nowhere", {"num_labels": 2}) == ("", "")


def test_the_run_states_it_in_its_first_lines(runs, tmp_path, capsys):
    c = _classify(
        runs[False],
        "--config.data.source=embedded:classify[:16]",
        "--config.steps=1",
        "--config.batch_size=8",
        f"--config.data.seq_len={L}",
        "--config.progress=false",
        "--config.write_curves=false",
    )
    run.train(c, str(tmp_path / "cls"))
    printed = capsys.readouterr().out.splitlines()
    first = next(i for i, x in enumerate(printed) if "model.pooling='mean'" in x)
    assert first < next(i for i, x in enumerate(printed) if x.startswith("config:"))
