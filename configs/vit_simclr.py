"""SimCLR contrastive pretraining (Chen et al. 2020) of a ViT on MNIST images, no labels.

    pjx train --config configs/vit_simclr.py --workdir runs/vit_simclr
    pjx train --config configs/vit_cls.py:probe --workdir runs/vit_probe \\
        --config.init_from=runs/vit_simclr          # then: linear probe on the labels
    pjx train --config configs/vit_simclr.py:smoke --workdir /tmp/simclr_smoke

ARG (comma-separated): `info_nce` (CLIP-style symmetric InfoNCE instead of NT-Xent),
`smoke` (2 steps). Two augmented views per image (random resized crop, brightness /
contrast jitter, blur; no flips: digits are not mirror-symmetric), a 2-layer projection
head, NT-Xent at temperature 0.1 over the global batch (all views of all devices are
negatives). Eval reports the loss and the top-1 retrieval accuracy of the positive view.
"""

import os

from pjx import config as config_lib

DATA = os.environ.get("PJX_DATA", "../shared/data")


def get_config(arg: str = ""):
    args = set(arg.split(",")) - {""}
    c = config_lib.load(os.path.join(os.path.dirname(__file__), "vit_cls.py"))
    c.task = "contrastive"
    c.model.num_labels, c.model.projection_dim = 0, 64
    c.best_metric = ""
    c.task_args.update(dict(loss="info_nce" if "info_nce" in args else "nt_xent"))
    c.task_args.temperature = 0.1
    c.data.flip, c.data.crop_scale, c.data.jitter, c.data.blur = False, (0.3, 1.0), 0.4, True
    c.batch_size, c.eval_batch_size, c.steps = 256, 256, 3_000
    c.optimizer.update(dict(lr=1e-3, weight_decay=0.05))
    c.optimizer.warmup_steps = c.get_ref("steps") // 10  # follows --config.steps
    if "smoke" in args:
        config_lib.make_smoke(c, source="")
        images = f"idx:{DATA}/mnist_tsuga"
        c.data.source, c.eval_data.source = images + "[:64]", images + "[64:80]"
    return c
