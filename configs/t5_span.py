"""T5.1.1 span-corruption pretraining (Raffel et al. 2020, sec. 3.1.4) on WikiText-2.

    pjx train --config configs/t5_span.py --workdir runs/t5_span
    pjx train --config configs/t5_span.py:smoke --workdir /tmp/t5_smoke

ARG (comma-separated): a size preset (tiny small base; default small), `smoke` (tiny,
2 steps, embedded corpus). Noise density 0.15, mean span length 3, sentinels
<extra_id_0..99> at the top of a SentencePiece vocabulary trained into the workdir on the
first run. Data from $PJX_DATA (default ../shared/data), or
--config.data.source=text:PATH_OR_GLOB. The corruption happens on device, inside the
jitted step, from the step's random key.
"""

import os

from pjx import config as config_lib

DATA = os.environ.get("PJX_DATA", "../shared/data")
SIZES = ("tiny", "small", "base")


def get_config(arg: str = ""):
    args = set(arg.split(",")) - {""}
    c = config_lib.base_config()
    c.model.name, c.task = "t5", "span"
    c.model.size = next((a for a in args if a in SIZES), "small")
    corpus = f"text:{DATA}/wikitext2/train.txt.gz"
    c.data.source, c.eval_data.source = corpus + "[:95%]", corpus + "[95%:]"
    c.data.seq_len = c.eval_data.seq_len = 512  # uncorrupted text; inputs get shorter
    c.data.tokenizer = "train:sentencepiece?vocab_size=8192&model_type=unigram"
    c.task_args.update(dict(noise_density=0.15, mean_noise_span_length=3.0))
    c.batch_size, c.steps = 64, 20_000
    # T5 used Adafactor at 1e-2; with AdamW, 1e-3 after warm-up is stable at these sizes.
    c.optimizer.update(dict(lr=1e-3, warmup_steps=1_000, weight_decay=0.0))
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_steps = 100, 2_000, 2_000, 50
    if "smoke" in args:
        config_lib.make_smoke(c, seq_len=64)
    return c
