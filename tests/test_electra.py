"""ELECTRA (task electra): the replaced-token-detection loss, Gumbel sampling on device, no
gradient through the sample, one shared embedding table, exact resume, sharded == one
device, and init_from handing the discriminator (not the generator) to a classifier."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from data_fixtures import ByteTok, IndexedBatches, Preempting

from pjx import config as config_lib
from pjx import convert, init_from, loop, losses, masking, resolution, run, sharding, train
from pjx import plan as plan_lib
from pjx.metrics_log import TIMING_KEYS

L, B = 16, 8
TOK = ByteTok()


def _config(task="electra", **kw):
    """A one-layer BERT of width 32 (generator width 8) over ByteTok's 262 ids."""
    c = config_lib.base_config()
    c.model.name, c.task = "bert", task
    c.model.update(
        dict(num_layers=1, hidden_size=32, num_heads=2, mlp_dim=64, max_position_embeddings=L)
    )
    c.data.seq_len, c.batch_size, c.steps, c.log_every = L, B, 4, 1
    c.optimizer.update(dict(lr=1e-3, warmup_steps=1))
    c.mesh.update(dict(data=1))
    c.progress = c.write_curves = False
    for k, v in kw.items():
        config_lib.set_key(c, k, v, parse=False)
    return c


def _batch(i, label=False):
    """Rows `[CLS] bytes [SEP]` of 4..L tokens, padded with 0."""
    rng = np.random.RandomState(i)
    lens = rng.randint(4, L + 1, B)
    ids = rng.randint(6, TOK.vocab_size, (B, L)).astype(np.int32)
    pos = np.arange(L)[None]
    ids = np.where(pos == 0, TOK.cls_id, np.where(pos == lens[:, None] - 1, TOK.sep_id, ids))
    mask = (pos < lens[:, None]).astype(np.int32)
    out = {
        "input_ids": np.where(mask == 1, ids, 0).astype(np.int32),
        "attention_mask": mask,
        "token_type_ids": np.zeros_like(mask),
        "segment_ids": mask,
        "position_ids": np.broadcast_to(pos, (B, L)).astype(np.int32),
    }
    if label:
        out = {k: out[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        out["label"] = rng.randint(0, 2, B).astype(np.int32)
    return out


def _setup(c, devices=None):
    devices = devices or jax.devices()[:1]
    return train.build(
        plan_lib.from_config(resolution.resolve(c, TOK)), tokenizer=TOK, devices=devices
    )


def _read(path):
    return [json.loads(x) for x in open(path)]


def test_rtd_loss_matches_numpy():
    rng = np.random.RandomState(0)
    logits = (rng.randn(3, 7) * 4).astype(np.float32)
    labels = rng.randint(0, 2, (3, 7))
    mask = (rng.rand(3, 7) > 0.3).astype(np.float32)
    loss, m = losses.replaced_token_detection(jnp.asarray(logits, jnp.bfloat16), labels, mask)
    x = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), np.float64)
    p = 1 / (1 + np.exp(-x))
    per = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    np.testing.assert_allclose(float(m["loss_sum"]), (per * mask).sum(), rtol=1e-5)
    np.testing.assert_allclose(float(loss), (per * mask).sum() / mask.sum(), rtol=1e-5)
    assert float(m["count"]) == mask.sum()
    assert float(m["correct"]) == (((x > 0) == (labels == 1)) * mask).sum()
    assert float(m["positives"]) == (labels * mask).sum()
    assert m["loss_sum"].dtype == jnp.float32
    # Large logits stay finite; an all-masked batch gives 0, not NaN.
    big, _ = losses.replaced_token_detection(jnp.array([300.0, -300.0]), jnp.array([0, 1]))
    np.testing.assert_allclose(float(big), 300.0)
    assert float(losses.replaced_token_detection(logits, labels, 0 * mask)[0]) == 0.0


def test_gumbel_samples_follow_the_softmax_and_labels_mark_replacements():
    logits = jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4]))
    rows = jnp.broadcast_to(logits, (20000, 4))
    draws = jax.jit(masking.gumbel_sample)(jax.random.key(0), rows)
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 20000, np.exp(logits), atol=0.01)
    hot = masking.gumbel_sample(jax.random.key(1), rows, 0.05)
    assert np.mean(np.asarray(hot) == 3) > 0.99  # a low temperature picks the argmax

    tokens = jnp.array([[10, 11, 12, 13, 14], [20, 21, 22, 23, 24]])
    positions = jnp.array([[1, 3, 0], [0, 4, 0]])  # the last slots are unused (weight 0)
    weights = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    samples = jnp.array([[99, 13, 77], [98, 24, 55]])  # 13 and 24 equal the originals
    out = jax.jit(masking.replace_tokens)(tokens, positions, samples, weights)
    np.testing.assert_array_equal(out["input_ids"], [[10, 99, 12, 13, 14], [98, 21, 22, 23, 24]])
    np.testing.assert_array_equal(out["labels"], [[0, 1, 0, 0, 0], [1, 0, 0, 0, 0]])


