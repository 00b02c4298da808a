"""GPT-2 causal-LM training (Radford et al. 2019) on WikiText-2, or character-level on
Tiny Shakespeare.

    pjx train --config configs/gpt2_lm.py --workdir runs/gpt2
    pjx train --config configs/gpt2_lm.py:shakespeare_char --workdir runs/shakespeare
    pjx train --config configs/gpt2_lm.py:smoke --workdir /tmp/gpt2_smoke

ARG (comma-separated): a size preset (tiny small medium large xl; default small = 124M),
`shakespeare_char` (the well-known small CPU recipe: 4 layers, 4 heads, width 128, context
64, batch 12, 2,000 steps, lr 1e-3 with 100 warm-up steps decaying to 1e-4, AdamW beta2
0.99, weight decay 0.1, clipping 1.0, no dropout, the last 10% of the text held out),
`smoke` (tiny, 2 steps, embedded corpus). Data from $PJX_DATA (default ../shared/data);
another corpus with --config.data.source=text:PATH_OR_GLOB.
"""

import os

from pjx import config as config_lib

DATA = os.environ.get("PJX_DATA", "../shared/data")
SIZES = ("tiny", "small", "medium", "large", "xl")


def get_config(arg: str = ""):
    args = set(arg.split(",")) - {""}
    c = config_lib.base_config()
    c.model.name, c.task = "gpt2", "clm"
    c.model.size = next((a for a in args if a in SIZES), "small")
    corpus = f"text:{DATA}/wikitext2/train.txt.gz"
    c.data.source, c.eval_data.source = corpus + "[:95%]", corpus + "[95%:]"
    c.data.seq_len = 1024
    c.data.tokenizer = "train:sentencepiece?vocab_size=16384&model_type=bpe"
    c.batch_size, c.steps = 32, 10_000
    # Derived from `steps` by reference, so they follow --config.steps (pjx.config).
    steps = c.get_ref("steps")
    c.optimizer.update(
        dict(lr=6e-4, warmup_steps=steps // 20, end_lr_fraction=0.1, b2=0.95, weight_decay=0.1)
    )
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_steps = 50, steps // 10, steps // 10, 50
    if "shakespeare_char" in args:
        shakespeare_char(c)
    if "smoke" in args:
        config_lib.make_smoke(c)
        c.model.max_position_embeddings = 32
    return c


def shakespeare_char(c):
    text = f"text:{DATA}/tinyshakespeare/input.txt"
    c.data.source, c.eval_data.source = text + "[:90%]", text + "[90%:]"
    # One stream of characters (newlines kept), cut into context-length rows.
    c.data.pack = "stream"
    c.data.tokenizer = "train:char"
    c.model.size = "tiny"
    c.model.update(
        dict(
            num_layers=4,
            num_heads=4,
            hidden_size=128,
            mlp_dim=512,
            max_position_embeddings=64,
            dropout_rate=0.0,
            attention_dropout_rate=0.0,
        )
    )
    c.data.seq_len = 64
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
        )
    )
    # Warm-up stays steps // 20 (100 of 2,000, as nanoGPT); evaluation every steps // 4.
    steps = c.get_ref("steps")
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_steps = 50, steps // 4, steps // 4, 20
