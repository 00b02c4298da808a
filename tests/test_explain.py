"""pjx.explain / `pjx explain`: integrated gradients satisfy completeness, padding is not
reported, and the command prints a JSON line last and writes HTML / PNG."""

import json

import jax
import numpy as np
import pytest

from pjx import cli, explain, inference, run, tasks
from pjx import config as config_lib
from pjx import data as data_lib
from pjx.examples import Examples

TEXTS = ["the cat sat on the mat", "stocks fell sharply today", "a"]
L = 32
TINY = dict(
    num_layers=1,
    hidden_size=32,
    num_heads=2,
    mlp_dim=64,
    max_position_embeddings=L,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A 2-step BERT classifier on the built-in classification data."""
    c = config_lib.base_config()
    c.model.name, c.task = "bert", "classify"
    c.model.num_labels = 2
    c.data.source, c.eval_data.source = "embedded:classify[:200]", ""
    c.data.tokenizer = "byte?specials=bert"
    c.data.seq_len, c.batch_size, c.steps, c.progress = L, 8, 2, False
    c.model.update(TINY)
    path = str(tmp_path_factory.mktemp("explain") / "run")
    run.train(c, path, devices=jax.devices()[:1])
    return path


def _encode(tok, texts):
    cfg = data_lib.default_config()
    cfg.seq_len = L
    ex = Examples(origin="text", texts=texts, labels=np.zeros(len(texts), np.int32))
    return tasks.get("classify").encode(ex, tok, cfg, {}, 0)


def _completeness(model, params, rows, i, target):
    attr_L, delta = explain.integrated_gradients(
        model,
        params,
        rows["input_ids"][i],
        rows["attention_mask"][i],
        rows["token_type_ids"][i],
        target=target,
        steps=64,
    )
    attr_L, delta = np.asarray(attr_L), float(delta)
    assert attr_L.shape == (L,)
    assert abs(attr_L.sum() - delta) <= 0.01 * abs(delta), (attr_L.sum(), delta)
    return attr_L, delta


def test_completeness_on_a_random_model(workdir):
    # The run's model with large random weights: the logit is far from linear in the
    # embeddings, a real test of the Riemann sum, not of a near-constant function. (Same
    # shapes as the trained model, so it reuses the compiled integrator.)
    model, params, tok = inference.load(workdir)
    rng = np.random.default_rng(1)  # on the host: op-by-op jax.random would compile each
    params = jax.tree.map(lambda p: p + 0.3 * rng.standard_normal(p.shape, np.float32), params)
    rows = _encode(tok, TEXTS)
    for i in range(len(TEXTS)):
        for target in (0, 1):
            attr_L, delta = _completeness(model, params, rows, i, target)
            assert abs(delta) > 1e-2  # a gap worth attributing
        # Padding (the pad id, like the baseline) gets exactly nothing.
        assert np.all(attr_L[rows["attention_mask"][i] == 0] == 0.0)


def test_explain_reports_only_the_text_and_sums_to_the_logit_gap(workdir):
    results = explain.explain(workdir, TEXTS, steps=64)
    assert len(results) == len(TEXTS)
    for text, r in zip(TEXTS, results):
        # [CLS] text [SEP] (byte tokens): no padding position is reported.
        assert r["tokens"] == ["[CLS]", *text, "[SEP]"]
        assert len(r["attributions"]) == len(r["tokens"])
        assert abs(sum(r["attributions"]) - r["delta"]) <= 0.01 * abs(r["delta"])
        assert abs(r["completeness_gap"]) <= 0.01 * abs(r["delta"])
        assert set(r["probabilities"]) == {"0", "1"}
        assert abs(sum(r["probabilities"].values()) - 1.0) < 1e-5
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
        assert r["probability"] == r["probabilities"][r["label"]]
    with pytest.raises(ValueError, match="at least 2"):
        explain.explain(workdir, TEXTS[:1], steps=1)


def test_cli_prints_a_line_per_text_then_json_and_writes_html(workdir, tmp_path, capsys):
    out = tmp_path / "why.html"
    argv = ["explain", workdir, "--text", TEXTS[0], "--text", TEXTS[1], "--out", str(out)]
    capsys.readouterr()
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    last = json.loads(lines[-1])
    assert last["steps"] == 64 and last["out"] == str(out)
    assert len(last["results"]) == 2
    for r in last["results"]:
        assert {"tokens", "attributions", "label", "probabilities", "completeness_gap"} <= set(r)
    assert lines[-3].startswith(f"{last['results'][0]['label']} (p=")
    page = out.read_text()
    assert page.count("<figure>") == 2 and "predicted <b>" in page and "background:rgba(" in page
    assert cli.main(["explain", workdir, "--text", "<b>", "--out", str(out)]) == 0
    assert "&lt;" in out.read_text() and "<b>" not in out.read_text().split("<body>")[1][:200]


def test_cli_explains_a_source_into_a_png(workdir, tmp_path, capsys):
    out = tmp_path / "why.png"
    capsys.readouterr()
    argv = ["explain", workdir, "--source", "embedded:classify[:2]", "--out", str(out)]
    assert cli.main(argv) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(last["results"]) == 2
    # The source names its classes and carries true labels.
    assert all(r["true_label"] in ("syntax", "objects") for r in last["results"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_input_is_exit_2(workdir, tmp_path, capsys):
    assert cli.main(["explain", workdir, "--text", "x", "--out", str(tmp_path / "a.txt")]) == 2
    assert "write a .html or a .png" in capsys.readouterr().err
    assert cli.main(["explain", str(tmp_path / "none"), "--text", "x"]) == 2
    assert capsys.readouterr().err.startswith("pjx explain: error:")
