"""pjx.lora: low-rank adapters through an interceptor, frozen base weights, merging, the
Hugging Face PEFT format both ways (checked against peft on the transformers model),
sharding and exact resume."""

import json
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

from pjx import checkpoint as ckpt
from pjx import cli, convert, hf, inference, lora, models, resolution, run, train
from pjx import config as config_lib
from pjx import plan as plan_lib
from pjx.checkpoint.saved import Saved
from pjx.init_from import init_from
from pjx.metrics_log import TIMING_KEYS

SMALL = dict(num_layers=2, hidden_size=32, num_heads=2, mlp_dim=64)
FIELDS = {
    "bert": dict(SMALL, vocab_size=64, max_position_embeddings=16, num_labels=3),
    "gpt2": dict(SMALL, vocab_size=64, max_position_embeddings=16),
    "t5": dict(SMALL, vocab_size=64, head_dim=16),
    "vit": dict(SMALL, image_size=16, patch_size=8, num_channels=3, num_labels=3),
    "llama": dict(SMALL, num_kv_heads=1, vocab_size=64, max_position_embeddings=16),
    "modernbert": dict(
        SMALL,
        vocab_size=64,
        max_position_embeddings=16,
        num_labels=3,
        mlm_head=False,
        local_attention=4,
    ),
}
RANK4 = dict(lora.DEFAULTS, rank=4, alpha=8.0)


def flat(tree) -> dict:
    return traverse_util.flatten_dict(tree, sep="/")


def _inputs(family, model, seed=0):
    """Random inputs (real tokens, a padded row) shaped like models.example_inputs."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in models.example_inputs(family, model.config, 2, 8).items():
        if k == "pixel_values":
            out[k] = rng.normal(size=v.shape).astype(np.float32)
        elif k.endswith("attention_mask"):
            m = np.ones(v.shape, np.int32)
            m[1, -3:] = 0
            out[k] = m
        elif k.endswith("input_ids"):
            out[k] = rng.integers(1, 64, v.shape).astype(np.int32)
        else:
            out[k] = np.asarray(v)
    return out


def _init(family, cfg=RANK4, seed=0, **fields):
    model = models.create(family, "tiny", **{**FIELDS[family], **fields})
    adapted = lora.adapted(model, cfg, family)
    inputs = _inputs(family, model)
    params = nn.meta.unbox(adapted.init(jax.random.key(seed), **inputs)["params"])
    return model, adapted, params, inputs


def _randomise_adapters(params, seed=1, heads=""):
    """B = 0 hides any mistake in the low-rank path: give every adapter (and the heads
    matching `heads`) random values."""
    rng = np.random.default_rng(seed)
    f = flat(params)
    for p, x in f.items():
        if lora.is_adapter(p) or (heads and heads in p):
            f[p] = rng.normal(0, 0.3, x.shape).astype(np.float32)
    return traverse_util.unflatten_dict(f, sep="/")


def _base(params):
    return traverse_util.unflatten_dict(
        {p: x for p, x in flat(params).items() if not lora.is_adapter(p)}, sep="/"
    )


def _out(model, params, inputs):
    out = jax.jit(model.apply)({"params": params}, **inputs)
    return out["logits"] if isinstance(out, dict) else out


# ------------------------------------------------------------------ the adapted model
@pytest.mark.parametrize("family", ["bert", "gpt2", "t5", "vit", "llama", "modernbert"])
def test_fresh_adapters_give_the_base_model_exactly(family):
    model, adapted, params, inputs = _init(family)
    adapters = sorted(p.rsplit("/", 1)[0] for p in flat(params) if p.endswith("/lora_b"))
    assert adapters and all(np.all(flat(params)[f"{m}/lora_b"] == 0) for m in adapters)
    pattern = lora.TARGETS[family]
    assert all(__import__("re").search(pattern, m) for m in adapters)
    want = 2 * 2 if family != "t5" else 2 * (2 + 4)  # layers x (q, v) per attention
    assert len(adapters) == (2 if family in ("gpt2", "modernbert") else want)  # fused q, k, v
    np.testing.assert_array_equal(_out(adapted, params, inputs), _out(model, _base(params), inputs))


@pytest.mark.parametrize("family", ["bert", "gpt2", "t5", "llama", "modernbert"])
def test_merged_model_equals_the_adapted_model(family):
    model, adapted, params, inputs = _init(family)
    params = _randomise_adapters(params)
    got = _out(model, lora.merge(params, RANK4), inputs)
    want = _out(adapted, params, inputs)
    without = _out(model, _base(params), inputs)
    assert np.abs(want - without).max() > 0.1 * np.abs(want).max()  # the adapters matter
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_scanned_adapters_equal_per_layer_adapters():
    """Under scan_layers the adapters gain the layer axis; unstacked, they are the
    unscanned model's, with the same outputs; merging works on the stack."""
    _, adapted, params, inputs = _init("bert")
    params = _randomise_adapters(params)
    s_model, s_adapted, s_params, _ = _init("bert", scan_layers=True)
    stacked = models.stack_layers(flat(params))
    assert stacked["bert/encoder/layer/attention/self/query/lora_a"].shape == (2, 32, 4)
    assert sorted(stacked) == sorted(flat(s_params))
    s_params = traverse_util.unflatten_dict(stacked, sep="/")
    want = _out(adapted, params, inputs)
    np.testing.assert_allclose(_out(s_adapted, s_params, inputs), want, atol=1e-5, rtol=0)
    merged = lora.merge(s_params, RANK4)
    np.testing.assert_allclose(_out(s_model, merged, inputs), want, atol=1e-5, rtol=0)


