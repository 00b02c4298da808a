"""ModernBERT: logits equal to transformers' (masked LM and sequence classification, every
switch, windows that matter), export read back by transformers, the BERT tasks (MLM,
classification from an MLM run or a Hugging Face folder), and the refusals."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from data_fixtures import write_sst2

from pjx import cli, hf, models, tasks

pytestmark = pytest.mark.hf
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]

# A window of 8 (4 each side) on 24 tokens and layers 0 and 3 global: every kind of layer
# and both RoPE bases take part.
SMALL = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
             num_attention_heads=4, local_attention=8, max_position_embeddings=64,
             pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2,
             sep_token_id=3)  # fmt: skip
SWITCHES = {
    "base": {},
    "biases": dict(norm_bias=True, attention_bias=True, mlp_bias=True, classifier_bias=True),
    "every 2, mean, no decoder bias": dict(
        global_attn_every_n_layers=2,
        classifier_pooling="mean",
        decoder_bias=False,
        global_rope_theta=50_000.0,
        local_rope_theta=5_000.0,
    ),  # fmt: skip
}


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("transformers")


def _hf_model(tf, cls_name, tmp_path, seed=0, **switches):
    import torch

    torch.manual_seed(seed)
    cfg = tf.ModernBertConfig(**{**SMALL, **switches})
    cfg._attn_implementation = "eager"
    m = getattr(tf, cls_name)(cfg).eval()
    with torch.no_grad():  # away from the initialisation (biases zero, norms one)
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    m.save_pretrained(tmp_path)
    return m


def _batch(seed=0):
    ids = np.random.default_rng(seed).integers(4, 101, (2, 24))
    mask = np.ones_like(ids)
    mask[1, 17:] = 0
    return ids, mask


def _sst2(tmp_path) -> list[str]:
    """configs/glue.py's SST-2 smoke rows, from a file the test writes (no local data set)."""
    src = f"tsv:{write_sst2(tmp_path / 'sst2.tsv')}"
    return [f"--config.data.source={src}[:64]", f"--config.eval_data.source={src}[64:80]"]


def _hf_logits(m, ids, mask):
    import torch

    with torch.no_grad():
        return m(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


def _pjx_logits(model, params, ids, mask, key):
    return np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))[key])


@pytest.mark.parametrize("switch", sorted(SWITCHES))
@pytest.mark.parametrize("head", ["ModernBertForMaskedLM", "ModernBertForSequenceClassification"])
def test_logits_equal_transformers_and_the_export_loads_back(tf, tmp_path, switch, head):
    ref = _hf_model(tf, head, tmp_path / "hf", **SWITCHES[switch])
    model, params = hf.load(tmp_path / "hf")
    ids, mask = _batch()
    key = "mlm_logits" if "Masked" in head else "logits"
    want, got = _hf_logits(ref, ids, mask), _pjx_logits(model, params, ids, mask, key)
    real = mask.astype(bool) if key == "mlm_logits" else slice(None)  # padding: any value
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)
    assert np.abs(want[real]).max() > 0.1
    # The window matters here: the local layers attending to everything differ.
    wide = models.MODELS["modernbert"].Model(dataclasses.replace(model.config, local_attention=512))
    assert np.abs(_pjx_logits(wide, params, ids, mask, key)[real] - got[real]).max() > 1e-3
    # pjx -> Hugging Face: transformers reads the export and computes the same logits.
    hf.save("modernbert", model.config, params, tmp_path / "out")
    back = getattr(tf, head).from_pretrained(tmp_path / "out").eval()
    np.testing.assert_allclose(_hf_logits(back, ids, mask)[real], want[real], atol=1e-4, rtol=0)


