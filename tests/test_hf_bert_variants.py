"""RoBERTa and DistilBERT as pjx BERT variants: parity with transformers (PyTorch) to 1e-4
for the encoder, the MLM head and the classifier, export back, a byte-level BPE
tokenizer.json, and `init_from=hf:` fine-tuning."""

import json

import jax
import numpy as np
import pytest
from test_hf import _export_matches, _perturb_and_save, _torch, assert_close

from pjx import config as config_lib
from pjx import hf, resolution, run, tokenizers

ATOL = 1e-4
TINY = dict(num_attention_heads=4, max_position_embeddings=64)
SENTENCES = ["the cat sat on the mat", "stocks fell sharply", "a b c"]


@pytest.fixture(scope="module")
def tf():
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


def _roberta_cfg(tf, vocab_size=99, **kw):
    return tf.RobertaConfig(
        **TINY, vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
        intermediate_size=37, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        type_vocab_size=1, **kw,
    )  # fmt: skip


def _distilbert_cfg(tf, **kw):
    return tf.DistilBertConfig(
        **TINY, vocab_size=99, dim=32, n_layers=2, hidden_dim=37, pad_token_id=0, **kw
    )


CASES = {
    "roberta-classifier": ("RobertaForSequenceClassification", _roberta_cfg, "logits"),
    "roberta-mlm": ("RobertaForMaskedLM", _roberta_cfg, "mlm_logits"),
    "distilbert-classifier": ("DistilBertForSequenceClassification", _distilbert_cfg, "logits"),
    "distilbert-mlm": ("DistilBertForMaskedLM", _distilbert_cfg, "mlm_logits"),
}


def _ids(pad_id, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 99, (2, 11)).astype(np.int32)
    mask = np.ones_like(ids)
    ids[1, -3:], mask[1, -3:] = pad_id, 0  # right padding in the second row
    ids[:, 0] = 0 if pad_id == 1 else 2  # <s> / [CLS]
    return ids, mask


@pytest.mark.hf
@pytest.mark.parametrize("case", list(CASES))
def test_parity_and_export(tf, case, tmp_path):
    import torch

    arch, make_cfg, out_key = CASES[case]
    cfg = make_cfg(tf, num_labels=3) if out_key == "logits" else make_cfg(tf)
    ref = _perturb_and_save(getattr(tf, arch)(cfg), tmp_path / "hf")
    model, params = hf.load(tmp_path / "hf")
    assert model.config.variant == case.split("-")[0]
    ids, mask = _ids(cfg.pad_token_id)
    out = jax.jit(model.apply)({"params": params}, input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        r = ref(input_ids=_torch(ids), attention_mask=_torch(mask), output_hidden_states=True)
    real = mask.astype(bool)
    assert_close(out["last_hidden_state"][real], r.hidden_states[-1].numpy()[real], ATOL)
    if out_key == "logits":
        assert_close(out["logits"], r.logits.numpy(), ATOL)
    else:
        assert_close(out["mlm_logits"][real], r.logits.numpy()[real], ATOL)

    def call(m):
        logits = m(input_ids=_torch(ids), attention_mask=_torch(mask)).logits.numpy()
        return {"logits": logits if out_key == "logits" else logits[real]}

    want = {"logits": r.logits.numpy() if out_key == "logits" else r.logits.numpy()[real]}
    _export_matches("bert", model, params, tmp_path / "out", getattr(tf, arch), want, call)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == [arch]


def _byte_bpe_folder(path):
    """A RoBERTa-style byte-level BPE tokenizer.json (+ its special-token map)."""
    tk = pytest.importorskip("tokenizers")
    tok = tk.ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(SENTENCES * 20, vocab_size=300, special_tokens=specials)
    tok.post_processor = tk.processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    names = dict(bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>")
    names.update(pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    (path / "special_tokens_map.json").write_text(json.dumps(names))


@pytest.mark.hf
def test_byte_level_bpe_tokenizer_and_init_from_hf_roberta(tf, tmp_path):
    """pjx reads RoBERTa's tokenizer.json as transformers does (<s> text </s>), and
    fine-tunes a RoBERTa folder with init_from=hf: (encoder loaded, classifier new)."""
    folder = tmp_path / "roberta"
    _byte_bpe_folder(folder)
    ref_tok = tf.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    tok = tokenizers.load(str(folder))
    assert (tok.cls_id, tok.sep_id, tok.pad_id) == (0, 2, 1)
    for text in SENTENCES:
        want = ref_tok(text)["input_ids"]
        assert [tok.cls_id, *tok.encode(text), tok.sep_id] == want
    _perturb_and_save(tf.RobertaForMaskedLM(_roberta_cfg(tf, vocab_size=300)), folder)

    c = config_lib.base_config()
    c.model.name, c.task, c.init_from = "bert", "classify", f"hf:{folder}"
    c.model.num_labels = 2
    c.data.source, c.eval_data.source = "embedded:classify[:64]", "embedded:classify[64:96]"
    c.data.seq_len, c.batch_size, c.steps, c.progress = 16, 8, 2, False
    resolved = resolution.resolve(c, tok)
    assert (resolved.model.variant, resolved.model.position_offset) == ("roberta", 2)
    last = run.train(c, str(tmp_path / "run"), devices=jax.devices()[:1])
    assert np.isfinite(last["loss"]) and "accuracy" in last


@pytest.mark.hf
def test_pjx_eval_scores_a_hugging_face_classifier_folder(tf, tmp_path):
    """`pjx eval hf:DIR`: a RobertaForSequenceClassification folder is scored with its own
    tokenizer; the accuracy is transformers' on the same encoded sentences."""
    import torch

    from pjx import evaluation
    from pjx.data import embedded

    folder = tmp_path / "roberta_cls"
    _byte_bpe_folder(folder)
    ref = _perturb_and_save(
        tf.RobertaForSequenceClassification(_roberta_cfg(tf, vocab_size=300, num_labels=2)),
        folder,
    )
    got = evaluation.evaluate(
        f"hf:{folder}", "embedded:classify[:40]", ["--config.data.seq_len=16"]
    )
    ref_tok = tf.PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"), pad_token="<pad>"
    )
    texts, labels = embedded.classification()
    enc = ref_tok(texts[:40], truncation=True, max_length=16, padding=True, return_tensors="pt")
    with torch.no_grad():
        pred = ref(**enc).logits.argmax(-1).numpy()
    assert got["examples"] == 40
    assert got["accuracy"] == pytest.approx(float(np.mean(pred == labels[:40])), abs=1e-6)
