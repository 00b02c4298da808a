"""pjx.checkpoint.saved: one reader of a saved model. A workdir, its checkpoints dir and a
step dir read the same run; parameters come in any layer layout; LoRA-merged parameters
give the adapted model's logits (from a pjx run and from a PEFT adapter alike); a Hugging
Face folder reads like a run; a bad source says what it is and what to pass."""

import json
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

from pjx import cli, convert, evaluation, hf, init_from, lora, models, resolution, run, tokenizers
from pjx import config as config_lib
from pjx.checkpoint.saved import Saved

L = 16
TINY = dict(
    num_layers=2, hidden_size=32, num_heads=2, mlp_dim=64, max_position_embeddings=L,
    dropout_rate=0.0, attention_dropout_rate=0.0,
)  # fmt: skip
QUERY = "attention/self/query/kernel"
RANK4 = dict(lora.DEFAULTS, rank=4, alpha=8.0)


def flat(tree) -> dict:
    return traverse_util.flatten_dict(tree, sep="/")


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 200, (2, L)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, -5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _logits(model, params, batch):
    return np.asarray(jax.jit(model.apply)({"params": params}, **batch)["logits"])


@pytest.fixture(scope="module")
def scanned_run(tmp_path_factory):
    """A 1-step BERT classifier trained with scanned layers (stacked [2, ...] parameters)."""
    c = config_lib.base_config()
    c.model.name, c.task = "bert", "classify"
    c.model.num_labels = 2
    c.model.update(dict(TINY, scan_layers=True))
    c.data.source, c.eval_data.source = "embedded:classify[:40]", ""
    c.data.tokenizer = "byte?specials=bert"
    c.data.seq_len, c.batch_size, c.steps, c.progress = L, 8, 1, False
    path = tmp_path_factory.mktemp("saved") / "run"
    run.train(c, str(path), devices=jax.devices()[:1])
    return path