def test_mlm_trains_and_a_classifier_fine_tunes_from_it(tmp_path, capsys):
    mlm = tmp_path / "mlm"
    argv = ["train", "--config", f"{ROOT}/configs/modernbert_mlm.py:smoke", "--workdir", str(mlm),
            "--config.write_curves=false"]  # fmt: skip
    assert cli.main(argv) == 0
    saved = json.loads((mlm / "config.json").read_text())
    assert saved["model"]["name"] == "modernbert" and saved["model"]["mlm_head"]
    cls = tmp_path / "cls"
    argv = ["train", "--config", f"{ROOT}/configs/glue.py:sst2,smoke", "--workdir", str(cls),
            f"--config.init_from={mlm}", "--config.model.name=modernbert",
            "--config.write_curves=false", *_sst2(tmp_path)]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    # The encoder, its norms and the MLM `head` load; the classifier is new, the decoder
    # bias dropped; the classifier reads [CLS] through the trained head (no BERT pooler).
    assert "2 newly initialised, 1 dropped" in out and "pooling='mean'" not in out
    assert json.loads((cls / "config.json").read_text())["model"]["pooling"] == "cls"


def test_classifier_fine_tunes_from_a_hugging_face_folder(tf, tmp_path, capsys):
    _hf_model(tf, "ModernBertForMaskedLM", tmp_path / "hf", vocab_size=264)  # bytes + specials
    argv = ["train", "--config", f"{ROOT}/configs/glue.py:sst2,smoke", "--workdir",
            str(tmp_path / "run"), f"--config.init_from=hf:{tmp_path / 'hf'}",
            "--config.model.name=modernbert", "--config.data.tokenizer=byte?specials=bert",
            "--config.write_curves=false", *_sst2(tmp_path)]  # fmt: skip
    assert cli.main(argv) == 0
    lines = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert np.isfinite(lines[-1]["loss"])


def test_refusals_name_the_key(tf, tmp_path):
    with pytest.raises(ValueError, match="scan_layers"):
        models.make_config("modernbert", "tiny", scan_layers=True)
    with pytest.raises(ValueError, match="no NSP head"):
        tasks.get("mlm").model_fields("modernbert", {"nsp": True})
    _hf_model(tf, "ModernBertForMaskedLM", tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["layer_types"] = ["full_attention", "full_attention", "sliding_attention",
                          "full_attention"]  # fmt: skip
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="every\n?.*n-th layer"):
        hf.load(tmp_path / "hf")


def test_export_round_trip_is_bit_exact(tf, tmp_path):
    _hf_model(tf, "ModernBertForSequenceClassification", tmp_path / "hf", **SWITCHES["biases"])
    model, params = hf.load(tmp_path / "hf")
    hf.save("modernbert", model.config, params, tmp_path / "out")
    model2, params2 = hf.load(tmp_path / "out")
    assert model2.config == model.config
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_a_modernbert_hub_id_fine_tunes_from_the_cache(tf, tmp_path, monkeypatch):
    """`--config.init_from=hf:answerdotai/ModernBERT-base` with the files in Hugging Face's
    cache (a snapshot the test builds from a random model), offline."""
    from test_hf_hub import MAIN, add_snapshot, use_offline_cache
    from test_llama import word_tokenizer

    repo, src = "answerdotai/ModernBERT-base", tmp_path / "src"
    _hf_model(tf, "ModernBertForMaskedLM", src, vocab_size=300)
    # BERT's special spellings first, as ModernBERT's tokenizer has them.
    specials = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    word_tokenizer(src / "tokenizer.json", 300, specials, unk="[UNK]")
    files = {p.name: p for p in src.iterdir() if p.suffix in (".json", ".safetensors")}
    cache = tmp_path / "hub"
    add_snapshot(cache, repo, MAIN, files, ref="main")
    use_offline_cache(monkeypatch, cache)
    _, params = hf.load(repo)
    _, want = hf.load(src)
    jax.tree.map(np.testing.assert_array_equal, params, want)
    work = tmp_path / "run"
    argv = ["train", "--config", f"{ROOT}/configs/glue.py:sst2,smoke", "--workdir", str(work),
            f"--config.init_from=hf:{repo}", "--config.model.name=modernbert",
            "--config.write_curves=false", "--config.progress=false", *_sst2(tmp_path)]  # fmt: skip
    assert cli.main(argv) == 0
    saved = json.loads((work / "config.json").read_text())
    assert saved["model"]["name"] == "modernbert" and saved["model"]["vocab_size"] == 300
    assert saved["model"]["num_labels"] == 2 and saved["model"]["local_attention"] == 8
