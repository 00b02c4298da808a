"""optimizer.ema_decay: the parameters' moving average follows its formula step by step,
leaves frozen parameters alone, is what a run evaluates and releases, and resumes exactly."""

import os

import float32
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from data_fixtures import IndexedBatches, Preempting

from pjx import checkpoint, loop, resolution, run, sharding, train
from pjx import config as config_lib
from pjx import plan as plan_lib
from pjx.checkpoint.saved import Saved

VOCAB, L, B = 32, 8, 4


def _config(**kw):
    c = config_lib.base_config()
    c.model.name, c.task = "bert", "classify"
    c.model.update(
        dict(num_layers=1, hidden_size=32, num_heads=2, mlp_dim=64, vocab_size=VOCAB, num_labels=2)
    )
    c.data.seq_len, c.batch_size, c.steps, c.log_every = L, B, 4, 1
    c.optimizer.update(dict(lr=1e-2, warmup_steps=0, ema_decay=0.6))
    c.mesh.update(dict(data=1))
    c.progress = False
    for k, v in kw.items():
        config_lib.set_key(c, k, v, parse=False)
    return c


def _batch(i):
    rng = np.random.RandomState(i)
    ids = rng.randint(5, VOCAB, (B, L)).astype(np.int32)
    return {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
        "label": rng.randint(0, 2, B).astype(np.int32),
    }


def _batches(kill_at=None):
    return Preempting(IndexedBatches(_batch), kill_at)


def _one_device():
    return jax.devices()[:1]


def _saved_state(workdir, step):
    """The train state a checkpoint holds, as host arrays."""
    return ocp.PyTreeCheckpointer().restore(
        checkpoint.resolve(os.path.join(workdir, "checkpoints", str(step))) / "state"
    )


def _flat(tree):
    return {
        checkpoint.path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
    }


def test_moving_average_follows_its_formula_and_skips_frozen_leaves():
    s = train.build(
        plan_lib.from_config(_config(**{"optimizer.freeze": "^bert/embeddings"})),
        devices=_one_device(),
    )
    state = train.create_state(s, 0)
    initial = _flat(jax.device_get(state.params))
    want = dict(initial)
    with sharding.context(s.mesh):
        for t in range(1, 5):
            batch = sharding.global_batch(_batch(t), s.batch_sharding)
            state, _ = s.step_fn(state, batch)
            d = min(0.6, (1 + t) / (10 + t))  # the warmed-up decay after t updates
            params = _flat(jax.device_get(state.params))
            want = {k: d * want[k] + (1 - d) * params[k] for k in want}
    got, params = _flat(jax.device_get(state.ema)), _flat(jax.device_get(state.params))
    assert got.keys() == want.keys()
    for k in want:
        float32.assert_close(got[k], want[k], rtol=1e-5, err_msg=k)
        if k.startswith("bert/embeddings"):  # frozen: never moves, nor does its average
            np.testing.assert_array_equal(got[k], initial[k], err_msg=k)
    moved = [k for k in want if not k.startswith("bert/embeddings")]
    assert all(not np.allclose(got[k], params[k]) for k in moved if "kernel" in k)


def test_run_evaluates_and_releases_the_average(tmp_path):
    c = _config(steps=4)
    workdir = str(tmp_path / "run")
    eval_batches = [{**_batch(100 + i), "weight": np.ones((B,), np.float32)} for i in range(2)]
    last = run.train(
        c, workdir, train_data=_batches(), eval_data=eval_batches, devices=_one_device()
    )
    saved = _saved_state(workdir, 4)
    ema, params = _flat(saved["ema"]), _flat(saved["params"])
    # What pjx eval / predict / convert / init_from read: the average, not the last step.
    released = _flat(Saved(workdir).params(merged=False))
    assert released.keys() == ema.keys()
    for k in ema:
        np.testing.assert_array_equal(released[k], ema[k], err_msg=k)
    assert any(not np.allclose(ema[k], params[k]) for k in ema)
    # The run's own eval line scored the average.
    s = train.build(plan_lib.from_config(resolution.resolve(c)), devices=_one_device())
    as_tree = lambda tree: jax.device_put(tree, s.state_shardings.params)  # noqa: E731
    on_ema = train.evaluate(s, as_tree(saved["ema"]), eval_batches)
    on_params = train.evaluate(s, as_tree(saved["params"]), eval_batches)
    assert last["split"] == "eval"
    assert last["loss"] == pytest.approx(on_ema["loss"], rel=1e-6)
    assert abs(on_ema["loss"] - on_params["loss"]) > 1e-4


def test_preempted_and_resumed_average_equals_uninterrupted(tmp_path):
    c = _config(steps=5, checkpoint_every=2)
    kw = dict(eval_data=None, devices=_one_device())
    run.train(c, str(tmp_path / "ref"), train_data=_batches(), **kw)
    workdir = str(tmp_path / "run")
    with pytest.raises(loop.Preempted):
        run.train(c, workdir, train_data=_batches(kill_at=2), **kw)
    run.train(c, workdir, train_data=_batches(), **kw)
    ref, got = _saved_state(str(tmp_path / "ref"), 5), _saved_state(workdir, 5)
    for key in ("ema", "params"):
        a, b = _flat(ref[key]), _flat(got[key])
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{key}/{k}")


def test_turning_the_average_on_at_resume_is_refused(tmp_path):
    workdir = str(tmp_path / "run")
    kw = dict(eval_data=None, devices=_one_device())
    run.train(
        _config(steps=2, **{"optimizer.ema_decay": 0.0}), workdir, train_data=_batches(), **kw
    )
    with pytest.raises(checkpoint.CheckpointMismatch, match="ema"):
        run.train(_config(steps=4), workdir, train_data=_batches(), **kw)


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_a_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValueError, match=r"optimizer.ema_decay=.*\[0, 1\)"):
        train.build(
            plan_lib.from_config(_config(**{"optimizer.ema_decay": decay})), devices=_one_device()
        )
