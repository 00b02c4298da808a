"""GPT-2 <-> Hugging Face `GPT2LMHeadModel` / `GPT2Model`.

HF's `Conv1D` stores weights [in, out] (no transpose); the LM head is tied to `wte`.
"""

from __future__ import annotations

MODEL_TYPE = "gpt2"
PREFIX = "transformer."  # the original OpenAI-converted checkpoints save GPT2Model without it
RENAMES = ((r"/h_(\d+)(?=/)", r"/h/\1"),)
KERNELS = ((r"/attn/c_proj/kernel$", "conv1d_in2"), (r"kernel$", "conv1d"))
IGNORED = (
    r"\.attn\.(masked_)?bias$",  # causal-mask buffers in older checkpoints
    r"^lm_head\.weight$",  # tied to transformer.wte
)
ALIASES = {}
OPTIONAL = ()
PJX_ONLY = ()

ACTIVATIONS = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu"}


def config_from_hf(cfg: dict, tensors) -> dict:
    """pjx `gpt2.Config` fields from config.json."""
    checks = {
        "scale_attn_weights": (True, "attention scaled by 1/sqrt(head_dim)"),
        "scale_attn_by_inverse_layer_idx": (False, "no per-layer attention scaling"),
        "add_cross_attention": (False, "no cross-attention"),
        "tie_word_embeddings": (True, "an LM head tied to wte"),
    }
    for key, (want, what) in checks.items():
        if key in cfg and bool(cfg[key]) != want:
            raise ValueError(f"config.json {key}={cfg[key]!r}: pjx's GPT-2 supports {what} only")
    act = cfg.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ValueError(
            f"config.json activation_function={act!r}: pjx's GPT-2 supports {list(ACTIVATIONS)}"
        )
    D = cfg["n_embd"]
    return dict(
        vocab_size=cfg["vocab_size"],
        hidden_size=D,
        num_layers=cfg["n_layer"],
        num_heads=cfg["n_head"],
        mlp_dim=cfg.get("n_inner") or 4 * D,
        max_position_embeddings=cfg.get("n_positions", 1024),
        dropout_rate=cfg.get("resid_pdrop", 0.1),
        attention_dropout_rate=cfg.get("attn_pdrop", 0.1),
        layer_norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
        activation=ACTIVATIONS[act],
        init_std=cfg.get("initializer_range", 0.02),
    )


def config_to_hf(c) -> dict:
    """config.json for pjx `gpt2.Config` `c`."""
    if c.activation not in ("gelu_new", "gelu"):
        raise ValueError(f"GPT-2 activation {c.activation!r} has no Hugging Face equivalent here")
    # <|endoftext|> is the last id of the GPT-2 vocabulary; other vocabularies name no BOS/EOS.
    eos = 50256 if c.vocab_size == 50257 else None
    return dict(
        architectures=["GPT2LMHeadModel"],
        model_type=MODEL_TYPE,
        vocab_size=c.vocab_size,
        n_embd=c.hidden_size,
        n_layer=c.num_layers,
        n_head=c.num_heads,
        n_inner=c.mlp_dim,
        n_positions=c.max_position_embeddings,
        resid_pdrop=c.dropout_rate,
        embd_pdrop=c.dropout_rate,
        attn_pdrop=c.attention_dropout_rate,
        layer_norm_epsilon=c.layer_norm_eps,
        activation_function=c.activation,
        initializer_range=c.init_std,
        scale_attn_weights=True,
        tie_word_embeddings=True,
        bos_token_id=eos,
        eos_token_id=eos,
    )
