"""Benchmark shapes shared by `pjx bench`, benchmarks/gpu_bench.py and the Hugging Face
reference (hf_reference.py).

  pjx bench --config benchmarks/bench_config.py:bert_mini
  pjx bench --config benchmarks/bench_config.py:gpt2_small --config.model.dtype=bfloat16
  pjx bench --config benchmarks/bench_config.py:bert_mini_cls --config.dp.noise_multiplier=1.0

ARG picks a row of SHAPES; the other scripts build the same sizes from the same table
(`model_fields`). Importing this file imports no jax (hf_reference.py runs torch alone).
"""

# name -> (model, task, layers, hidden, heads, seq_len, batch, vocab). ViT rows reuse two
# columns: seq_len is the image side and vocab the number of classes; PATCH-pixel patches
# plus [CLS] make (224 / 16)**2 + 1 = 197 tokens per image. Text classify rows have
# TEXT_LABELS classes (model.num_labels).
SHAPES = {
    # CPU comparison (BENCHMARKS.md): BERT mini MLM and a GPT-2 of the same width.
    "bert_mini": ("bert", "mlm", 4, 256, 4, 128, 32, 8192),
    "gpt2_mini": ("gpt2", "clm", 4, 256, 4, 256, 16, 8192),
    # The Llama block at the same shape: 4 query / 2 key-value heads, SwiGLU of LLAMA_MLP,
    # tied embeddings (pjx's llama `mini` preset); against LlamaForCausalLM.
    "llama_mini": ("llama", "clm", 4, 256, 4, 256, 16, 8192),
    # DP-SGD on CPU (benchmarks/compare_dp.py, with Opacus): BERT mini sequence
    # classification, pooled [CLS] -> TEXT_LABELS classes.
    "bert_mini_cls": ("bert", "classify", 4, 256, 4, 128, 32, 8192),
    # GPU targets (issue 3): GPT-2 small (124M) at seq 1024, BERT-base MLM at seq 128,
    # ViT-B/16 on 224x224 images and 1000 classes. Batches fit one 80 GB GPU without remat
    # (benchmarks/gpu_bench.py).
    "gpt2_small": ("gpt2", "clm", 12, 768, 12, 1024, 32, 50257),
    "bert_base": ("bert", "mlm", 12, 768, 12, 128, 256, 30522),
    "vit_b16": ("vit", "classify", 12, 768, 12, 224, 256, 1000),
}
PATCH = 16  # ViT patch side
LLAMA_MLP = {256: 688}  # SwiGLU width per hidden size: about 8/3 x, a multiple of 16
TEXT_LABELS = 2  # classes of the text classify rows (bert_mini_cls)
# The optimizer of every row (get_config here, gpu_bench.make_config); STEPS is only the
# length of the lr schedule, of which a benchmark times a few steps.
OPTIMIZER = dict(lr=1e-4, warmup_steps=10, weight_decay=0.01, clip_norm=1.0)
STEPS = 1000
# --tiny (gpu_bench.py, hf_reference.py): every code path of a shape in seconds on a CPU.
TINY = dict(num_layers=2, hidden_size=128, num_heads=2, mlp_dim=512)


def model_fields(arg: str, tiny: bool = False) -> dict:
    """The pjx model Config fields of shape `arg` (besides name / size / dtype)."""
    if arg not in SHAPES:
        raise ValueError(f"unknown benchmark shape {arg!r}; choose from {sorted(SHAPES)}")
    model, task, layers, hidden, heads, seq, _, vocab = SHAPES[arg]
    f = dict(num_layers=layers, hidden_size=hidden, num_heads=heads, mlp_dim=4 * hidden)
    if model == "llama":
        f.update(mlp_dim=LLAMA_MLP[hidden], num_kv_heads=heads // 2, tie_word_embeddings=True)
    if model == "vit":
        f.update(image_size=seq, patch_size=PATCH, num_channels=3, num_labels=vocab)
    else:
        f["vocab_size"] = vocab
        if task == "classify":
            f["num_labels"] = TEXT_LABELS
    return {**f, **(TINY if tiny else {})}


def tokens_per_example(arg: str) -> int:
    """Positions one example puts through the model: seq_len, or ViT's patches + [CLS]
    (as pjx.bench.tokens_per_example counts them)."""
    model, _, _, _, _, seq, _, _ = SHAPES[arg]
    return (seq // PATCH) ** 2 + 1 if model == "vit" else seq


def get_config(arg="bert_mini"):
    from pjx import bench  # here, so hf_reference.py imports no jax
    from pjx import config as config_lib

    fields = model_fields(arg)
    model, task, *_, seq, batch, _ = SHAPES[arg]
    c = config_lib.base_config()
    c.model.name, c.model.size, c.task = model, "tiny", task
    c.model.update(fields)
    if model != "vit":  # ViT's tokens come from model.image_size / patch_size
        c.data.seq_len = seq
    c.batch_size = batch
    c.steps = STEPS
    c.optimizer.update(OPTIMIZER)
    if task == "mlm":  # the special ids of pjx's BERT tokenizers
        c.task_args.update(bench.MLM_DEFAULTS)
    c.progress = False
    return c
