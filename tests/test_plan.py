"""pjx.plan: a resolved config read once into typed fields, every default filled, the same
from a ConfigDict and from a plain dict with its keys (what benchmarks/gpu_bench.py builds)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pjx import config as config_lib
from pjx import grads, lora, optim, resolution
from pjx import plan as plan_lib


def _config(**kw):
    c = config_lib.base_config()
    c.model.name, c.task, c.batch_size, c.steps = "bert", "classify", 16, 7
    c.model.num_labels = 2
    for k, v in kw.items():
        config_lib.set_key(c, k, v, parse=False)
    return resolution.resolve(c)


def test_a_plain_run_reads_its_fields_with_the_defaults_filled():
    p = plan_lib.from_config(_config(**{"optimizer.lr": 3e-4, "eval_batch_size": 5}))
    assert p.model.family == "bert" and p.model.fields["num_labels"] == 2 == p.num_labels
    assert p.batch == plan_lib.Batch(rows=16, expected_rows=16, accum_steps=1, eval_rows=5)
    assert p.optimizer == {**optim.DEFAULTS, "lr": 3e-4}
    assert p.loop.steps == 7 and p.loop.length_bucket == 16 and p.loop.stall_s is None
    assert p.dp is None and not p.private and p.trainable.lora is None
    assert p.trainable.heads == lora.HEADS["bert"] and p.ema_decay == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.task = "mlm"


def test_a_private_run_reads_the_planned_batch_and_mechanism():
    """After pjx.resolution.with_privacy: the physical batch is the padded Poisson batch, the
    step's mechanism carries this start's noise."""
    c = _config(**{"dp.noise_multiplier": 1.3, "dp.l2_norm_clip": 0.5})
    with c.dp.unlocked():
        c.dp.padded_batch_size, c.dp.sampling_rate = 40, 0.01
    p = plan_lib.from_config(c)
    assert (p.batch.rows, p.batch.expected_rows, p.batch.poisson_rate) == (40, 16, 0.01)
    assert p.dp == grads.DP(
        l2_norm_clip=0.5, noise_multiplier=1.3, expected_batch_size=16, clipping="ghost"
    )
    with c.dp.unlocked():
        c.dp.sampling = "shuffle"
    assert plan_lib.from_config(c).batch.poisson_rate is None


def test_lora_and_the_moving_average_are_resolved_once():
    p = plan_lib.from_config(_config(**{"lora.rank": 4, "optimizer.ema_decay": 0.99}))
    assert p.trainable.lora == {**lora.DEFAULTS, "rank": 4} and p.ema_decay == 0.99
    with pytest.raises(ValueError, match=r"optimizer.ema_decay=1.5: .*\[0, 1\)"):
        plan_lib.from_config(_config(**{"optimizer.ema_decay": 1.5}))


def test_a_plain_dict_makes_the_same_plan_as_the_config():
    c = _config(**{"lora.rank": 2, "optimizer.accum_steps": 2})
    plain = json.loads(config_lib.to_json(c))
    a, b = plan_lib.from_config(c), plan_lib.from_config(plain)
    as_json = lambda d: json.dumps(d, sort_keys=True)  # JSON has lists where configs have tuples
    assert as_json(a.data) == as_json(b.data) and as_json(a.eval_data) == as_json(b.eval_data)
    bare = dict(config=None, data=None, eval_data=None)
    assert dataclasses.replace(a, **bare) == dataclasses.replace(b, **bare)


def test_a_restore_target_does_not_depend_on_the_privacy_plan():
    """pjx.run restores a checkpoint before it plans DP-SGD's noise and padded batch (so
    the plan continues from the step it really resumes at): the state's shapes and
    shardings must be the same before and after the privacy plan is filled in, and equal
    to what the built run restores onto."""
    import jax

    from pjx import sharding
    from pjx import train as train_lib

    c = _config(**{"dp.target_epsilon": 2.0, "optimizer.ema_decay": 0.9, "model.size": "tiny"})
    before = plan_lib.from_config(c)
    with c.dp.unlocked():
        c.dp.noise_multiplier, c.dp.padded_batch_size, c.dp.sampling_rate = 1.7, 40, 0.01
    after = plan_lib.from_config(c)
    assert (before.batch.rows, after.batch.rows) == (16, 40)
    assert before.dp.noise_multiplier != after.dp.noise_multiplier
    mesh = sharding.make_mesh(after.mesh)
    target = train_lib.state_target(before, mesh)
    built = train_lib.build(after, mesh=mesh).abstract_state
    leaves = lambda t: [(x.shape, x.dtype, x.sharding) for x in jax.tree.leaves(t)]
    assert jax.tree.structure(target) == jax.tree.structure(built)
    assert leaves(target) == leaves(built) and len(leaves(target)) > 10
