"""The Llama family (pjx.models.llama, pjx.hf.llama): logits within 1e-4 of transformers'
own classes (float32, random small configs with every parameter perturbed) for every
switch: grouped-query attention, tied / untied heads, Llama 3.1 and linear RoPE scaling,
attention / MLP biases, Qwen2's q/k/v biases, Qwen3's q/k norms and separate head dim,
Mistral's sliding window; the export loads in transformers with the same logits and reads
back bit-exact; greedy decoding with the KV cache equals transformers' `generate`; the
pure layers (RoPE, GQA attention, the sliding-window mask) against numpy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_hf import _export_matches, _ids, _perturb_and_save, _torch, assert_close

from pjx import hf, models
from pjx.models import gpt2
from pjx.nn import attention, rope

BASE = dict(
    vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=64,
)  # fmt: skip
CASES = {
    "llama (multi-head, untied)": ("llama", dict(tie_word_embeddings=False)),
    "llama-3.1 (GQA, llama3 RoPE, tied, biases)": (
        "llama",
        dict(
            num_key_value_heads=2,
            tie_word_embeddings=True,
            attention_bias=True,
            mlp_bias=True,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),  # fmt: skip
    "llama (linear RoPE)": (
        "llama",
        dict(
            num_key_value_heads=1,
            rope_parameters=dict(rope_type="linear", rope_theta=1e4, factor=2.0),
        ),
    ),  # fmt: skip
    "qwen2 (q/k/v biases, GQA, tied)": (
        "qwen2",
        dict(num_key_value_heads=2, tie_word_embeddings=True),
    ),  # fmt: skip
    "qwen3 (q/k norms, head_dim 16)": ("qwen3", dict(num_key_value_heads=2, head_dim=16)),
    "mistral (sliding window 4)": ("mistral", dict(num_key_value_heads=2, sliding_window=4)),
}
CLASSES = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "mistral": "Mistral"}


@pytest.fixture(scope="module")
def tf():
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


def _hf_model(tf, model_type, extra, path):
    name = CLASSES[model_type]
    cfg = getattr(tf, f"{name}Config")(**BASE, **extra)
    model = getattr(tf, f"{name}ForCausalLM")(cfg)
    return _perturb_and_save(model, path, untie_lm_head=not cfg.tie_word_embeddings)


@pytest.mark.hf
@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers_and_the_export_loads_back(tf, tmp_path, case):
    import torch

    model_type, extra = CASES[case]
    ref = _hf_model(tf, model_type, extra, tmp_path / "hf")
    model, params = hf.load(tmp_path / "hf")
    assert model.config.variant == model_type
    ids, mask = _ids(97, shape=(2, 13), seed=3)
    out = jax.jit(model.apply)({"params": params}, input_ids=ids, attention_mask=mask)

    def call(m):
        r = m(input_ids=_torch(ids), attention_mask=_torch(mask), output_hidden_states=True)
        return {"logits": r.logits.numpy(), "last_hidden_state": r.hidden_states[-1].numpy()}

    with torch.no_grad():
        want = call(ref)
    real = mask.astype(bool)  # padded positions are garbage in both
    for name in want:
        assert_close(np.asarray(out[name])[real], want[name][real])
    cls = getattr(tf, f"{CLASSES[model_type]}ForCausalLM")
    _export_matches("llama", model, params, tmp_path / "out", cls, want, call)
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["model_type"] == model_type


@pytest.mark.hf
def test_greedy_decoding_with_the_cache_equals_transformers_generate(tf, tmp_path):
    import torch

    model_type, extra = CASES["mistral (sliding window 4)"]
    ref = _hf_model(tf, model_type, extra, tmp_path / "hf")
    model, params = hf.load(tmp_path / "hf")
    prompt = np.random.default_rng(4).integers(1, 97, (2, 5)).astype(np.int32)
    got = jax.jit(
        lambda p, x: gpt2.generate(model, p, x, 20, rng=jax.random.key(0), temperature=0.0)
    )(params, prompt)
    with torch.no_grad():
        want = ref.generate(
            _torch(prompt).long(), max_new_tokens=20, do_sample=False, min_new_tokens=20,
            pad_token_id=0,
        )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(got), want.numpy())


# ------------------------------------------------------------------ the pure layers
def test_rope_rotates_each_half_pair_by_position_times_frequency():
    K, theta = 8, 100.0
    inv = rope.inverse_frequencies(K, theta)
    np.testing.assert_allclose(inv, [theta ** (-2 * i / K) for i in range(K // 2)], rtol=1e-6)
    x = np.random.default_rng(0).normal(size=(1, 3, 2, K)).astype(np.float32)
    pos = np.array([[0, 5, 2]])
    got = np.asarray(rope.rotate(jnp.asarray(x), *rope.rotation(jnp.asarray(pos), inv)))
    want = np.empty_like(x)
    for t in range(3):
        for i in range(K // 2):
            a = pos[0, t] * inv[i]
            x1, x2 = x[0, t, :, i], x[0, t, :, i + K // 2]
            want[0, t, :, i] = x1 * math.cos(a) - x2 * math.sin(a)
            want[0, t, :, i + K // 2] = x2 * math.cos(a) + x1 * math.sin(a)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Rotations preserve the dot product's dependence on relative position only.
    q, k = jnp.asarray(x[:, :1]), jnp.asarray(x[:, 1:2])
    dot = lambda p, r: float(  # noqa: E731
        jnp.sum(rope.rotate(q, *rope.rotation(jnp.array([[p]]), inv))
                * rope.rotate(k, *rope.rotation(jnp.array([[r]]), inv)))
    )  # fmt: skip
    assert dot(7, 3) == pytest.approx(dot(14, 10), abs=1e-4)


def test_llama3_scaling_keeps_high_frequencies_and_divides_low_ones():
    inv = rope.inverse_frequencies(64, 500000.0)
    scaled = rope.inverse_frequencies(
        64, 500000.0, "llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position=8192,
    )  # fmt: skip
    wavelen = 2 * np.pi / inv
    np.testing.assert_allclose(scaled[wavelen < 8192 / 4], inv[wavelen < 8192 / 4])
    np.testing.assert_allclose(scaled[wavelen > 8192], inv[wavelen > 8192] / 8, rtol=1e-6)
    with pytest.raises(ValueError, match="'yarn'"):
        rope.inverse_frequencies(64, scaling="yarn")


@pytest.mark.parametrize("impl", ["einsum", "xla"])
def test_grouped_query_attention_equals_repeated_heads(impl):
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.normal(size=(2, 5, 6, 4)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, 5, 2, 4)), jnp.float32) for _ in range(2))
    mask = attention.make_attention_mask(5, 5, causal=True, window=2)
    got = attention.dot_product_attention(q, k, v, mask=mask, implementation=impl)
    rep = lambda t: jnp.repeat(t, 3, axis=2)  # noqa: E731  (kv head h // 3 for query head h)
    want = attention.dot_product_attention(q, rep(k), rep(v), mask=mask, implementation="einsum")
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_sliding_window_mask_sees_itself_and_the_window_before():
    m = np.asarray(attention.make_attention_mask(5, 5, causal=True, window=2))[0, 0]
    want = np.array([[q - 2 < k <= q for k in range(5)] for q in range(5)])
    np.testing.assert_array_equal(m, want)


def test_bad_checkpoints_are_refused_naming_what_was_found(tf, tmp_path):
    model_type, extra = CASES["llama (multi-head, untied)"]
    _hf_model(tf, model_type, extra, tmp_path / "hf")
    cfg_path = tmp_path / "hf" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps(dict(cfg, rope_parameters=dict(rope_type="yarn", factor=2.0))))
    with pytest.raises(ValueError, match="RoPE type 'yarn' is not supported"):
        hf.load(tmp_path / "hf")
    # Weights with q/k/v biases under a config.json without attention_bias.
    _hf_model(tf, "qwen2", {}, tmp_path / "qwen")
    cfg_path = tmp_path / "qwen" / "config.json"
    cfg_path.write_text(json.dumps(dict(json.loads(cfg_path.read_text()), model_type="llama")))
    with pytest.raises(ValueError, match="has a bias .*_proj.bias.* does not switch on"):
        hf.load(tmp_path / "qwen")
    with pytest.raises(ValueError, match="not a multiple of num_kv_heads"):
        models.make_config("llama", "tiny", num_kv_heads=3)


# ------------------------------------------------------------------ from the Hub cache
QWEN = "Qwen/Qwen2.5-0.5B"


def word_tokenizer(path, vocab_size, specials=("<unk>", "<s>", "</s>"), unk="<unk>"):
    """A tokenizer.json (the `tokenizers` package's word-level model) over `specials` (ids
    0, 1, ...) and the first words of the embedded corpus: what a Hub snapshot ships beside
    its weights."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from pjx.data import embedded

    words = list(specials)
    for text in embedded.documents():
        for w in text.split():
            if w not in words and len(words) < vocab_size:
                words.append(w)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))