def test_all_linear_targets_and_a_target_that_matches_nothing():
    _, _, params, _ = _init("bert", cfg=dict(RANK4, targets="all-linear"))
    adapted = {p.rsplit("/", 1)[0] for p in flat(params) if p.endswith("/lora_a")}
    assert len(adapted) == 2 * 6  # q, k, v, attention out, intermediate, output per layer
    assert not any("pooler" in m or "classifier" in m for m in adapted)
    c = _config(**{"lora.targets": "nonexistent"})
    with pytest.raises(ValueError, match="matches no Dense layer"):
        train.build(plan_lib.from_config(resolution.resolve(c)), devices=jax.devices()[:1])


# ------------------------------------------------------------------ training
def _config(family="bert", **kw):
    c = config_lib.base_config()
    c.model.name = family
    if family == "bert":
        c.task = "classify"
        c.model.update(dict(SMALL, max_position_embeddings=32, num_labels=2))
        c.data.source, c.eval_data.source = "embedded:classify[:64]", "embedded:classify[-16:]"
        c.data.tokenizer = "byte?specials=bert"
    else:
        c.task = "clm"
        c.model.update(dict(SMALL, max_position_embeddings=32))
        c.data.source, c.eval_data.source = "embedded:corpus[:80%]", "embedded:corpus[80%:]"
        c.data.tokenizer = "byte"
    c.model.update(dict(dropout_rate=0.1))
    c.data.seq_len, c.batch_size, c.steps, c.log_every, c.progress = 32, 8, 3, 1, False
    c.optimizer.update(dict(lr=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.1))
    c.mesh.data = 1
    c.lora.update(dict(rank=4, alpha=8.0, dropout=0.1))
    for k, v in kw.items():
        config_lib.set_key(c, k, v, parse=False)
    return c


def _saved(workdir) -> dict:
    """The resolved config a run wrote."""
    return json.loads((Path(workdir) / "config.json").read_text())


def test_only_adapters_and_heads_train_and_frozen_weights_have_no_state(tmp_path):
    c = _config()
    run.train(c, str(tmp_path / "run"), devices=jax.devices()[:1])
    s = train.build(plan_lib.from_config(_saved(tmp_path / "run")), devices=jax.devices()[:1])
    before = flat(train.create_state(s, 0).params)
    after = flat(Saved(tmp_path / "run").params(merged=False))
    changed = {p for p in before if not np.array_equal(before[p], np.asarray(after[p]))}
    trainable = {p for p in before if lora.is_adapter(p) or p.startswith("classifier/")}
    assert changed == trainable, changed ^ trainable  # weight decay skips frozen weights too
    # Adam keeps moments only for what trains: two per trainable value.
    state_size = sum(x.size for x in jax.tree.leaves(s.abstract_state.opt_state))
    n_trainable = sum(before[p].size for p in trainable)
    assert 2 * n_trainable <= state_size < 2 * n_trainable + 16
    assert train.describe(s).count("trained") == 1


def test_lora_run_resumes_exactly(tmp_path):
    """Stopped at step 2 (its end-of-run eval aside) and resumed: the uninterrupted run's
    train lines and final parameters, to the bit."""
    c = _config(steps=4, checkpoint_every=2)
    run.train(c, str(tmp_path / "ref"), devices=jax.devices()[:1])
    run.train(
        _config(steps=2, checkpoint_every=2), str(tmp_path / "cut"), devices=jax.devices()[:1]
    )
    run.train(c, str(tmp_path / "cut"), devices=jax.devices()[:1])
    strip = lambda r: {k: v for k, v in r.items() if k not in TIMING_KEYS}
    lines = lambda d: [
        strip(r) for r in map(json.loads, open(tmp_path / d / "metrics.jsonl"))
        if r["split"] == "train"
    ]  # fmt: skip
    assert lines("cut") == lines("ref") and len(lines("ref")) == 4
    ref, cut = (
        flat(Saved(tmp_path / "ref").params(merged=False)),
        flat(Saved(tmp_path / "cut").params(merged=False)),
    )
    for p in ref:
        np.testing.assert_array_equal(np.asarray(cut[p]), np.asarray(ref[p]), err_msg=p)


