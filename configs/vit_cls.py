"""ViT image classification (Dosovitskiy et al. 2021) on MNIST: from scratch, as a linear
probe on a frozen pretrained encoder, or fine-tuning all of it.

    pjx train --config configs/vit_cls.py --workdir runs/vit_mnist
    pjx train --config configs/vit_cls.py:probe --workdir runs/vit_probe \\
        --config.init_from=runs/vit_simclr          # frozen SimCLR encoder, linear head
    pjx train --config configs/vit_cls.py:finetune --workdir runs/vit_ft \\
        --config.init_from=runs/vit_simclr          # everything trains
    pjx train --config configs/vit_cls.py:smoke --workdir /tmp/vit_smoke

ARG (comma-separated): `probe`, `finetune`, `smoke` (2 steps). MNIST idx files from
$PJX_DATA/mnist_tsuga (PJX_DATA defaults to ../shared/data), the last 10% held out; or
--config.data.source=tfds:mnist:train with a prepared --config.data.data_dir. With
init_from the architecture comes from the checkpoint; the classifier head is new.

Data modes: MNIST (idx:, small tfds:) is read whole and cached (data.mode unset or
`cached`). A large TFDS image set streams: --config.data.mode=stream reads and decodes
only each batch's images, in Grain workers (--config.data.workers=N), resized to
--config.data.image_size when their sizes differ; never a decoded copy of the whole set,
and the same global shuffle and exact resume as the cached mode.
"""

import os

from pjx import config as config_lib

DATA = os.environ.get("PJX_DATA", "../shared/data")

# A ViT for 28x28x1 digits: 7x7 patches of 4x4 pixels + a class token.
MNIST_VIT = dict(
    image_size=28,
    patch_size=4,
    num_channels=1,
    num_layers=4,
    hidden_size=128,
    num_heads=4,
    mlp_dim=512,
    dropout_rate=0.1,
)


def get_config(arg: str = ""):
    args = set(arg.split(",")) - {""}
    c = config_lib.base_config()
    c.model.name, c.model.size, c.task = "vit", "tiny", "classify"
    c.model.update(dict(MNIST_VIT, num_labels=10))
    images = f"idx:{DATA}/mnist_tsuga"
    c.data.source, c.eval_data.source = images + "[:90%]", images + "[90%:]"
    c.data.image_mean, c.data.image_std = (0.1307,), (0.3081,)  # MNIST's (of [0, 1] pixels)
    c.batch_size, c.eval_batch_size, c.steps = 128, 500, 3_000
    # Derived from `steps` by reference, so they follow --config.steps (pjx.config).
    steps = c.get_ref("steps")
    c.optimizer.update(dict(lr=1e-3, warmup_steps=steps // 15, weight_decay=0.05))
    c.log_every, c.eval_every, c.checkpoint_every = 50, steps // 6, steps // 6
    c.best_metric = "accuracy"
    if "probe" in args:  # Linear evaluation protocol (SimCLR, sec. 4): only the head learns.
        c.optimizer.freeze = "^vit/"
        c.optimizer.update(dict(lr=1e-2, weight_decay=0.0))
        c.model.dropout_rate = 0.0
        c.steps = 1_000
    if "finetune" in args:
        c.optimizer.lr = 3e-4
        c.steps = 1_000
    if "smoke" in args:
        config_lib.make_smoke(c, source="")
        c.data.source, c.eval_data.source = images + "[:64]", images + "[64:80]"
    return c
