"""`pjx eval` / `pjx predict` (pjx.evaluation): metrics on another source equal a
per-example reference, padding never counts, predictions come in input order."""

import json

import jax
import numpy as np
import pytest

from pjx import cli, evaluation, explain, optim, run, tasks
from pjx import config as config_lib
from pjx import data as data_lib
from pjx.data import sources

L = 32
TINY = dict(
    num_layers=1, hidden_size=32, num_heads=2, mlp_dim=64, max_position_embeddings=L,
    dropout_rate=0.0, attention_dropout_rate=0.0,
)  # fmt: skip
HELD_OUT = "embedded:classify[200:237]"  # 37 rows: not a multiple of any batch size


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    c = config_lib.base_config()
    c.model.name, c.task = "bert", "classify"
    c.model.num_labels = 2
    c.data.source, c.eval_data.source = "embedded:classify[:200]", ""
    c.data.tokenizer = "byte?specials=bert"
    c.data.seq_len, c.batch_size, c.eval_batch_size, c.steps = L, 8, 16, 6
    c.optimizer.lr, c.progress = 1e-3, False
    c.model.update(TINY)
    path = str(tmp_path_factory.mktemp("evaluation") / "run")
    run.train(c, path, devices=jax.devices()[:1])
    return path


def _reference_probs(workdir, uri):
    """Class probabilities one example at a time, straight from the model."""
    model, params, tok, _ = explain.load(workdir)
    ex = sources.read(uri, data_lib.with_defaults({"source": uri}), need_labels=True)
    cfg = data_lib.default_config()
    cfg.seq_len = L
    rows = tasks.get("classify").encode(ex, tok, cfg, {}, 0)
    probs = []
    for i in range(len(ex.texts)):
        batch = {k: rows[k][i : i + 1] for k in ("input_ids", "attention_mask", "token_type_ids")}
        logits = tasks.get("classify").logits(model, params, batch)
        probs.append(np.asarray(jax.nn.softmax(logits[0])))
    return np.asarray(probs), np.asarray(ex.labels)


def test_eval_metrics_equal_a_per_example_reference(classifier, capsys):
    probs, labels = _reference_probs(classifier, HELD_OUT)
    pred = probs.argmax(-1)
    want = np.zeros((2, 2), int)
    np.add.at(want, (labels, pred), 1)
    assert cli.main(["eval", classifier, "--source", HELD_OUT]) == 0
    out = capsys.readouterr().out
    got = json.loads(out.strip().splitlines()[-1])
    assert got["examples"] == 37 and got["confusion_matrix"] == want.tolist()
    assert got["accuracy"] == pytest.approx(np.mean(pred == labels), abs=1e-6)
    nll = -np.log(probs[np.arange(37), labels]).mean()
    assert got["loss"] == pytest.approx(nll, rel=1e-4)
    assert got["labels"] == ["syntax", "objects"] and "confusion (rows: true label" in out
    # Another batch size pads differently; the metrics do not change.
    again = evaluation.evaluate(classifier, HELD_OUT, ["--config.eval_batch_size=8"])
    assert again["confusion_matrix"] == got["confusion_matrix"]
    assert again["loss"] == pytest.approx(got["loss"], rel=1e-5)


def test_scoring_builds_no_optimizer(classifier, monkeypatch):
    """`pjx eval` needs the model, its loss and the parameters, never an optimizer or a
    train state: it scores with the optimizer's constructor broken, and the same metrics."""
    want = evaluation.evaluate(classifier, HELD_OUT)

    def no_optimizer(*a, **k):
        raise AssertionError("scoring built an optimizer")

    monkeypatch.setattr(optim, "make", no_optimizer)
    assert evaluation.evaluate(classifier, HELD_OUT) == want