@pytest.mark.slow
def test_lora_sharded_equals_single_device_and_composes_with_dp_and_scan(tmp_path):
    one = _config("gpt2", steps=3)
    run.train(one, str(tmp_path / "one"), devices=jax.devices()[:1])
    mesh = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
    run.train(_config("gpt2", steps=3, **mesh), str(tmp_path / "mesh"))
    losses = lambda d: [
        r["loss"] for r in map(json.loads, open(tmp_path / d / "metrics.jsonl"))
        if r["split"] == "train"
    ]  # fmt: skip
    np.testing.assert_allclose(losses("mesh"), losses("one"), rtol=1e-5)
    # DP-LoRA (Yu et al. 2021): clipping and noise touch only the adapters; with scan.
    dp = _config(**{"dp.noise_multiplier": 1.0, "model.scan_layers": True, "steps": 2})
    run.train(dp, str(tmp_path / "dp"), devices=jax.devices()[:1])
    s = train.build(plan_lib.from_config(_saved(tmp_path / "dp")), devices=jax.devices()[:1])
    before = flat(train.create_state(s, 0).params)
    after = flat(Saved(tmp_path / "dp").params(merged=False))
    for p in before:
        same = np.array_equal(before[p], np.asarray(after[p]))
        assert same != (lora.is_adapter(p) or p.startswith("classifier/")), p


# ------------------------------------------------------------------ export / import
def test_merge_lora_then_export_and_inference(tmp_path, capsys):
    c = _config()
    run.train(c, str(tmp_path / "run"), devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="merge-lora"):
        convert.pjx_to_hf(tmp_path / "run", tmp_path / "refused")
    assert cli.main(["convert", "merge-lora", str(tmp_path / "run"), str(tmp_path / "m")]) == 0
    assert cli.main(["convert", "pjx-to-hf", str(tmp_path / "m"), str(tmp_path / "hf")]) == 0
    saved = ckpt.read_checkpoint_config(tmp_path / "m")
    assert saved["lora"]["rank"] == 0
    assert not any(lora.is_adapter(p) for p in flat(Saved(tmp_path / "m").params(merged=False)))

    family, fields = "bert", _saved(tmp_path / "run")["model"]
    fields = {k: v for k, v in fields.items() if k not in ("name", "size")}
    model = models.create(family, "tiny", **fields)
    adapted = lora.adapted(model, c.lora.to_dict(), family)
    inputs = _inputs(family, model)
    want = _out(adapted, Saved(tmp_path / "run").params(merged=False), inputs)
    hf_model, hf_params = hf.load(tmp_path / "hf")
    np.testing.assert_allclose(_out(hf_model, hf_params, inputs), want, atol=1e-5)
    m, p, tok = inference.load(str(tmp_path / "run"))  # merged on load
    assert tok is not None and not any(lora.is_adapter(k) for k in flat(p))
    np.testing.assert_allclose(_out(m, p, inputs), want, atol=1e-5)


@pytest.fixture(scope="module")
def tf():
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    return pytest.importorskip("transformers")


