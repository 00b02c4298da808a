"""What a run reads and keeps in its workdir: the tokenizer, the data streams, the
resolved config (config.json), checkpoints.

`pjx.run.train` builds these once per run; they are separate from the loop so the loop
reads as the steps it takes.
"""

from __future__ import annotations

import json
import os

import jax

from pjx import checkpoint, data, init_from, privacy, sharding, tokenizers
from pjx import config as config_lib


def build_tokenizer(config, workdir: str | None = None):
    """The run's tokenizer (None if it needs none).

    Precedence: a tokenizer the config names (`sentencepiece:PATH`, `wordpiece:...`), then
    the one saved with `config.init_from` (a fine-tuned model must read text the way it was
    pretrained), then a `train:...` spec, which trains on the training texts into
    WORKDIR/tokenizer on the first run and is reloaded from there on resume.
    """
    spec = config.data.get("tokenizer", "") or ""
    source = config.get("init_from") or ""
    if spec and not spec.startswith("train:"):
        return tokenizers.load(spec)
    if source:
        folder = checkpoint.tokenizer_dir(source)
        if folder is not None:
            return tokenizers.load(str(folder))
    if not spec:
        return None
    # A generator: the texts are read only if the tokenizer is trained now.
    texts = data.read_texts(config.data.source, config.data)
    return tokenizers.from_config(spec, workdir=workdir, family=config.model.name, texts=texts)


def build_data(config, tokenizer, *, train: bool, workdir=None, mesh=None, seed=None):
    """Train: an infinite iterator with get_state/set_state; eval: a re-iterable.
    `config` is resolved (pjx.config.resolve); with `mesh`, this process produces the rows
    its devices hold of every global batch (else its equal share). `seed` replaces
    config.seed for the order and sampling of rows (DP-SGD's secret seed)."""
    cfg = config.data if train else config.eval_data
    bs = privacy.batch_rows(config) if train else (config.eval_batch_size or config.batch_size)
    dp = config.get("dp") or {}
    poisson = dp.get("sampling_rate") if privacy.enabled(dp) and dp.sampling == "poisson" else None
    rows = None if mesh is None else sharding.process_rows(sharding.batch_sharding(mesh, bs), bs)
    return data.build(
        cfg,
        task=config.task,
        task_args=config.task_args.to_dict(),
        model=config.model.name,
        tokenizer=tokenizer,
        batch_size=bs,
        seed=config.seed if seed is None else seed,
        train=train,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        rows=rows,
        workdir=workdir,
        num_labels=int(config.model.get("num_labels", 0) or 0),
        poisson_rate=poisson,
    )


def num_examples(config, tokenizer, workdir=None) -> int:
    """Rows of the run's training data (cached table or prepared index): DP's N."""
    return data.num_rows(
        config.data,
        task=config.task,
        task_args=config.task_args.to_dict(),
        model=config.model.name,
        tokenizer=tokenizer,
        seed=config.seed,
        workdir=workdir,
        num_labels=int(config.model.get("num_labels", 0) or 0),
    )


def saved_segments(workdir) -> list:
    """The DP-SGD segments WORKDIR/config.json planned at the last start ([] if none)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        dp = json.load(f).get("dp") or {}
    return json.loads(dp.get("segments") or "[]")


def save_config(config, workdir) -> str:
    """WORKDIR/config.json: every value the run uses (process 0 writes)."""
    path = os.path.join(workdir, "config.json")
    if jax.process_index() == 0:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(config_lib.to_json(config) + "\n")
        os.replace(tmp, path)
    return path


class Checkpointer:
    """The one place a run saves / restores state, the data position, the resolved config
    (which `init_from` rebuilds the exact architecture from) and the tokenizer."""

    def __init__(self, config, workdir, tokenizer_dir=None, privacy_record=None):
        # privacy_record(step) -> the DP ledger a checkpoint at `step` keeps (None: no DP).
        self.privacy_record = privacy_record
        every = int(config.get("checkpoint_every", 0) or 0) or max(int(config.steps), 1)
        self.config, self.tokenizer_dir = config, tokenizer_dir
        self.directory = os.path.join(workdir, "checkpoints")
        self.manager = checkpoint.create_manager(
            self.directory,
            checkpoint_every=every,
            keep=int(config.get("keep_checkpoints", 3) or 3),
            best_metric=config.get("best_metric", "") or None,
            best_mode=config.get("best_mode", "max"),
        )

    def restore(self, abstract_state, data_iter):
        state, data_state, step = checkpoint.maybe_restore(self.manager, abstract_state)
        if state is not None and data_state is not None and hasattr(data_iter, "set_state"):
            data_iter.set_state(data_state)
        return state, step

    def due(self, step) -> bool:
        return self.manager.should_save(step)

    def save(self, step, state, data_iter, *, force=False, metrics=None):
        best = self.config.get("best_metric", "") or None
        if best and metrics is not None and best not in metrics:
            raise ValueError(f"best_metric={best!r} is not an eval metric: {sorted(metrics)}")
        checkpoint.save(
            self.manager,
            step,
            state,
            data_state=getattr(data_iter, "get_state", None),
            config=self.config,
            tokenizer_dir=self.tokenizer_dir,
            metrics={best: metrics[best]} if best and metrics is not None else None,
            privacy=self.privacy_record(step) if self.privacy_record else None,
            force=force,
        )

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def init_params_from(source, state, allow_vocab_resize=False):
    """`config.init_from`: matching parameters from another run / HF folder."""
    params, _ = init_from.init_from(source, state.params, allow_vocab_resize=allow_vocab_resize)
    return state.replace(params=params)


def save_tokenizer(tokenizer, workdir) -> str | None:
    """The tokenizer's files in WORKDIR/tokenizer (checkpoints copy them from there)."""
    if tokenizer is None or not hasattr(tokenizer, "save"):
        return None
    folder = os.path.join(workdir, "tokenizer")
    if jax.process_index() == 0 and not os.path.isdir(folder):
        tmp = folder + f".tmp{os.getpid()}"
        tokenizer.save(tmp)
        os.replace(tmp, folder)
    return folder
