"""Mesh construction, the rules table, and sharded == single-device training."""

import re

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from pjx import config as config_lib
from pjx import plan as plan_lib
from pjx import sharding, train


def test_make_mesh_fills_minus_one():
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=-1, tensor=2)))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="needs"):
        sharding.make_mesh(ml_collections.ConfigDict(dict(data=3, fsdp=1, tensor=1)))
    with pytest.raises(ValueError, match="at most one"):
        sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=-1, tensor=1)))


def test_spec_rules_and_indivisible_fallback(capsys):
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=2)))
    assert sharding.spec_for(P("vocab", "embed"), (64, 32), mesh) == P("tensor", "fsdp")
    assert sharding.spec_for(P("embed", "mlp"), (32, 128), mesh) == P("fsdp", "tensor")
    assert sharding.spec_for(P("norm"), (32,), mesh) == P(None)
    # A mesh axis is used at most once per array.
    assert sharding.spec_for(P("embed", "embed"), (32, 32), mesh) == P("fsdp", None)
    # 63 is not divisible by tensor=2: that dim is replicated, and it is said once.
    assert sharding.spec_for(P("vocab", "embed"), (63, 32), mesh, "wte") == P(None, "fsdp")
    sharding.spec_for(P("vocab", "embed"), (63, 32), mesh, "wte")
    out = capsys.readouterr().out
    assert out.count("not divisible") == 1 and "wte" in out


def _config(mesh):
    c = config_lib.base_config()
    c.model.name, c.task = "gpt2", "clm"
    c.model.update(
        dict(
            num_layers=1,
            hidden_size=32,
            num_heads=2,
            mlp_dim=64,
            vocab_size=64,
            max_position_embeddings=16,
            dropout_rate=0.0,
            attention_dropout_rate=0.0,
        )
    )
    c.data.seq_len, c.batch_size, c.steps = 16, 8, 5
    c.optimizer.update(dict(lr=1e-2, warmup_steps=2))
    c.mesh.update(mesh)
    return c


def _batches(n=5, B=8, L=16):
    rng = np.random.RandomState(0)
    for _ in range(n):
        ids = rng.randint(0, 64, (B, L)).astype(np.int32)
        seg = (np.arange(L)[None] < rng.randint(6, L + 1, (B, 1))).astype(np.int32)
        yield {"input_ids": ids, "segment_ids": seg}


def _losses(mesh, devices, **model):
    c = _config(mesh)
    c.model.update(model)
    s = train.build(plan_lib.from_config(c), devices=devices)
    state = train.create_state(s, seed=0)
    out = []
    with sharding.context(s.mesh):
        for b in _batches():
            state, m = s.step_fn(state, sharding.global_batch(b, s.batch_sharding))
            out.append(float(m["loss"]))
    return np.array(out), state, s


@pytest.fixture(scope="module")
def reference():
    return _losses(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])[0]


@pytest.mark.parametrize(
    "mesh",
    [
        dict(data=8, fsdp=1, tensor=1),
        dict(data=2, fsdp=4, tensor=1),
        dict(data=2, fsdp=2, tensor=2),
    ],
    ids=["dp8", "dp2-fsdp4", "dp2-fsdp2-tp2"],
)
def test_sharded_losses_equal_single_device(reference, mesh):
    losses, state, s = _losses(mesh, jax.devices())
    np.testing.assert_allclose(losses, reference, rtol=1e-5)
    assert np.all(np.diff(reference) != 0)  # the run actually trains

    wte = state.params["transformer"]["wte"]["embedding"]
    fc = state.params["transformer"]["h_0"]["mlp"]["c_fc"]["kernel"]
    spec = lambda a: tuple(a.sharding.spec) + (None,) * (a.ndim - len(a.sharding.spec))
    fsdp = "fsdp" if mesh["fsdp"] > 1 else None
    tensor = "tensor" if mesh["tensor"] > 1 else None
    assert spec(wte) == (tensor, fsdp)  # ("vocab", "embed")
    assert spec(fc)[0] == fsdp and spec(fc)[-1] == tensor  # ("embed", "mlp")
    # Adam moments are sharded like their parameters (FSDP shards the optimizer too).
    mus = [x for x in jax.tree.leaves(state.opt_state) if x.shape == wte.shape]
    assert mus and all(m.sharding.spec == wte.sharding.spec for m in mus)
    if fsdp:  # FSDP really reduces the per-device bytes
        assert wte.addressable_shards[0].data.shape[1] == wte.shape[1] // mesh["fsdp"]