@pytest.fixture(scope="module")
def electra():
    """(Setup, params, batch, loss_fn(params, key)) of the tiny ELECTRA model."""
    s = _setup(_config())
    batch = jax.tree.map(jnp.asarray, _batch(0))
    loss_fn = lambda p, key: s.loss_fn(s.model, p, batch, key, train=True)
    return s, train.create_state(s, 0).params, batch, loss_fn


def test_one_step_samples_on_device_and_labels_only_masked_positions(electra, monkeypatch):
    s, params, batch, loss_fn = electra
    seen = {}  # what the step writes into the discriminator's input (traced, then returned)
    replace = masking.replace_tokens

    def spy(tokens, positions, replacements, weights):
        out = replace(tokens, positions, replacements, weights)
        seen.update(positions=positions, samples=replacements, weights=weights, **out)
        return out

    monkeypatch.setattr(masking, "replace_tokens", spy)
    lowered = jax.jit(lambda p, k: (*loss_fn(p, k), dict(seen))).lower(params, jax.random.key(3))
    assert "callback" not in lowered.as_text().lower()  # masking and sampling stay on device
    loss, mets, seen = lowered.compile()(params, jax.random.key(3))
    # The discriminator's labels: 1 exactly where a masked position got another token.
    ids, labels = np.asarray(batch["input_ids"]), np.asarray(seen["labels"])
    expected = np.zeros_like(ids)
    for r in range(B):
        for p, t, w in zip(seen["positions"][r], seen["samples"][r], seen["weights"][r]):
            if w:
                expected[r, p] = int(t != ids[r, p])
    np.testing.assert_array_equal(labels, expected)
    assert 0 < labels.sum() <= np.asarray(seen["weights"]).sum()  # a random generator replaces
    assert float(mets["replaced"]) == labels.sum()
    np.testing.assert_allclose(
        float(loss),
        mets["loss_sum"] / mets["count"] + 50.0 * mets["rtd_loss_sum"] / mets["rtd_count"],
        rtol=1e-5,
    )


def test_no_gradient_through_sampling_and_one_shared_embedding(electra):
    s, params, _, loss_fn = electra
    flat = _paths(params)
    # One [V, D] table: the discriminator's, which the generator reads and ties to.
    tables = [p for p, x in flat.items() if x.shape == (TOK.vocab_size, 32)]
    assert tables == ["bert/embeddings/word_embeddings/embedding"]
    assert not any("embeddings/" in p for p in flat if p.startswith("generator/"))
    assert flat["generator/embeddings_project/kernel"].shape == (32, 8)
    assert not any("pooler" in p for p in flat)  # ELECTRA trains none

    rtd_loss = lambda p: loss_fn(p, jax.random.key(3))[1]["rtd_loss_sum"]
    grads = _paths(jax.jit(jax.grad(rtd_loss))(params))

    def norm(prefix):  # squared norm of the gradient over the parameters under prefix
        return sum(float(jnp.sum(x**2)) for p, x in grads.items() if p.startswith(prefix))

    # The discriminator's loss reaches no generator parameter (the sample is a constant),
    # only the embeddings it shares with the generator, and its own encoder and head.
    assert norm("generator/") == 0.0
    for prefix in ("bert/embeddings/word", "bert/encoder/", "discriminator_predictions/"):
        assert norm(prefix) > 0, prefix


def test_generator_size_and_rtd_weight_come_from_the_electra_block():
    c = resolution.resolve(_config(**{"electra.generator_size": 0.5}), TOK)
    assert c.model.generator_size == 0.5 and c.task_args.rtd_weight == 50.0
    s = train.build(plan_lib.from_config(c), tokenizer=TOK, devices=jax.devices()[:1])
    kernel = s.abstract_state.params["generator"]["embeddings_project"]["kernel"]
    assert kernel.shape == (32, 16)
    with pytest.raises(config_lib.ConfigError, match="config.electra"):
        resolution.resolve(_config(**{"task_args.rtd_weight": 10.0}), TOK)
    with pytest.raises(ValueError, match="generator_size"):
        resolution.resolve(_config(**{"electra.generator_size": 0.0}), TOK)


