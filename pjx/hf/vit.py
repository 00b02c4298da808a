"""ViT <-> Hugging Face `ViTModel` / `ViTForImageClassification`.

HF takes pixels NCHW and stores the patch conv as [D,C,p,p]; pjx is NHWC with [p,p,C,D].
`ViTForImageClassification` classifies the final-LayerNorm [CLS] token (no pooler);
`ViTModel` adds the dense+tanh pooler, which pjx has as `use_pooler`.
"""

from __future__ import annotations

from pjx.hf.mapping import label_maps

MODEL_TYPE = "vit"
PREFIX = "vit."
RENAMES = ((r"/layer_(\d+)(?=/)", r"/layer/\1"),)
KERNELS = (
    (r"patch_embeddings/projection/kernel$", "patch_conv"),
    (r"attention/output/dense/kernel$", "linear_in2"),
)
IGNORED = ()
ALIASES = {}
OPTIONAL = ()
PJX_ONLY = (r"^projection_head/",)  # the SimCLR projection head has no HF counterpart

ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new"}
_HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_new"}


def _square(cfg: dict, key: str) -> int:
    v = cfg.get(key, 224 if key == "image_size" else 16)
    if isinstance(v, (list, tuple)):
        if len(set(v)) != 1:
            raise ValueError(f"config.json {key}={v}: pjx's ViT supports square sizes only")
        v = v[0]
    return int(v)


def config_from_hf(cfg: dict, tensors) -> dict:
    """pjx `vit.Config` fields from config.json and the checkpoint's tensor names."""
    if cfg.get("qkv_bias", True) is not True:
        raise ValueError("config.json qkv_bias=false: pjx's ViT has q/k/v biases")
    act = cfg.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise ValueError(f"config.json hidden_act={act!r}: pjx's ViT supports {list(ACTIVATIONS)}")
    keys = set(tensors.keys())
    archs = cfg.get("architectures") or []
    classify = ("classifier.weight" in keys) and (
        not archs or any(a.endswith("ForImageClassification") for a in archs)
    )
    pooler = not classify and any(k.endswith("pooler.dense.weight") for k in keys)
    if pooler and cfg.get("pooler_act", "tanh") != "tanh":
        raise ValueError(f"config.json pooler_act={cfg['pooler_act']!r}: pjx's pooler is tanh")
    if pooler and cfg.get("pooler_output_size", cfg["hidden_size"]) != cfg["hidden_size"]:
        raise ValueError("config.json pooler_output_size != hidden_size: not supported by pjx")
    return dict(
        image_size=_square(cfg, "image_size"),
        patch_size=_square(cfg, "patch_size"),
        num_channels=cfg.get("num_channels", 3),
        hidden_size=cfg["hidden_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"],
        mlp_dim=cfg["intermediate_size"],
        dropout_rate=cfg.get("hidden_dropout_prob", 0.0),
        attention_dropout_rate=cfg.get("attention_probs_dropout_prob", 0.0),
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-12),
        activation=ACTIVATIONS[act],
        init_std=cfg.get("initializer_range", 0.02),
        pooling="cls",
        use_pooler=pooler,
        num_labels=tensors.shape("classifier.weight")[0] if classify else 0,
        projection_dim=0,
    )


def config_to_hf(c) -> dict:
    """config.json for pjx `vit.Config` `c`."""
    if c.pooling != "cls":
        raise ValueError(f"ViT pooling={c.pooling!r}: Hugging Face ViT pools the [CLS] token")
    if c.use_pooler and c.num_labels > 0:
        raise ValueError(
            "ViT with use_pooler and a classifier: ViTForImageClassification classifies the "
            "[CLS] token without the pooler, so it would compute different logits"
        )
    if c.activation not in _HF_ACT:
        raise ValueError(f"ViT activation {c.activation!r} has no Hugging Face equivalent here")
    out = dict(
        architectures=["ViTForImageClassification" if c.num_labels > 0 else "ViTModel"],
        model_type=MODEL_TYPE,
        image_size=c.image_size,
        patch_size=c.patch_size,
        num_channels=c.num_channels,
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        intermediate_size=c.mlp_dim,
        hidden_dropout_prob=c.dropout_rate,
        attention_probs_dropout_prob=c.attention_dropout_rate,
        layer_norm_eps=c.layer_norm_eps,
        hidden_act=_HF_ACT[c.activation],
        initializer_range=c.init_std,
        qkv_bias=True,
    )
    if c.num_labels > 0:
        out.update(label_maps(c.num_labels))
    return out