# ----------------------------------------------------------- the compiled step's layout
def _compiled_hlo(mesh, **model):
    """The optimised HLO text of the train step of a 3-layer GPT-2 (B=8, L=16, D=32, H=4,
    F=128) on `mesh`."""
    c = _config(mesh)
    c.model.update(dict(num_layers=3, num_heads=4, mlp_dim=128, **model))
    s = train.build(plan_lib.from_config(c), devices=jax.devices())
    batch = next(_batches(1))
    batch["position_ids"] = np.broadcast_to(np.arange(16, dtype=np.int32), (8, 16)).copy()
    return train.compile_step(s, batch).as_text(), s


def _collectives(text, op):
    """Output shapes of every `op` (e.g. "all-gather") in HLO text; tuples as one string."""
    return re.findall(rf"= (\(?[^=]*?\)?) {op}(?:-start)?\(", text)


def test_tensor_parallel_keeps_heads_and_mlp_split():
    """data=4 x tensor=2: each device holds B/4 = 2 rows; the MLP hidden layer stays split
    over tensor ([2,16,64] of F=128, never the whole [2,16,128]) and the only collectives
    on activations are Megatron's all-reduces of the block outputs [2,16,32]: two per layer
    forward, two backward."""
    text, _ = _compiled_hlo(dict(data=4, fsdp=1, tensor=2))
    assert "f32[2,16,64]" in text and "f32[2,16,128]" not in text
    reduced = [s for s in _collectives(text, "all-reduce") if s.startswith("f32[2,16,32]")]
    assert 4 * 3 <= len(reduced) <= 4 * 3 + 2, reduced


def test_fsdp_gathers_each_parameter_once_not_the_model():
    """data=2 x fsdp=4: parameters are gathered one at a time where they are used (each
    all-gather is one parameter's full shape, each sharded parameter gathered once), never
    as one gathered model."""
    text, s = _compiled_hlo(dict(data=2, fsdp=4, tensor=1))
    params = jax.tree.leaves(s.abstract_state.params)
    sharded = [p for p in params if any(a is not None for a in p.sharding.spec)]
    gathered = [g for g in _collectives(text, "all-gather") if g.startswith("f32")]
    shapes = {f"f32[{','.join(map(str, p.shape))}]" for p in params}
    assert all(g.split("{")[0] in shapes for g in gathered), gathered
    assert len(gathered) == len(sharded)


def test_scanned_fsdp_gathers_one_layer_at_a_time():
    """With scan_layers the stacked [3, ...] parameters are gathered per layer inside the
    loop: every all-gather has one layer's shape, none the stack's."""
    text, s = _compiled_hlo(dict(data=2, fsdp=4, tensor=1), scan_layers=True)
    stacked = [p for p in jax.tree.leaves(s.abstract_state.params) if p.ndim and p.shape[0] == 3]
    per_layer = {f"f32[{','.join(map(str, p.shape[1:]))}]" for p in stacked}
    gathered = {g.split("{")[0] for g in _collectives(text, "all-gather") if g.startswith("f32")}
    assert gathered & per_layer and not any(g.startswith("f32[3,") for g in gathered), gathered


@pytest.mark.parametrize("mesh", [dict(data=2, fsdp=4, tensor=1), dict(data=2, fsdp=2, tensor=2)])
def test_scanned_remat_sharded_equals_single_device(mesh):
    """A scanned, rematerialised stack on a sharded mesh trains as the plain single-device
    model does (the scanned model's own initialisation, so its own reference)."""
    kw = dict(scan_layers=True, remat="full")
    ref = _losses(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1], **kw)[0]
    np.testing.assert_allclose(_losses(mesh, jax.devices(), **kw)[0], ref, rtol=1e-5)