def _electra_run(workdir, kill_at=None):
    c = _config(steps=4, eval_every=2, checkpoint_every=2)
    data = Preempting(IndexedBatches(_batch), kill_at)
    evals = [dict(_batch(100), weight=np.ones(B, np.float32))]
    return run.train(
        c, str(workdir), train_data=data, eval_data=evals, tokenizer=TOK, devices=jax.devices()[:1]
    )


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """An uninterrupted 4-step ELECTRA run: (workdir, its last metrics line)."""
    workdir = tmp_path_factory.mktemp("electra")
    return workdir, _electra_run(workdir)


def test_preempted_and_resumed_equals_uninterrupted(pretrained, tmp_path):
    ref_dir, last = pretrained
    assert {"loss", "mlm_loss", "mlm_accuracy", "rtd_loss", "rtd_accuracy"} <= set(last)
    assert 0 < last["replaced_fraction"] < 0.2
    with pytest.raises(loop.Preempted):
        _electra_run(tmp_path, kill_at=2)
    assert (tmp_path / "checkpoints" / "3").is_dir()
    _electra_run(tmp_path)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rs]
    ref = strip(_read(ref_dir / "metrics.jsonl"))
    assert strip(_read(tmp_path / "metrics.jsonl")) == ref
    assert len({r["loss"] for r in ref if r["split"] == "train"}) == 4  # it trains


def _losses(mesh, devices):
    s = _setup(_config(**{f"mesh.{k}": v for k, v in mesh.items()}), devices)
    state, out = train.create_state(s, 0), []
    with sharding.context(s.mesh):
        for i in range(3):
            state, m = s.step_fn(state, sharding.global_batch(_batch(i), s.batch_sharding))
            out.append(float(m["loss"]))
    return np.array(out)


def test_sharded_over_8_devices_equals_one_device():
    one = _losses(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    eight = _losses(dict(data=2, fsdp=2, tensor=2), jax.devices()[:8])
    np.testing.assert_allclose(eight, one, rtol=1e-5)
    assert np.all(np.diff(one) != 0)


def test_init_from_an_electra_run_gives_a_classifier_the_discriminator(
    pretrained, electra, tmp_path, capsys
):
    pre = pretrained[0]
    trained, _ = init_from.init_from(str(pre), electra[1], verbose=False)

    c = _config("classify", init_from=str(pre), steps=1, **{"model.num_labels": 2})
    resolved = resolution.resolve(c, TOK)
    assert resolved.model.generator_size == 0.0  # a plain BERT
    s = train.build(plan_lib.from_config(resolved), tokenizer=TOK, devices=jax.devices()[:1])
    params, report = init_from.init_from(str(pre), train.create_state(s, 0).params, verbose=False)
    loaded = {p for p, _ in report.loaded}
    dropped = {p for p, _ in report.dropped}
    encoder = ("bert/embeddings/", "bert/encoder/")
    assert loaded == {p for p in _paths(params) if p.startswith(encoder)}
    assert all(p.startswith(("generator/", "discriminator_predictions/")) for p in dropped)
    assert any(p.startswith("generator/encoder/") for p in dropped)
    for p, x in _paths(params).items():
        if p in loaded:
            np.testing.assert_array_equal(x, _paths(trained)[p])

    # The same through a run: its report says what it dropped.
    capsys.readouterr()
    labelled = IndexedBatches(lambda i: _batch(i, label=True))
    one = jax.devices()[:1]
    run.train(c, str(tmp_path / "cls"), train_data=labelled, tokenizer=TOK, devices=one)
    out = capsys.readouterr()
    text = out.out + out.err
    n = int(re.search(r"init_from .*: (\d+) loaded", text).group(1))
    assert n == len(loaded) and re.search(r"dropped\s+generator/", text)

    # Exported to Hugging Face, it is the discriminator's encoder, a plain BERT.
    out = convert.pjx_to_hf(str(pre), tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    back, report = init_from.init_from(f"hf:{out}", params, verbose=False)
    assert {p for p, _ in report.loaded} == loaded
    for p in loaded:
        np.testing.assert_array_equal(_paths(back)[p], _paths(trained)[p])


def _paths(tree):
    return {"/".join(k.key for k in p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}
