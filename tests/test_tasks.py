"""pjx.tasks: every task's pipeline batches match its batch spec (keys, shapes, dtypes),
synthetic batches too; the model fields a task implies; and a task defined in one module
(here, in this file) trains end to end with nothing else changed."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from data_fixtures import ByteTok, lm_config, write_docs, write_idx

from pjx import bench, data, losses, models, packing, resolution, run, tasks
from pjx import config as config_lib
from pjx import plan as plan_lib
from pjx.tasks import base

B, L = 4, 16


def _sources(tmp_path):
    write_docs(tmp_path / "docs.txt", n_docs=80)
    (tmp_path / "cls.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"a film number {i}\t{i % 2}\n" for i in range(20))
    )
    return {
        "text": f"text:{tmp_path}/docs.txt",
        "tsv": f"tsv:{tmp_path}/cls.tsv",
        "idx": f"idx:{write_idx(tmp_path / 'mnist', n=24)}",
    }


CASES = [  # task, family, source kind, task_args, model fields
    ("mlm", "bert", "text", {}, {}),
    ("mlm", "bert", "text", {"nsp": True}, {}),
    ("clm", "gpt2", "text", {}, {}),
    ("span", "t5", "text", {}, {}),
    ("seq2seq", "t5", "tsv", {}, {}),
    ("classify", "bert", "tsv", {}, {"num_labels": 2}),
    (
        "classify",
        "vit",
        "idx",
        {},
        {"num_labels": 10, "image_size": 28, "patch_size": 4, "num_channels": 1},
    ),
    (
        "contrastive",
        "vit",
        "idx",
        {},
        {"projection_dim": 8, "image_size": 28, "patch_size": 4, "num_channels": 1},
    ),
]


@pytest.mark.parametrize("task, family, kind, args, fields", CASES)
def test_pipeline_and_synthetic_batches_match_the_spec(tmp_path, task, family, kind, args, fields):
    t = tasks.get(task)
    cfg = lm_config(source=_sources(tmp_path)[kind], seq_len=L, cache_dir=str(tmp_path / "c"))
    if task == "seq2seq":
        cfg.target_len = 4
    mcfg = models.make_config(family, "tiny", **fields, **t.model_fields(family, t.args(args)))
    spec = t.batch_spec(B, cfg, mcfg, t.args(args))
    it = data.build(
        data.Spec(
            cfg, task=task, task_args=args, model=family, num_labels=getattr(mcfg, "num_labels", 0)
        ),
        tokenizer=ByteTok(),
        batch_size=B,
        train=True,
    )
    batch = next(it)
    got = {k: (v.shape, str(v.dtype)) for k, v in batch.items()}
    assert got == {k: (tuple(s.shape), s.dtype) for k, s in spec.items()}
    c = config_lib.base_config()
    c.model.name, c.task, c.batch_size, c.data = family, task, B, cfg
    c.task_args = ml_collections.ConfigDict(args)
    synthetic = bench.synthetic_batch(plan_lib.from_config(c), mcfg)
    assert {k: (v.shape, str(v.dtype)) for k, v in synthetic.items()} == got


def test_task_decides_its_heads_and_refuses_a_contradiction():
    c = config_lib.base_config()
    c.model.name, c.task, c.model.vocab_size = "bert", "mlm", 64
    c.task_args.nsp = True
    r = resolution.resolve(c)
    assert (r.model.mlm_head, r.model.nsp_head) == (True, True)
    c.task, c.model.num_labels = "classify", 3
    del c.task_args["nsp"]
    r = resolution.resolve(c)
    assert (r.model.mlm_head, r.model.nsp_head, r.model.num_labels) == (False, False, 3)
    c.model.nsp_head = True
    with pytest.raises(config_lib.ConfigError, match="model.nsp_head=True contradicts task"):
        resolution.resolve(c)
    c.model.name = "gpt2"
    with pytest.raises(config_lib.ConfigError, match="runs on model families"):
        resolution.resolve(c)


def test_unknown_task_arg_lists_the_valid_ones():
    c = config_lib.base_config()
    with pytest.raises(config_lib.ConfigError, match="task_args.mask_rat"):
        config_lib.apply_overrides(c, ["--config.task_args.mask_rat=0.2"])
    c = config_lib.apply_overrides(c, ["--config.task_args.nsp=true"])
    assert c.task_args.nsp is True


# ------------------------------------------------------------------ a task in one module
class LastToken(base.Task):
    """Predict the last token of every row from the rest (a toy objective)."""

    name = "last_token"
    families = ("gpt2",)
    defaults = {}

    def loss(self, model, params, batch, rng, *, train):
        ids = batch["input_ids"]
        logits = base.apply(model, params, rng, train, ids[:, :-1])["logits"][:, -1]
        return losses.cross_entropy(logits, ids[:, -1], base.weight(batch, ids.shape[0]))

    def finalize(self, m):
        return {"loss": float(m["loss_sum"]) / max(float(m["count"]), 1e-12)}

    def encode(self, ex, tokenizer, data_cfg, args, seed):
        docs = packing.tokenize(tokenizer, packing.documents(ex))
        return packing.concat_rows(docs, int(data_cfg.seq_len))

    def batch_spec(self, batch_size, data_cfg, model_config, args):
        return base.ids_spec(batch_size, int(data_cfg.seq_len), "input_ids")


def test_a_new_task_is_one_module(tmp_path, monkeypatch):
    monkeypatch.setitem(tasks.TASKS, "last_token", LastToken())
    c = config_lib.base_config()
    c.model.name, c.task = "gpt2", "last_token"
    c.data.source, c.eval_data.source = "embedded[:90%]", "embedded[90%:]"
    c.data.tokenizer, c.data.seq_len = "byte", L
    c.batch_size, c.steps, c.eval_steps, c.progress = 4, 2, 1, False
    c.model.update(dict(num_layers=1, max_position_embeddings=L))
    last = run.train(c, str(tmp_path), checkpoints=False, devices=jax.devices()[:1])
    assert last["split"] == "eval" and np.isfinite(last["loss"])
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["task"] == "last_token" and saved["model"]["vocab_size"] == 256
    assert jnp.isfinite(last["loss"])
