"""pjx: pure-JAX pretraining and fine-tuning of Transformers."""

__version__ = "0.1.0"