def test_predict_writes_one_line_per_example_in_input_order(classifier, tmp_path, capsys):
    probs, _ = _reference_probs(classifier, HELD_OUT)
    out = tmp_path / "preds" / "p.jsonl"
    assert cli.main(["predict", classifier, "--source", HELD_OUT, "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"] == 37
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 37 and not (tmp_path / "preds" / "p.jsonl.partial").exists()
    got = np.asarray([[r["probabilities"][n] for n in ("syntax", "objects")] for r in lines])
    np.testing.assert_allclose(got, probs, atol=1e-5)
    assert [r["label_id"] for r in lines] == probs.argmax(-1).tolist()


def test_eval_bad_input_is_a_clear_error(classifier, tmp_path, capsys):
    assert cli.main(["eval", str(tmp_path / "nothing"), "--source", HELD_OUT]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    assert cli.main(["eval", classifier, "--source", "tsv:/no/such.tsv"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_language_model_eval_and_predict(tmp_path, capsys):
    c = config_lib.base_config()
    c.model.name, c.task = "gpt2", "clm"
    c.model.update(dict(TINY, dropout_rate=0.0))
    c.data.source, c.eval_data.source = "embedded[:10%]", "embedded[:10%]"
    c.data.tokenizer = "byte?specials=gpt2"
    c.data.seq_len, c.batch_size, c.eval_batch_size, c.steps, c.progress = 16, 4, 8, 2, False
    workdir = str(tmp_path / "lm")
    last = run.train(c, workdir, devices=jax.devices()[:1])
    got = evaluation.evaluate(workdir, "embedded[:10%]")
    assert got["loss"] == pytest.approx(last["loss"], rel=1e-5)  # the run's own eval
    assert got["perplexity"] == pytest.approx(np.exp(got["loss"]), rel=1e-4)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat\nstocks fell\n")
    out = tmp_path / "gen.jsonl"
    argv = ["predict", workdir, "--source", f"text:{prompts}", "--out", str(out)]
    assert cli.main([*argv, "--max-new-tokens", "5"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in lines] == ["the cat", "stocks fell"]
    assert all(r["text"].startswith(r["prompt"]) for r in lines)


def test_seq2seq_exact_match_and_predict_equal_greedy_generation(tmp_path):
    """T5 on the built-in labelled sentences as text-to-text (targets: the label names):
    exact match is the share of examples whose greedy generation is the target."""
    from pjx.models import t5

    c = config_lib.base_config()
    c.model.name, c.task = "t5", "seq2seq"
    c.model.update(dict(num_layers=1, hidden_size=32, num_heads=2, mlp_dim=64, head_dim=16))
    c.data.source, c.eval_data.source = "embedded:classify[:64]", ""
    c.data.tokenizer = "byte?specials=t5"
    c.data.seq_len, c.data.target_len = 32, 8
    c.batch_size, c.eval_batch_size, c.steps, c.progress = 8, 16, 3, False
    c.optimizer.lr = 3e-3
    workdir = str(tmp_path / "t5")
    run.train(c, workdir, devices=jax.devices()[:1])
    uri = "embedded:classify[64:83]"  # 19 examples
    got = evaluation.evaluate(workdir, uri)
    loaded = evaluation.Loaded(workdir, uri)
    tok, params = loaded.tokenizer, jax.device_get(loaded.params)
    gen = jax.jit(lambda x, m: t5.generate(loaded.setup.model, params, x, m, max_new_tokens=8))
    hits, n = 0, 0
    for batch in loaded.batches():
        for i in np.flatnonzero(np.asarray(batch["weight"]) > 0):
            x, m = batch["input_ids"][i : i + 1], batch["attention_mask"][i : i + 1]
            out = np.asarray(gen(x, m))[0]  # one example at a time
            cut = lambda ids: [t for t in ids[: list(ids).index(tok.eos_id)] if t != tok.pad_id] \
                if tok.eos_id in list(ids) else [t for t in ids if t != tok.pad_id]  # fmt: skip
            hits += cut(out.tolist()) == cut(batch["labels"][i].tolist())
            n += 1
    assert got["examples"] == n == 19
    assert got["exact_match"] == pytest.approx(hits / n)
    out = tmp_path / "gen.jsonl"
    evaluation.predict(workdir, uri, out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 19 and {r["target"] for r in lines} <= {"syntax", "objects"}
