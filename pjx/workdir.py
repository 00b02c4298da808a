"""What a run's workdir holds beside its checkpoints: the tokenizer (built, trained or
reloaded), the data iterators read with it, the resolved config (WORKDIR/config.json) and
the fingerprint of the training rows a private run records.

    config = pjx.resolution.resolve_data(pjx.config.load("configs/glue.py:sst2,smoke"))
    tokenizer = pjx.workdir.build_tokenizer(config, "runs/sst2")
    plan = pjx.plan.from_config(pjx.resolution.complete(config, tokenizer))
    batches = pjx.workdir.build_data(plan, tokenizer, train=True, workdir="runs/sst2")
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import jax

from pjx import config as config_lib
from pjx import data, privacy, sharding, tokenizers
from pjx import plan as plan_lib
from pjx.checkpoint import saved
from pjx.data import cache, prepared, sources
from pjx.privacy import private_data
from pjx.uri import parse_uri

log = logging.getLogger(__name__)


def build_tokenizer(config, workdir: str | None = None):
    """The run's tokenizer (None if it needs none).

    Precedence: the one saved with `config.init_from` (a fine-tuned model must read text
    the way it was pretrained: a config's `data.tokenizer` is its default for runs without
    one, unless `allow_vocab_resize` says the vocabulary changes on purpose), then a
    tokenizer the config names (`sentencepiece:PATH`, `wordpiece:...`, `byte`), then a
    `train:...` spec, which trains on the training texts into WORKDIR/tokenizer on the
    first run and is reloaded from there on resume.
    """
    inherited = inherited_tokenizer(config)
    if inherited is not None:
        return inherited
    spec = config.data.get("tokenizer", "") or ""
    named = bool(spec) and not spec.startswith("train:")
    if named:
        return tokenizers.load(spec)
    if not spec:
        return None
    # What it is trained on: refused before training in a private run (pjx.privacy).
    trained_on = {"source": str(config.data.source)}
    if privacy.enabled(config.dp):
        private_data.check_vocabulary(config, trained_on)
    # A generator: the texts are read only if the tokenizer is trained now.
    texts = data.read_texts(config.data.source, config.data)
    return tokenizers.from_config(
        spec, workdir=workdir, family=config.model.name, texts=texts, trained_on=trained_on
    )


def inherited_tokenizer(config):
    """The tokenizer a run takes from the model it learns from, before its own
    `data.tokenizer`: task distill's teacher's (pjx.teacher refuses another), else the one
    `init_from`'s model was trained with (unless `allow_vocab_resize` lets a named
    tokenizer change the vocabulary). None when the run reads text its own way."""
    if config.get("task") == "distill" and config.distill.teacher:
        tok = saved.Saved(config.distill.teacher).tokenizer
        if tok is not None:
            return tok
    spec = config.data.get("tokenizer", "") or ""
    source = str(config.get("init_from") or "")
    named = bool(spec) and not spec.startswith("train:")
    folder = _pretrained_tokenizer(source, named) if source else None
    if folder is None or (named and config.get("allow_vocab_resize")):
        return None
    if named:
        log.info(
            f"tokenizer: {source}'s, which its model was trained with, not "
            f"data.tokenizer={spec!r} (set allow_vocab_resize=true to change the vocabulary)"
        )
    return tokenizers.load(str(folder))


def _pretrained_tokenizer(source: str, named: bool):
    """The folder of the tokenizer `init_from`'s model was trained with (a PEFT adapter's is
    its base model's). Where the config names a tokenizer of its own, None when the source
    brings none (a pjx checkpoint saved without one, a Hugging Face folder of weights only)."""
    model = saved.Saved(source)
    folder = model.tokenizer_dir
    if named and folder is not None and model.kind != "pjx":
        if not tokenizers.holds_tokenizer(folder):
            return None
    return folder


def cached_tokenizer(config, data_cfg=None):
    """The run's tokenizer for a command without a workdir (`pjx bench --data-only`,
    `pjx privacy`): a `train:` spec trains once into a folder of the data cache."""
    data_cfg = config.data if data_cfg is None else data_cfg
    spec = data_cfg.get("tokenizer", "") or ""
    key = f"{spec}|{data_cfg.source}|{config.model.name}"
    key = hashlib.sha256(key.encode()).hexdigest()[:12]
    return build_tokenizer(config, os.path.join(cache.root(data_cfg), f"bench-tokenizer-{key}"))


def build_data(plan: plan_lib.Plan, tokenizer, *, train: bool, workdir=None, mesh=None, seed=None):
    """Train: an infinite iterator with get_state/set_state; eval: a re-iterable. With
    `mesh`, this process produces the rows its devices hold of every global batch (else
    its equal share). `seed` replaces the run's seed for the order and sampling of rows
    (DP-SGD's secret seed)."""
    bs = plan.batch.rows if train else plan.batch.eval_rows
    rows = None if mesh is None else sharding.process_rows(sharding.batch_sharding(mesh, bs), bs)
    return data.build(
        data_spec(plan, train=train, seed=seed),
        tokenizer=tokenizer,
        batch_size=bs,
        train=train,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        rows=rows,
        workdir=workdir,
        poisson_rate=plan.batch.poisson_rate,
    )


def data_spec(plan: plan_lib.Plan, *, train: bool, seed=None) -> data.Spec:
    """What the run reads for training (`data`) or evaluation (`eval_data`), and how its
    task encodes it; `seed` replaces the run's seed (DP-SGD's secret seed)."""
    return data.Spec(
        plan.data if train else plan.eval_data,
        task=plan.task,
        task_args=plan.task_args,
        model=plan.model.family,
        seed=plan.loop.seed if seed is None else seed,
        num_labels=plan.num_labels,
    )


def count_examples(config, tokenizer, workdir=None) -> int:
    """Rows of the run's training data (cached table or prepared index): DP's N. Read
    while the DP-SGD plan is made, before the run has a Plan, so from the config."""
    spec = data.Spec(
        config.data,
        task=config.task,
        task_args=config.task_args.to_dict(),
        model=config.model.name,
        seed=config.seed,
        num_labels=int(config.model.get("num_labels", 0) or 0),
    )
    return data.num_rows(spec, tokenizer=tokenizer, workdir=workdir)


def saved_config(workdir) -> dict:
    """The resolved config WORKDIR/config.json saved at the last start ({} if none)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def data_fingerprint(data_cfg) -> str:
    """A hash of what the training source holds (its files' paths, sizes and times; a
    prepared folder's index), so that a replayed DP-SGD step is known to read the same rows."""
    u = parse_uri(str(data_cfg.source))
    if u.kind == "prepared":
        what = [prepared.load_index(u.path)]
    else:
        what = sources.fingerprint(u, data_cfg)
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def save_config(config, workdir) -> str:
    """WORKDIR/config.json: every value the run uses (process 0 writes)."""
    path = os.path.join(workdir, "config.json")
    if jax.process_index() == 0:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(config_lib.to_json(config) + "\n")
        os.replace(tmp, path)
    return path


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