@pytest.mark.hf
def test_a_qwen_hub_id_loads_and_fine_tunes_from_the_cache(tf, tmp_path, monkeypatch):
    from test_hf_hub import MAIN, add_snapshot, use_offline_cache

    from pjx import cli
    from pjx.hf import folder

    src = tmp_path / "qwen"
    _hf_model(tf, "qwen2", dict(num_key_value_heads=2, tie_word_embeddings=True), src)
    word_tokenizer(src / "tokenizer.json", BASE["vocab_size"])
    files = {p.name: p for p in src.iterdir() if p.suffix == ".json" or p.suffix == ".safetensors"}
    cache = tmp_path / "hub"
    add_snapshot(cache, QWEN, MAIN, files, ref="main")
    use_offline_cache(monkeypatch, cache)

    model, params = hf.load(QWEN)
    _, want = hf.load(src)
    assert model.config.variant == "qwen2" and model.config.qkv_bias
    jax.tree.map(np.testing.assert_array_equal, params, want)
    assert folder.model_folder(QWEN).name == MAIN
    config = str(Path(__file__).parent.parent / "configs" / "llama_lm.py") + ":smoke"
    work = tmp_path / "run"
    rc = cli.main(["train", "--config", config, "--workdir", str(work),
                   f"--config.init_from=hf:{QWEN}", "--config.write_curves=false",
                   "--config.progress=false"])  # fmt: skip
    assert rc == 0
    saved = json.loads((work / "config.json").read_text())
    assert saved["model"]["name"] == "llama" and saved["model"]["variant"] == "qwen2"
    assert saved["model"]["vocab_size"] == BASE["vocab_size"]


def test_gqa_sharded_over_data_fsdp_tensor_equals_one_device():
    """Tensor parallelism splits the 2 key / value heads like the 4 query heads."""
    from test_sharding import _losses

    model = dict(name="llama", num_heads=4, num_kv_heads=2, qk_norm=True)
    one = _losses(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1], **model)[0]
    eight, state, _ = _losses(dict(data=2, fsdp=2, tensor=2), jax.devices(), **model)
    np.testing.assert_allclose(eight, one, rtol=1e-5)
    assert np.all(np.diff(one) != 0)  # it trains
    k = state.params["model"]["layers_0"]["self_attn"]["k_proj"]["kernel"]  # [D, G, K]
    assert tuple(k.sharding.spec)[:2] == ("fsdp", "tensor")