def _hf_base(tf, family, path):
    import torch

    if family == "bert":
        cfg = tf.BertConfig(
            vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=16, num_labels=3,
        )  # fmt: skip
        model = tf.BertForSequenceClassification(cfg)
    elif family == "modernbert":
        cfg = tf.ModernBertConfig(
            vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=40, max_position_embeddings=16, local_attention=4, num_labels=3,
            pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3,
        )  # fmt: skip
        cfg._attn_implementation = "eager"
        model = tf.ModernBertForSequenceClassification(cfg)
    elif family == "llama":
        cfg = tf.LlamaConfig(
            vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=40, max_position_embeddings=16,
        )  # fmt: skip
        model = tf.LlamaForCausalLM(cfg)
    else:
        cfg = tf.GPT2Config(
            vocab_size=300, n_embd=32, n_layer=2, n_head=4, n_positions=16, bos_token_id=0,
            eos_token_id=0,
        )  # fmt: skip
        model = tf.GPT2LMHeadModel(cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval().save_pretrained(path)
    return type(model)


def _lora_workdir(family, base, dst, cfg):
    """A pjx LoRA run's checkpoint on top of the HF base: random adapters and head."""
    family_, fields = hf.model_config(base)
    model = lora.adapted(models.create(family, "tiny", **fields), cfg, family)
    inputs = models.example_inputs(family, model.config, 1, 8)
    fresh = nn.meta.unbox(model.init(jax.random.key(0), **inputs))["params"]
    params, _ = init_from(f"hf:{base}", fresh, verbose=False)
    params = _randomise_adapters(jax.tree.map(np.asarray, params), heads="classifier")
    config = {"model": {"name": family, **fields}, "lora": cfg, "init_from": f"hf:{base}"}
    convert.write_workdir(dst, params, config)
    return model, params


@pytest.mark.hf
@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "modernbert"])
def test_peft_loads_the_exported_adapter_with_pjx_logits(tf, family, tmp_path):
    import peft
    import torch

    hf_cls = _hf_base(tf, family, tmp_path / "base")
    model, params = _lora_workdir(family, tmp_path / "base", tmp_path / "run", RANK4)
    args = ["convert", "pjx-to-peft", str(tmp_path / "run"), str(tmp_path / "adapter")]
    assert cli.main(args) == 0
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    want_targets = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"],
                    "modernbert": ["Wqkv"]}  # fmt: skip
    want_targets = want_targets[family]
    assert adapter_config["target_modules"] == want_targets
    assert adapter_config["base_model_name_or_path"] == str(tmp_path / "base")

    ref = peft.PeftModel.from_pretrained(
        hf_cls.from_pretrained(tmp_path / "base"), tmp_path / "adapter"
    )
    ids = np.random.default_rng(3).integers(1, 64, (2, 11)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, -3:] = 0
    with torch.no_grad():
        want = ref.eval()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    batch = {"input_ids": ids, "attention_mask": mask}
    got = np.asarray(_out(model, params, batch))
    # Decoders' logits at padding are garbage; a classifier has one row per example.
    real = mask.astype(bool) if family in ("gpt2", "llama") else slice(None)
    np.testing.assert_allclose(got[real], want.numpy()[real], atol=1e-4, rtol=0)
    without = np.asarray(_out(model.model, _base(params), batch))  # the adapters matter
    assert np.abs(got[real] - without[real]).max() > 1e-3

    # ... and back: init_from=peft:ADAPTER rebuilds every parameter, adapters included.
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    back, report = init_from(f"peft:{tmp_path / 'adapter'}", abstract, verbose=False)
    assert not report.new
    for p, x in flat(params).items():
        np.testing.assert_allclose(np.asarray(flat(back)[p]), x, atol=1e-7, err_msg=p)


@pytest.mark.hf
def test_a_peft_adapter_trains_on_in_pjx(tf, tmp_path):
    """An adapter written by peft itself: `init_from=peft:DIR` takes its rank / alpha /
    targets into config.lora, starts from its weights and fine-tunes them."""
    import peft
    import torch

    hf_cls = _hf_base(tf, "bert", tmp_path / "base")
    base = hf_cls.from_pretrained(tmp_path / "base")
    pm = peft.get_peft_model(
        base,
        peft.LoraConfig(r=2, lora_alpha=6, target_modules=["key", "dense"], task_type="SEQ_CLS"),
    )
    torch.manual_seed(2)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    pm.save_pretrained(tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "base")
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))

    c = _config(init_from=f"peft:{tmp_path / 'adapter'}", **{"lora.rank": 0, "steps": 1})
    c.model = config_lib.base_config().model
    c.model.update(dict(name="bert", num_labels=3, dropout_rate=0.0, attention_dropout_rate=0.0))
    c.data.tokenizer = "byte?specials=bert"
    c.data.seq_len = 16
    resolved = resolution.resolve(c)
    assert (resolved.lora.rank, resolved.lora.alpha) == (2, 6.0)
    s = train.build(plan_lib.from_config(resolved), devices=jax.devices()[:1])
    state = run.fresh_state(s, resolved)
    adapted = {p.rsplit("/", 1)[0] for p in flat(state.params) if p.endswith("/lora_a")}
    assert len(adapted) == 2 * 4 + 1  # per layer key and three "dense"; the pooler's dense
    ids = np.random.default_rng(4).integers(1, 64, (2, 9)).astype(np.int32)
    with torch.no_grad():
        want = pm.eval()(input_ids=torch.tensor(ids)).logits.numpy()
    got = _out(s.model, jax.tree.map(np.asarray, state.params), {"input_ids": ids})
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    last = run.train(c, str(tmp_path / "run"), devices=jax.devices()[:1])
    assert np.isfinite(last["loss"])
    assert Path(tmp_path / "run" / "checkpoints").is_dir()
