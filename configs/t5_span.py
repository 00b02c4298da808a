"""T5.1.1 span-corruption pretraining (Raffel et al. 2020, sec. 3.1.4) on WikiText-2.

    pjx train --config configs/t5_span.py --workdir runs/t5_span
    pjx train --config configs/t5_span.py:seq2seq --workdir runs/t5_sst2 \
        --config.init_from=runs/t5_span      # then: SST-2 as text-to-text
    pjx train --config configs/t5_span.py:smoke --workdir /tmp/t5_smoke

ARG (comma-separated): a size preset (tiny small base; default small), `seq2seq`
(fine-tuning on SST-2 cast as text-to-text like T5: "sst2 sentence: ..." -> "positive" /
"negative", teacher-forced cross-entropy; eval accuracy is per target token), `smoke`
(tiny, 2 steps, embedded corpus). Noise density 0.15, mean span length 3, sentinels
<extra_id_0..99> at the top of a SentencePiece vocabulary trained into the workdir on the
first run. Data from $PJX_DATA (default ../shared/data), or
--config.data.source=text:PATH_OR_GLOB. The corruption happens on device, inside the
jitted step, from the step's random key.
"""

import os

import ml_collections

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
    c.data.seq_len = 512  # uncorrupted text; inputs get shorter
    c.data.tokenizer = "train:sentencepiece?vocab_size=8192&model_type=unigram"
    c.task_args.update(dict(noise_density=0.15, mean_noise_span_length=3.0))
    c.batch_size, c.steps = 64, 20_000
    # T5 used Adafactor at 1e-2; with AdamW, 1e-3 after warm-up is stable at these sizes.
    # Derived from `steps` by reference, so they follow --config.steps (pjx.config).
    steps = c.get_ref("steps")
    c.optimizer.update(dict(lr=1e-3, warmup_steps=steps // 20, weight_decay=0.0))
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_steps = 100, steps // 10, steps // 10, 50
    if "seq2seq" in args:
        tsv = f"tsv:{DATA}/sst2/train.tsv"
        c.task = "seq2seq"
        c.task_args = ml_collections.ConfigDict()  # no span-corruption options
        c.data.source, c.eval_data.source = tsv + "[:90%]", tsv + "[90%:]"
        c.data.preset, c.data.seq_len, c.data.target_len = "sst2", 128, 4
        c.batch_size, c.steps = 32, 3_000
        c.optimizer.lr, c.optimizer.warmup_steps = 3e-4, steps // 10
        c.eval_every = c.checkpoint_every = steps // 6
    if "smoke" in args:
        source = "" if "seq2seq" in args else "embedded"
        config_lib.make_smoke(c, seq_len=64, source=source)
    return c
