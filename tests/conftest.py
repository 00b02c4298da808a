"""Test session setup: 8 fake CPU devices for sharding tests, float32 matmuls."""

import os

# Must be set before jax initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402

# Exact float32 matmuls so references and sharded/unsharded comparisons are tight.
jax.config.update("jax_default_matmul_precision", "highest")
