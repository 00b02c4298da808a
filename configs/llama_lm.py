"""Llama-family causal-LM training (Touvron et al. 2023: RMSNorm, RoPE, SwiGLU, grouped-query
attention) on WikiText-2, or character-level on Tiny Shakespeare; or fine-tuning a Hub
checkpoint of the family (Llama, Qwen2 / 2.5 / 3, Mistral, SmolLM) by `init_from`.

    pjx train --config configs/llama_lm.py --workdir runs/llama
    pjx train --config configs/llama_lm.py:shakespeare_char --workdir runs/llama_shakespeare
    pjx train --config configs/llama_lm.py:smoke --workdir /tmp/llama_smoke
    pjx train --config configs/llama_lm.py --workdir runs/qwen \
        --config.init_from=hf:Qwen/Qwen2.5-0.5B

ARG (comma-separated): a size preset (tiny mini smollm-135m small; default mini),
`shakespeare_char` (configs/gpt2_lm.py's nanoGPT recipe with a Llama block of about the
same parameter count: 4 layers, width 128, 4 query / 2 key-value heads, SwiGLU of 344),
`smoke` (tiny, 2 steps, embedded corpus). Documents are packed with segment ids and
positions that restart per document, so each is attended to and rotated as if alone.
With `init_from=hf:...` the model's architecture and tokenizer come from the checkpoint.
"""

import os

from pjx import config as config_lib

DATA = os.environ.get("PJX_DATA", "../shared/data")
SIZES = ("tiny", "mini", "smollm-135m", "small")


def get_config(arg: str = ""):
    args = set(arg.split(",")) - {""}
    c = config_lib.base_config()
    c.model.name, c.task = "llama", "clm"
    c.model.size = next((a for a in args if a in SIZES), "mini")
    corpus = f"text:{DATA}/wikitext2/train.txt.gz"
    c.data.source, c.eval_data.source = corpus + "[:95%]", corpus + "[95%:]"
    c.data.seq_len = 256
    c.data.tokenizer = "train:sentencepiece?vocab_size=8192&model_type=bpe"
    c.batch_size, c.steps = 32, 5_000
    steps = c.get_ref("steps")
    c.optimizer.update(
        dict(lr=1e-3, warmup_steps=steps // 20, end_lr_fraction=0.1, b2=0.95, weight_decay=0.1)
    )
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_steps = 50, steps // 10, steps // 10, 20
    if "shakespeare_char" in args:
        shakespeare_char(c)
    if "smoke" in args:
        config_lib.make_smoke(c)
        c.model.max_position_embeddings = 32
    return c


def shakespeare_char(c):
    """configs/gpt2_lm.py:shakespeare_char's data and optimizer, a Llama block."""
    text = f"text:{DATA}/tinyshakespeare/input.txt"
    c.data.source, c.eval_data.source = text + "[:90%]", text + "[90%:]"
    c.data.pack, c.data.tokenizer, c.data.seq_len = "stream", "train:char", 64
    c.model.size = "tiny"
    c.model.update(
        dict(
            num_layers=4,
            hidden_size=128,
            num_heads=4,
            num_kv_heads=2,
            mlp_dim=344,
            max_position_embeddings=64,
        )  # fmt: skip
    )
    c.batch_size, c.steps = 12, 2_000
    c.optimizer.update(
        dict(
            lr=1e-3,
            schedule="cosine",
            end_lr=1e-4,
            end_lr_fraction=None,
            b2=0.99,
            weight_decay=0.1,
            clip_norm=1.0,
        )  # fmt: skip
    )
    steps = c.get_ref("steps")
    c.optimizer.warmup_steps = steps // 20
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_steps = 100, steps // 4, steps // 4, 20
