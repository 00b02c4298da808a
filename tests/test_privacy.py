"""DP-SGD (pjx.privacy): per-example clipping against a loop of plain jax.grad, noise
statistics, accounting against dp_accounting and jax_privacy's published numbers, Poisson
batches, sharded == single device, accumulation, exact resume, refusals, `pjx privacy`."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import flax.linen as nn
import float32
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pjx import (
    cli,
    ghost_clipping,
    grads,
    lora,
    models,
    privacy,
    resolution,
    run,
    sharding,
    tasks,
    tokenizers,
    train,
)
from pjx import config as config_lib
from pjx import plan as plan_lib
from pjx.data import pipeline
from pjx.metrics_log import TIMING_KEYS
from pjx.privacy import accounting

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
B, L = 6, 12


def _bert():
    model = models.create(
        "bert", "tiny", num_layers=1, hidden_size=32, num_heads=2, mlp_dim=64, vocab_size=50,
        max_position_embeddings=L, num_labels=3, mlm_head=False, dropout_rate=0.0,
        attention_dropout_rate=0.0,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    batch = {
        "input_ids": jnp.asarray(rng.integers(5, 50, (B, L)), jnp.int32),
        "attention_mask": jnp.ones((B, L), jnp.int32),
        "token_type_ids": jnp.zeros((B, L), jnp.int32),
        "label": jnp.asarray(rng.integers(0, 3, (B,)), jnp.int32),
        "weight": jnp.asarray([1, 1, 1, 1, 0, 0], jnp.float32),  # two padding rows
    }
    return model, batch, "classify"


def _gpt2():
    model = models.create(
        "gpt2",
        "tiny",
        num_layers=1,
        hidden_size=32,
        num_heads=2,
        mlp_dim=64,
        vocab_size=50,
        max_position_embeddings=L,
    )  # fmt: skip (dropout on: per-example keys are part of what is tested)
    rng = np.random.default_rng(1)
    seg = np.ones((B, L), np.int32)
    seg[1, 7:] = 2  # a packed second document
    seg[2, 9:] = 0  # padding inside a row
    batch = {
        "input_ids": jnp.asarray(rng.integers(0, 50, (B, L)), jnp.int32),
        "segment_ids": jnp.asarray(seg),
        "position_ids": jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L)),
        "weight": jnp.asarray([1, 1, 1, 1, 1, 0], jnp.float32),
    }
    return model, batch, "clm"


def _loss_fn(model, task):
    t = tasks.get(task)
    args = t.runtime_args(t.args({}), None, model.config)
    return lambda p, b, r: t.loss(model, p, b, r, train=True, **args)


def _init(model, batch):
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    return nn.meta.unbox(model.init(jax.random.key(0), **inputs)["params"])


def _bert_lora():
    """LoRA on the query / value kernels: frozen base, trainable adapters and classifier."""
    model, batch, task = _bert()
    cfg = dict(lora.DEFAULTS, rank=2)
    return lora.adapted(model, cfg, "bert"), batch, task, cfg


CLIPPED_CASES = {
    "bert-classifier-ghost": (_bert, dict(clipping="ghost")),
    "bert-classifier-vmap": (_bert, dict(clipping="vmap")),
    "gpt2-lm-ghost-microbatched": (_gpt2, dict(clipping="ghost", microbatch_size=2)),
    "gpt2-lm-vmap": (_gpt2, dict(clipping="vmap")),
    "bert-lora-ghost": (_bert_lora, dict(clipping="ghost")),
}


@pytest.mark.parametrize("case", list(CLIPPED_CASES))
def test_clipped_sum_equals_a_loop_of_per_example_gradients(case):
    """The privacy unit is one example (a sentence, a sequence): its gradient, clipped to C,
    summed; rows with weight 0 (padding) add nothing. Ghost clipping (norms from layer
    inputs and output gradients) and vmapped per-example gradients agree with the loop."""
    make, kw = CLIPPED_CASES[case]
    model, batch, task, *lora_cfg = make()
    params, fn, C = _init(model, batch), _loss_fn(model, task), 0.05
    if lora_cfg:
        trainable = lora.trainable(params, lora_cfg[0], "bert")
        params = jax.tree.map(  # B = 0 would hide a wrong low-rank path
            lambda x: x + 0.3 * jax.random.normal(jax.random.key(2), x.shape), params
        )
    else:
        trainable = jax.tree.map(lambda _: True, params)
    rng = jax.random.key(7)
    dp = grads.DP(l2_norm_clip=C, noise_multiplier=0.0, expected_batch_size=1, **kw)
    _, _, got = jax.jit(lambda p: grads.gradients(fn, p, batch, rng, trainable=trainable, dp=dp))(
        params
    )
    k_examples, _ = jax.random.split(rng)

    def clipped(i):  # plain jax.grad of example i alone, clipped over what trains
        example = jax.tree.map(lambda x: x[i : i + 1], batch)
        g = jax.grad(lambda p: fn(p, example, jax.random.fold_in(k_examples, i))[0])(params)
        g = jax.tree.map(lambda x, t: x if t else jnp.zeros_like(x), g, trainable)
        return jax.tree.map(lambda x: x * jnp.minimum(1.0, C / optax.global_norm(g)), g)

    want = jax.tree.map(lambda *gs: sum(gs), *[clipped(i) for i in range(B)])
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert 0 < optax.global_norm(got) <= C * 5 + 1e-5  # 4 or 5 real examples, each <= C


def test_ghost_clipping_covers_every_kernel_and_lookup_table():
    """The fast path is really taken: per-example gradients are formed only for the norms
    (and, under LoRA, the adapters), never for a kernel or an embedding table."""
    model, batch, task = _bert()
    params, fn = _init(model, batch), _loss_fn(model, task)
    flat = [jax.tree_util.keystr(p, simple=True, separator="/")
            for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]  # fmt: skip
    covered = ghost_clipping.covered_paths(fn, params, [True] * len(flat), batch, jax.random.key(0))
    assert covered == {p for p in flat if "LayerNorm" not in p and "layer_norm" not in p}
    gpt2, gbatch, gtask = _gpt2()
    gparams = _init(gpt2, gbatch)
    leaves = jax.tree_util.tree_flatten_with_path(gparams)[0]
    gcovered = ghost_clipping.covered_paths(
        _loss_fn(gpt2, gtask), gparams, [True] * len(leaves), gbatch, jax.random.key(0)
    )
    # The tied token embedding is used twice (input and logits): per-example gradients.
    assert "transformer/wte/embedding" not in gcovered
    assert any(p.endswith("c_fc/kernel") for p in gcovered)


@pytest.mark.parametrize("n_rows", [4, 64])  # 64 rows: the Gram form; 4: each a^T b itself
def test_gram_norm_of_layers_sharing_an_input_equals_their_weight_gradients(n_rows):
    """Query / key / value read one input a: their summed squared per-example weight-gradient
    norms, sum_k ||a^T b_k||^2, come from one Gram matrix of a (or from each a^T b_k)."""
    k = jax.random.split(jax.random.key(0), 4)
    a = jax.random.normal(k[0], (3, n_rows, 8))
    bs = [jax.random.normal(kk, (3, n_rows, o)) for kk, o in zip(k[1:], (8, 8, 16))]
    got = ghost_clipping._gram_sq_norm(a, bs)
    want = sum(np.sum(np.einsum("bni,bno->bio", a, b) ** 2, axis=(1, 2)) for b in bs)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_huge_clip_and_no_noise_is_the_plain_gradient():
    """With C huge and sigma 0, the DP gradient (sum / expected batch) is the non-private
    batch gradient (one label per example, so the means agree)."""
    model, batch, task = _bert()
    batch = dict(batch, weight=jnp.ones((B,), jnp.float32))
    params, fn = _init(model, batch), _loss_fn(model, task)
    rng = jax.random.key(3)
    mech = grads.DP(l2_norm_clip=1e9, noise_multiplier=0.0, expected_batch_size=B)
    _, _, dp = grads.gradients(fn, params, batch, rng, dp=mech)
    _, _, plain = grads.gradients(fn, params, batch, rng)
    float32.assert_trees_close(dp, plain, rtol=1e-5)


def test_noise_std_is_clip_times_sigma_over_batch_and_follows_the_key():
    zero_loss = lambda p, b, r: (
        0.0 * jnp.sum(p["w"]),
        {"loss_sum": jnp.zeros(()), "count": jnp.sum(b["weight"])},
    )
    params = {"w": jnp.zeros((200, 100))}
    batch = {"weight": jnp.ones((8,), jnp.float32)}
    mech = grads.DP(l2_norm_clip=0.5, noise_multiplier=2.0, expected_batch_size=8)
    g = lambda r: grads.gradients(zero_loss, params, batch, r, dp=mech)[2]["w"]
    a, b, again = g(jax.random.key(1)), g(jax.random.key(2)), g(jax.random.key(1))
    want = 0.5 * 2.0 / 8
    assert abs(float(jnp.std(a)) / want - 1) < 0.02  # 20,000 draws: ~0.5% std error
    assert abs(float(jnp.mean(a))) < 4 * want / np.sqrt(a.size)
    assert not np.allclose(a, b)  # another step, other noise
    np.testing.assert_array_equal(a, again)  # the same step (a resumed run), the same noise


def test_standard_normal_draws_every_coordinate_once_across_leaves_and_chunks(monkeypatch):
    """The noise of every leaf is its own N(0, 1) draw, also where the loop's chunks cut a
    leaf: no chunk repeats another (each from its own key)."""
    monkeypatch.setattr(grads, "NOISE_CHUNK", 1000)
    shapes = [(30, 100), (7,), (1990,), (3,)]  # 5,000 numbers: 5 chunks of 1,000
    leaves = grads.standard_normal(jax.random.key(0), shapes)
    assert [x.shape for x in leaves] == shapes
    flat = np.concatenate([np.asarray(x).reshape(-1) for x in leaves])
    assert abs(flat.std() - 1) < 0.05 and abs(flat.mean()) < 0.06
    chunks = flat[:5000].reshape(5, 1000)
    corr = np.corrcoef(chunks)[np.triu_indices(5, 1)]
    assert np.all(np.abs(corr) < 0.15)  # independent chunks: |r| ~ 0.03; a repeat: 1
    again = grads.standard_normal(jax.random.key(0), shapes)
    for a, b in zip(leaves, again):
        np.testing.assert_array_equal(a, b)


def test_accounting_equals_dp_accounting_and_published_values():
    import dp_accounting

    # jax_privacy's documented example: PLD, sigma 3, 512 steps, q 0.1, delta 1e-6.
    eps = accounting.epsilon(3.0, 0.1, 512, 1e-6)
    assert eps == pytest.approx(3.77, abs=0.005)
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(3.0)), 512
    )
    assert eps == pytest.approx(dp_accounting.pld.PLDAccountant().compose(event).get_epsilon(1e-6))
    rdp = dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(1e-6)
    assert accounting.epsilon(3.0, 0.1, 512, 1e-6, "rdp") == pytest.approx(rdp)
    untruncated = lambda sigma: accounting.Segment(512, sigma, 0.1, 1000, 1000, 1.0)
    sigma = accounting.calibrate(1.0, 1e-6, untruncated)
    assert sigma == pytest.approx(9.66, abs=0.01)
    assert accounting.compose([untruncated(sigma)], 1e-6) <= 1.0  # never above the target
    # The per-line ledger composes the same event: untruncated Poisson batches (padded to N)...
    p = privacy.Plan((untruncated(3.0),), 1e-6, "poisson", "pld", eps, False)
    assert privacy.Ledger(p).epsilon(512) == pytest.approx(eps, rel=1e-6)
    assert privacy.Ledger(p).epsilon(100) < eps
    # ... and batches truncated to 130 rows, the event a padded run accounts.
    truncated = accounting.truncated_epsilon(3.0, 0.1, 512, 1e-6, 1000, 130)
    assert truncated > eps
    seg = dataclasses.replace(untruncated(3.0), padded_batch_size=130)
    p = dataclasses.replace(p, segments=(seg,), epsilon=truncated)
    assert privacy.Ledger(p).epsilon(511) == pytest.approx(p.epsilon_at(511), rel=1e-9)
    assert privacy.Ledger(p).epsilon(512) == pytest.approx(truncated, rel=1e-9)
    n = accounting.steps_for(eps, 3.0, 0.1, 1e-6)
    assert 505 <= n <= 520


def test_plan_defaults_and_calibration():
    dp = config_lib.base_config().dp
    dp.target_epsilon = 3.0
    p = privacy.plan(dp, num_examples=10_000, batch_size=100, steps=300, multiple=4)
    s = p.current
    assert p.delta == pytest.approx(1e-5) and s.sampling_rate == 0.01 and p.calibrated
    assert 3.0 * 0.999 <= p.epsilon <= 3.0 and s.noise_multiplier > 0.5  # at most the target
    assert s.padded_batch_size % 4 == 0 and 100 + 6 * 9.9 <= s.padded_batch_size < 170
    dp.accountant = "rdp"  # one accountant for the plan and every line
    p = privacy.plan(dp, num_examples=10_000, batch_size=100, steps=300, multiple=4)
    assert p.epsilon <= 3.0 and privacy.Ledger(p).epsilon(300) == p.epsilon
    assert p.epsilon_at(300) == pytest.approx(p.epsilon, rel=1e-9)
    dp.delta = 1e-3
    with pytest.raises(ValueError, match="not below 1/N"):
        privacy.plan(dp, num_examples=10_000, batch_size=100, steps=300)


def test_poisson_batches_vary_around_qn_and_pad_with_weight_zero():
    index = pipeline.BatchIndex(1000, 80, train=True, seed=0, poisson_rate=0.05)
    sizes = []
    for i in range(300):
        rows, weight = index[i]
        real = rows[weight > 0]
        assert len(rows) == 80 and len(set(real.tolist())) == len(real)  # no repeats
        assert np.all(weight[len(real) :] == 0)  # padding at the end
        sizes.append(len(real))
    assert abs(np.mean(sizes) - 50) < 2 and np.std(sizes) > 4  # Binomial(1000, 0.05)
    np.testing.assert_array_equal(
        index[17][0], pipeline.BatchIndex(1000, 80, train=True, seed=0, poisson_rate=0.05)[17][0]
    )  # fmt: skip  (stateless)


def _dp_config(**kw):
    c = config_lib.base_config()
    c.model.name, c.task = "bert", "classify"
    small = dict(num_layers=1, hidden_size=32, num_heads=2, mlp_dim=64, num_labels=2)
    c.model.update(dict(small, max_position_embeddings=32, dropout_rate=0.0))
    c.model.attention_dropout_rate = 0.0
    c.data.source, c.eval_data.source = "embedded:classify[:200]", "embedded:classify[-40:]"
    c.data.tokenizer, c.data.seq_len = "byte?specials=bert", 32
    c.batch_size, c.steps, c.log_every, c.progress = 8, 4, 1, False
    c.optimizer.update(dict(lr=1e-3, warmup_steps=0, schedule="constant"))
    c.dp.update(dict(noise_multiplier=1.0, l2_norm_clip=0.5))
    for k, v in kw.items():
        config_lib.set_key(c, k, v, parse=False)
    return c


def _lines(workdir):
    return [json.loads(x) for x in open(Path(workdir) / "metrics.jsonl")]


def _train_lines(workdir):
    strip = lambda r: {k: v for k, v in r.items() if k not in TIMING_KEYS}
    return [strip(r) for r in _lines(workdir) if r["split"] == "train"]


def test_any_microbatch_size_splits_a_padded_poisson_batch(tmp_path):
    """dp.microbatch_size need not divide a slice of the padded Poisson batch: chunks take
    the largest divisor up to it (3 rows asked, slices of 10 or 12 rows)."""
    assert [grads.chunk_rows(r, 3) for r in (10, 12, 7, 2)] == [2, 3, 1, 2]
    assert grads.chunk_rows(176, 32) == 22 and grads.chunk_rows(8, 0) == 8
    c = _dp_config(**{"dp.microbatch_size": 3, "optimizer.accum_steps": 2, "steps": 2})
    c = resolution.resolve(c, tokenizers.load("byte?specials=bert"))
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:2])
    p = run.plan_privacy(c, tokenizers.load("byte?specials=bert"), str(tmp_path), mesh)
    assert (p.current.padded_batch_size // 2) % 3 != 0  # the case the divisor rule is for
    for clipping in ("ghost", "vmap"):  # vmap: jax_privacy's chunks must divide the slice
        kw = {"dp.microbatch_size": 3, "optimizer.accum_steps": 2, "steps": 2}
        last = run.train(
            _dp_config(**kw, **{"dp.clipping": clipping}),
            str(tmp_path / clipping),
            devices=jax.devices()[:2],
        )
        assert np.isfinite(last["loss"])


@pytest.mark.slow
def test_dp_run_sharded_equals_one_device_and_resumes_exactly(tmp_path):
    """On data=2 x fsdp=2 x tensor=2 the DP run (the same secret seed: the same noise and
    batches) equals one device's; stopped after 2 steps and resumed, it is the
    uninterrupted run to the bit; every line has dp_epsilon."""
    one = run.train(
        _dp_config(**{"mesh.data": 1}), str(tmp_path / "one"), devices=jax.devices()[:1]
    )
    secret = tmp_path / "one" / privacy.SECRET_FILE
    for other in ("mesh", "cut"):
        (tmp_path / other).mkdir()
        shutil.copy(secret, tmp_path / other / privacy.SECRET_FILE)
    # The runs compared by their train lines skip evaluation (an 8-device eval compile).
    mesh = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "eval_data.source": ""}
    run.train(_dp_config(**mesh), str(tmp_path / "mesh"))
    a, b = _train_lines(tmp_path / "one"), _train_lines(tmp_path / "mesh")
    np.testing.assert_allclose([r["grad_norm"] for r in a], [r["grad_norm"] for r in b], rtol=1e-5)
    assert all("dp_epsilon" in r for r in _lines(tmp_path / "one"))
    eps = [r["dp_epsilon"] for r in a]
    assert eps == sorted(eps) and eps[0] > 0 and one["dp_epsilon"] == eps[-1]
    config = json.loads((tmp_path / "one" / "config.json").read_text())["dp"]
    assert config["padded_batch_size"] > 8 and config["sampling_rate"] == 8 / 200

    one_dev = {"mesh.data": 1, "checkpoint_every": 2, "eval_data.source": ""}
    run.train(_dp_config(steps=2, **one_dev), str(tmp_path / "cut"), devices=jax.devices()[:1])
    run.train(_dp_config(**one_dev), str(tmp_path / "cut"), devices=jax.devices()[:1])
    assert _train_lines(tmp_path / "cut") == a


def test_dp_with_accumulation_equals_one_batch_of_twice_the_size():
    model, batch, task = _gpt2()
    params, fn = _init(model, batch), _loss_fn(model, task)
    mech = grads.DP(l2_norm_clip=0.1, noise_multiplier=1.0, expected_batch_size=B)
    big = grads.gradients(fn, params, batch, jax.random.key(5), dp=mech)
    acc = grads.gradients(fn, params, batch, jax.random.key(5), accum_steps=2, dp=mech)
    np.testing.assert_allclose(big[0], acc[0], rtol=1e-6)
    float32.assert_trees_close(acc[2], big[2])


def test_tasks_that_couple_examples_refuse_dp(capsys, tmp_path):
    never = tmp_path / "never"
    argv = ["train", "--config", f"{CONFIGS}/vit_simclr.py:smoke", "--workdir", str(never)]
    assert cli.main([*argv, "--config.dp.noise_multiplier=1"]) == 2
    err = capsys.readouterr().err
    assert "cannot train with DP-SGD" in err and "in-batch negatives" in err
    assert not never.exists()


def test_pjx_privacy_prints_the_budget_as_json(capsys, tmp_path):
    from data_fixtures import write_sst2

    src = f"tsv:{write_sst2(tmp_path / 'sst2.tsv')}"  # read for its checks, not counted
    argv = ["privacy", "--config", f"{CONFIGS}/glue.py:sst2", "--num-examples", "6000"]
    argv += [f"--config.data.source={src}[:90%]", f"--config.eval_data.source={src}[90%:]"]
    argv += ["--config.steps=300", "--config.dp.target_epsilon=2"]
    argv += ["--config.data.tokenizer=byte?specials=bert"]  # public: nothing learned from data
    assert cli.main([*argv, "--max-steps-for", "2"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for k in ("epsilon", "delta", "noise_multiplier", "steps", "sampling_rate"):
        assert k in r, k
    assert 2.0 * 0.999 <= r["epsilon"] <= 2.0 and r["steps"] == 300
    assert r["sampling_rate"] == pytest.approx(32 / 6000) and 290 <= r["max_steps"] <= 310
    assert cli.main(["privacy", "--config", f"{CONFIGS}/glue.py:sst2"]) == 2  # dp off


def test_dp_train_step_sharded_matches_unsharded_setup():
    """The jitted DP step on a data x fsdp x tensor mesh equals the same step on one
    device (noise included: the same key, replicated)."""
    out = []
    for devices, mesh in (
        (jax.devices()[:1], dict(data=1)),
        (jax.devices(), dict(data=2, fsdp=2, tensor=2)),
    ):
        c = resolution.resolve(_dp_config(**{f"mesh.{k}": v for k, v in mesh.items()}))
        c = resolution.with_privacy(
            c, privacy.plan(c.dp, num_examples=200, batch_size=8, steps=4, multiple=4)
        )
        s = train.build(plan_lib.from_config(c), mesh=sharding.make_mesh(c.mesh, devices))
        state = train.create_state(s, 0)
        model, batch, _ = _bert()
        rows = c.dp.padded_batch_size
        rng = np.random.default_rng(0)
        b = {
            "input_ids": rng.integers(5, 255, (rows, 32)).astype(np.int32),
            "attention_mask": np.ones((rows, 32), np.int32),
            "token_type_ids": np.zeros((rows, 32), np.int32),
            "label": rng.integers(0, 2, (rows,)).astype(np.int32),
            "weight": (np.arange(rows) < 9).astype(np.float32),
        }
        with sharding.context(s.mesh):
            state, m = s.step_fn(state, sharding.global_batch(b, s.batch_sharding))
        out.append((float(m["loss"]), jax.device_get(state.params)))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(out[0][1]), jax.tree.leaves(out[1][1])):
        np.testing.assert_allclose(a, b, atol=1e-5)