def test_a_workdir_its_checkpoints_and_a_step_dir_read_the_same_run(scanned_run):
    steps = [p for p in (scanned_run / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(steps) == 1
    step = steps[0].absolute()
    sources = [Saved(scanned_run), Saved(scanned_run / "checkpoints"), Saved(step)]
    for s in sources:
        assert s.kind == "pjx" and s.path == step
        assert s.raw_config == sources[0].raw_config
    saved = sources[0]
    assert saved.raw_config["task"] == "classify" and saved.lora == {}
    c = saved.config  # resolved, parameters from the run itself
    assert (c.task, c.model.num_labels, c.init_from) == ("classify", 2, "")
    assert c.model.scan_layers
    assert saved.config is c  # read once
    assert saved.tokenizer_dir == step / "tokenizer"
    tok = tokenizers.load("byte?specials=bert")
    assert saved.tokenizer.vocab_size == tok.vocab_size
    assert saved.tokenizer.encode("the cat") == tok.encode("the cat")
    assert (saved.family, saved.fields["num_labels"]) == ("bert", 2)
    want = flat(saved.params())
    for s in sources[1:]:
        got = flat(s.params())
        assert set(got) == set(want)
        for p, x in want.items():
            np.testing.assert_array_equal(got[p], x, err_msg=p)
    # The overrides change the config, not the saved run.
    assert Saved(scanned_run, ["eval_batch_size=3"]).config.eval_batch_size == 3
    assert saved.config.eval_batch_size != 3


def test_params_come_in_the_layout_asked_for(scanned_run):
    saved = Saved(scanned_run)
    stacked = flat(saved.params())
    assert stacked[f"bert/encoder/layer/{QUERY}"].shape == (2, 32, 2, 16)  # [layers, D, H, K]
    unscanned = models.create("bert", "tiny", **{**saved.fields, "scan_layers": False})
    inputs = models.example_inputs("bert", unscanned.config, 1)
    like = jax.eval_shape(lambda: unscanned.init(jax.random.key(0), **inputs)["params"])
    per_layer = saved.params(like=like)
    for i in range(2):
        np.testing.assert_array_equal(
            flat(per_layer)[f"bert/encoder/layer_{i}/{QUERY}"],
            stacked[f"bert/encoder/layer/{QUERY}"][i],
        )
    batch = _batch()
    np.testing.assert_allclose(
        _logits(unscanned, per_layer, batch),
        _logits(saved.model, saved.params(), batch),
        atol=1e-5,
    )


def _lora_workdir(run_dir: Path, base: Path, dst: Path):
    """A LoRA classifier's checkpoint on the Hugging Face classifier `base` (written from
    `run_dir`, whose tokenizer it keeps): random adapters (B = 0 would hide any mistake in
    merging) and a random head."""
    c = config_lib.base_config()
    c.model.name, c.task, c.init_from = "bert", "classify", f"hf:{base}"
    c.model.num_labels = 2
    c.lora.update(RANK4)
    c.data.seq_len, c.batch_size = L, 8
    tokenizer_dir = Saved(run_dir).tokenizer_dir
    c = resolution.resolve(c, tokenizers.load(str(tokenizer_dir)))
    fields = {k: v for k, v in c.model.items() if k not in ("name", "size")}
    model = lora.adapted(models.create("bert", "tiny", **fields), c.lora.to_dict(), "bert")
    inputs = models.example_inputs("bert", model.config, 1, 8)
    fresh = nn.meta.unbox(model.init(jax.random.key(0), **inputs))["params"]
    params, _ = init_from.init_from(f"hf:{base}", fresh, verbose=False)
    rng = np.random.default_rng(1)
    f = {p: np.asarray(x) for p, x in flat(params).items()}
    for p, x in f.items():
        if lora.is_adapter(p) or p.startswith("classifier/"):
            f[p] = rng.normal(0, 0.3, x.shape).astype(np.float32)
    params = traverse_util.unflatten_dict(f, sep="/")
    convert.write_workdir(dst, params, c.to_dict(), tokenizer_dir)
    return f


def test_lora_merged_params_give_the_adapted_models_logits(scanned_run, tmp_path):
    base = convert.pjx_to_hf(scanned_run, tmp_path / "base")
    written = _lora_workdir(scanned_run, base, tmp_path / "lora")
    saved = Saved(tmp_path / "lora")
    assert saved.lora["rank"] == 4 and saved.lora["alpha"] == 8.0
    unmerged = saved.params(merged=False)
    assert set(flat(unmerged)) == set(written)
    for p, x in written.items():
        np.testing.assert_array_equal(flat(unmerged)[p], x, err_msg=p)
    merged = saved.params()
    assert not any(lora.is_adapter(p) for p in flat(merged))
    batch = _batch(1)
    want = _logits(saved.adapted, unmerged, batch)
    np.testing.assert_allclose(_logits(saved.model, merged, batch), want, atol=1e-5)
    plain = {p: x for p, x in written.items() if not lora.is_adapter(p)}
    without = _logits(saved.model, traverse_util.unflatten_dict(plain, sep="/"), batch)
    assert np.abs(without - want).max() > 1e-3  # the adapters matter

    # The same adapter as a PEFT folder, read on its base model, merges to the same.
    convert.to_peft(tmp_path / "lora", tmp_path / "adapter")
    peft = Saved(f"peft:{tmp_path / 'adapter'}")
    assert peft.kind == "peft" and (peft.lora["rank"], peft.lora["alpha"]) == (4, 8.0)
    assert peft.tokenizer_dir == base.resolve()
    got = flat(peft.params())
    assert set(got) == set(flat(merged))
    for p, x in flat(merged).items():
        np.testing.assert_allclose(got[p], x, atol=1e-6, err_msg=p)

    # merge-lora writes a plain run with exactly these parameters.
    convert.merge_lora(tmp_path / "lora", tmp_path / "merged")
    plain_run = Saved(tmp_path / "merged")
    assert plain_run.lora == {} and plain_run.raw_config["lora"]["rank"] == 0
    for p, x in flat(plain_run.params(merged=False)).items():
        np.testing.assert_array_equal(x, flat(merged)[p], err_msg=p)


def test_a_lora_run_its_merged_run_and_its_peft_adapter_score_the_same(scanned_run, tmp_path):
    base = convert.pjx_to_hf(scanned_run, tmp_path / "base")
    _lora_workdir(scanned_run, base, tmp_path / "lora")
    convert.merge_lora(tmp_path / "lora", tmp_path / "merged")
    convert.to_peft(tmp_path / "lora", tmp_path / "adapter")
    uri = "embedded:classify[40:63]"
    want = evaluation.evaluate(tmp_path / "lora", uri)
    assert want["examples"] == 23
    for source, overrides in (
        (tmp_path / "merged", ()),
        (f"peft:{tmp_path / 'adapter'}", [f"--config.data.seq_len={L}"]),  # HF: no seq_len
    ):
        got = evaluation.evaluate(source, uri, overrides)
        assert got["confusion_matrix"] == want["confusion_matrix"], source
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5), source


def test_a_hugging_face_classifier_folder_reads_like_a_run(scanned_run, tmp_path):
    folder = convert.pjx_to_hf(scanned_run, tmp_path / "hf")
    raw = json.loads((folder / "config.json").read_text())
    assert raw["architectures"] == ["BertForSequenceClassification"]
    raw["id2label"] = {"0": "negative", "1": "positive"}
    (folder / "config.json").write_text(json.dumps(raw))
    saved, run_ = Saved(f"hf:{folder}"), Saved(scanned_run)
    assert saved.kind == "hf" and saved.path == folder and saved.raw_config == {}
    c = saved.config
    assert (c.task, c.model.name, c.model.num_labels) == ("classify", "bert", 2)
    assert c.init_from == f"hf:{folder}" and list(c.data.labels) == ["negative", "positive"]
    assert saved.label_names() == ["negative", "positive"]
    assert saved.tokenizer.encode("a b") == run_.tokenizer.encode("a b")
    # The same parameters, read into the run's scanned layout.
    got = flat(saved.params(like=run_.params()))
    for p, x in flat(run_.params()).items():
        np.testing.assert_allclose(got[p], x, atol=1e-6, err_msg=p)


def test_a_pretrained_hugging_face_model_without_a_head(minilm_dir):
    path = minilm_dir
    saved = Saved(f"hf:{path}")
    assert (saved.family, saved.model.config.hidden_size) == ("bert", 384)
    assert saved.tokenizer.vocab_size == 30522 and saved.tokenizer_dir == path
    assert saved.lora == {}
    got, want = flat(saved.params()), flat(hf.load_params(path))
    assert set(got) == set(want)
    for p in (f"bert/encoder/layer_5/{QUERY}", "bert/embeddings/word_embeddings/embedding"):
        np.testing.assert_array_equal(got[p], want[p])
    with pytest.raises(ValueError, match="no head pjx can score"):
        _ = saved.config


def test_a_bad_source_says_what_it_is_and_what_to_pass(scanned_run, tmp_path, capsys):
    missing = Saved(tmp_path / "nothing")  # reading is lazy: nothing fails yet
    with pytest.raises(FileNotFoundError, match="does not exist: no complete checkpoint.*hf:DIR"):
        _ = missing.config
    with pytest.raises(FileNotFoundError, match="pass hf:bert-base-nothing"):
        _ = Saved("bert-base-nothing").path
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint found.*checkpoint_every"):
        Saved(tmp_path / "empty").params()
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a saved run"):
        _ = Saved(tmp_path / "file.txt").tokenizer
    folder = convert.pjx_to_hf(scanned_run, tmp_path / "hf")
    with pytest.raises(FileNotFoundError, match=f"Hugging Face model folder: pass hf:{folder}"):
        _ = Saved(folder).model
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="PEFT adapter folder: pass peft:"):
        _ = Saved(tmp_path / "adapter").lora
    with pytest.raises(FileNotFoundError, match="Hugging Face model folder not found"):
        _ = Saved(f"hf:{tmp_path / 'nothing'}").model
    # A model written by pjx convert has parameters but no task to rebuild a run with.
    convert.hf_to_pjx(folder, tmp_path / "converted")
    converted = Saved(tmp_path / "converted")
    assert flat(converted.params()).keys() == flat(Saved(f"hf:{folder}").params()).keys()
    with pytest.raises(ValueError, match="names no task.*hf:DIR"):
        _ = converted.config
    # On the command line: one line on stderr, exit code 2.
    assert cli.main(["eval", str(folder), "--source", "embedded:classify[:4]"]) == 2
    assert f"pass hf:{folder}" in capsys.readouterr().err
