"""Shared Transformer building blocks, one file per concern:

  config     LayerConfig (all a layer may know), logical activation axes, initialisers
  backend    every per-backend choice: attention kernel, one-device matmuls, lookup
             gradients, whether jax computes on the CPU
  dense      projections (Dense, tied / untied logits) and norms
  embed      lookup tables: token and position embeddings, T5 relative position bias
  attention  masks, the KV-cache bookkeeping, dot-product attention, the Attention module
  blocks     MLP and the Hugging-Face-named encoder layer BERT and ViT share
  stack      a block repeated n times (unscanned or nn.scan), with remat policies

Layers see only `LayerConfig`, never a run config. Parameters are float32 and carry logical
axis names (docs/architecture.md); compute runs in `LayerConfig.dtype`; softmax and norms run
in float32. Shape letters in names (`q_BxTxHxK`) and einsum strings: the legend in
docs/architecture.md.

Modules that hold projections take their submodule names as fields so each model family can
mirror Hugging Face parameter paths (see the tree comment at the top of each family file).
"""
