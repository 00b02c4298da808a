"""Task distill: the losses against references, the every_other init, a frozen teacher that
is a step argument (no gradient, no optimizer state, no checkpoint), exact resume, the
refusals (exit 2 through `pjx train`, nothing written), 8 devices == 1, scanned == unscanned."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pjx import checkpoint, cli, evaluation, losses, models, resolution, run, teacher, train
from pjx import config as config_lib
from pjx import plan as plan_lib
from pjx import workdir as workdir_lib
from pjx.checkpoint import saved
from pjx.models import bert
from pjx.tasks import distill

TINY = dict(hidden_size=32, num_heads=2, mlp_dim=64, max_position_embeddings=64)
FAST = ["--config.progress=false", "--config.write_curves=false"]


# ------------------------------------------------------------------------- losses
def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_distill_kl_is_t2_kl_of_tempered_softmaxes():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 3, 7)) * 3, rng.normal(size=(2, 3, 7)) * 3
    mask = np.array([[1, 1, 0], [1, 0, 1]], np.float32)
    T = 2.5
    lp, lq = _log_softmax(t / T), _log_softmax(s / T)
    kl = (np.exp(lp) * (lp - lq)).sum(-1) * T * T
    loss, m = losses.distill_kl(jnp.asarray(s), jnp.asarray(t), mask, temperature=T)
    np.testing.assert_allclose(loss, (kl * mask).sum() / mask.sum(), rtol=1e-5)
    assert float(m["count"]) == 4.0
    same, _ = losses.distill_kl(jnp.asarray(t), jnp.asarray(t), mask, temperature=T)
    assert abs(float(same)) < 1e-6


def test_cosine_and_mse_on_real_tokens():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 4, 5)), rng.normal(size=(2, 4, 5))
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], np.float32)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    loss, _ = losses.cosine_distance(jnp.asarray(a), jnp.asarray(b), mask)
    np.testing.assert_allclose(loss, ((1 - cos) * mask).sum() / mask.sum(), rtol=1e-5)
    loss, _ = losses.mean_squared_error(jnp.asarray(a), jnp.asarray(b), mask)
    mse = ((a - b) ** 2).mean(-1)
    np.testing.assert_allclose(loss, (mse * mask).sum() / mask.sum(), rtol=1e-5)


def test_attention_relations_match_a_loop_over_examples_heads_and_rows():
    """Across widths (student 8, teacher 12; 2 relation heads) against plain Python."""
    rng = np.random.default_rng(2)
    B, L, R = 2, 5, 2
    s = [rng.normal(size=(B, L, 8)) for _ in range(3)]
    t = [rng.normal(size=(B, L, 12)) * 2 for _ in range(3)]
    real = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], np.float32)
    keys = (real[:, None, :] > 0) & np.ones((B, L, L), bool)
    total = count = 0.0
    for b in range(B):
        for i in range(L):
            if not real[b, i]:
                continue
            row = 0.0
            for xs, xt in zip(s, t):
                for r in range(R):
                    ks = real[b] > 0
                    kl = 0.0
                    probs = []
                    for x in (xt, xs):
                        d = x.shape[-1] // R
                        h = x[b, :, r * d : (r + 1) * d]
                        score = h[i] @ h[ks].T / np.sqrt(d)
                        probs.append(np.exp(_log_softmax(score)))
                    p, q = probs
                    kl = float((p * (np.log(p) - np.log(q))).sum())
                    row += kl / R / 3
            total += row
            count += 1
    loss, m = losses.attention_relations(
        [jnp.asarray(x) for x in s], [jnp.asarray(x) for x in t], keys, real, num_heads=R
    )
    np.testing.assert_allclose(loss, total / count, rtol=1e-4)
    assert float(m["count"]) == count


def test_losses_spec_parses_strings_and_mappings_and_names_bad_terms():
    assert distill.parse_losses("logits:5, hidden_cosine:1,mlm") == (
        ("logits", 5.0),
        ("hidden_cosine", 1.0),
        ("mlm", 1.0),
    )
    assert distill.parse_losses({"attention_relations": 2}) == (("attention_relations", 2.0),)
    with pytest.raises(ValueError, match="distill.losses: unknown term 'logit'"):
        distill.parse_losses("logit:1")
    with pytest.raises(ValueError, match="distill.losses"):
        distill.parse_losses("mlm:x")


def test_scanned_and_unscanned_bert_sow_the_same_internals():
    kw = dict(TINY, num_layers=3, vocab_size=40, sow_internals=True)
    flat = models.create("bert", None, **kw)
    scan = models.create("bert", None, **kw, scan_layers=True)
    inputs = models.example_inputs("bert", flat.config, 2, 8)
    inputs["input_ids"] = jax.random.randint(jax.random.key(1), (2, 8), 0, 40)
    p = nn.meta.unbox(flat.init(jax.random.key(0), **inputs)["params"])
    enc = p["bert"]["encoder"]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *[enc[f"layer_{i}"] for i in range(3)])
    ps = {**p, "bert": {**p["bert"], "encoder": {"layer": stacked}}}
    a = flat.apply({"params": p}, **inputs, mutable=["intermediates"])[1]["intermediates"]
    b = scan.apply({"params": ps}, **inputs, mutable=["intermediates"])[1]["intermediates"]
    a, b = bert.internals(a, flat.config), bert.internals(b, scan.config)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5)
    assert "intermediates" not in flat.apply({"params": p}, **inputs)  # sown only if asked


# ------------------------------------------------------------------------ teacher
def _teacher_run(workdir, seed=0, layers=4):
    c = config_lib.base_config()
    c.model.update(dict(TINY, num_layers=layers, dropout_rate=0.0, attention_dropout_rate=0.0))
    c.data.source, c.data.seq_len = "embedded[:200]", 16
    c.data.tokenizer = "byte?specials=bert"
    c.batch_size, c.steps, c.seed, c.log_every = 4, 1, seed, 1
    run.train(c, str(workdir), FAST)
    return workdir


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    return _teacher_run(root / "a"), _teacher_run(root / "b", seed=1)


def _student(teacher_dir, **kw):
    c = config_lib.base_config()
    c.task = "distill"
    c.model.update(dict(dropout_rate=0.0, attention_dropout_rate=0.0))
    c.distill.teacher = str(teacher_dir)
    c.distill.losses = "logits:5,hidden_cosine:1,attention_relations:1,embedding:1,mlm:2"
    c.data.source, c.data.seq_len = "embedded[:200]", 16
    c.batch_size, c.steps, c.log_every = 4, 2, 1
    for k, v in kw.items():
        config_lib.set_key(c, k, v, parse=False)
    return c


def _cli(config_file, workdir, *extra):
    return cli.main(["train", "--config", config_file, "--workdir", str(workdir), *FAST, *extra])


@pytest.fixture
def config_file(tmp_path, teachers):
    path = tmp_path / "distill_cfg.py"
    here, teacher_dir = os.path.dirname(__file__), str(teachers[0])
    path.write_text(
        f"import sys\nsys.path.insert(0, {here!r})\nfrom test_distill import _student\n"
        f"def get_config(arg=''):\n    return _student({teacher_dir!r})\n"
    )
    return str(path)


def test_every_other_copies_teacher_layers_and_the_teacher_stays_out_of_the_state(
    teachers, tmp_path
):
    c = _student(teachers[0])
    with run.start(c, str(tmp_path / "w"), checkpoints=False) as r:
        s, state = r.setup, r.state
        assert r.config.model.num_layers == 2  # half the teacher's 4 by default
        t = saved.Saved(teachers[0]).params(like=s.abstract_frozen[0])
        sp, tp = state.params["bert"], t["bert"]
        for i in range(2):
            jax.tree.map(
                np.testing.assert_array_equal,
                sp["encoder"][f"layer_{i}"],
                tp["encoder"][f"layer_{2 * i}"],
            )
        jax.tree.map(np.testing.assert_array_equal, sp["embeddings"], tp["embeddings"])
        jax.tree.map(np.testing.assert_array_equal, state.params["cls"], t["cls"])
        # The teacher is a step argument: not in the params, nor the optimizer state.
        n = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
        assert n(state.opt_state) < 3 * n(state.params) < 3 * n(t)
        assert jax.tree.structure(state.params) != jax.tree.structure(t)
        # No gradient reaches the teacher.
        batch = next(iter(r.train_data))
        g = jax.grad(
            lambda tp_: s.loss_fn(s.model, state.params, batch, jax.random.key(0), tp_, train=True)[
                0
            ]  # fmt: skip
        )(s.frozen[0])
        assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g))
    saved_cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    assert saved_cfg["distill"]["teacher_hash"] == teacher.param_hash(t)


def test_resume_is_exact_and_the_checkpoint_holds_no_teacher(
    teachers, tmp_path, config_file, capsys
):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _cli(config_file, straight) == 0
    assert _cli(config_file, resumed, "--config.steps=1") == 0
    assert _cli(config_file, resumed) == 0
    read = lambda w: saved.Saved(str(w)).params()  # noqa: E731
    jax.tree.map(np.testing.assert_array_equal, read(straight), read(resumed))
    meta = checkpoint.state_metadata(checkpoint.resolve(straight / "checkpoints"))
    student = workdir_lib.saved_config(straight)["model"]
    n_params = sum(np.prod(m.shape) for m in jax.tree.leaves(meta["params"]))
    assert n_params == sum(x.size for x in jax.tree.leaves(read(straight)))
    assert student["num_layers"] == 2 and "teacher" not in json.dumps(list(meta))
    # A resume with another teacher: refused, naming the key, before anything is written.
    before = (resumed / "config.json").read_text()
    capsys.readouterr()
    rc = _cli(config_file, resumed, "--config.steps=3", f"--config.distill.teacher={teachers[1]}")
    assert rc == 2 and "trained with another teacher" in capsys.readouterr().err
    assert (resumed / "config.json").read_text() == before
    assert sorted(checkpoint.complete_step_dirs(resumed / "checkpoints")) == [1, 2]
    # `pjx eval` of the student runs its distillation loss against the same teacher.
    mets = evaluation.evaluate(str(straight), "embedded[200:260]", devices=jax.devices()[:1])
    last = [json.loads(x) for x in open(straight / "metrics.jsonl")][-1]
    assert np.isfinite(mets["loss"]) and mets.keys() >= {k for k in last if k.startswith("mlm")}


def _gpt2_folder(path):
    from safetensors.numpy import save_file

    path.mkdir()
    cfg = dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64)
    (path / "config.json").write_text(json.dumps(dict(cfg, architectures=["GPT2LMHeadModel"])))
    save_file({"wte.weight": np.zeros((100, 32), np.float32)}, str(path / "model.safetensors"))
    return path


def test_bad_input_exits_2_naming_the_key_before_the_workdir_exists(
    teachers, tmp_path, config_file, capsys, minilm_dir
):
    cases = [
        ([f"--config.distill.teacher=hf:{_gpt2_folder(tmp_path / 'gpt2')}"], "distill.teacher"),
        (["--config.model.hidden_size=64"], "model.hidden_size"),
        (["--config.model.num_layers=3"], "model.num_layers"),
        (
            ["--config.distill.student_init=random", "--config.model.hidden_size=64"],
            "distill.losses: term 'embedding'",
        ),  # fmt: skip
        ([f"--config.distill.teacher=hf:{minilm_dir}"], "distill.losses: term 'logits'"),
        (["--config.data.tokenizer=byte"], "data.tokenizer"),
        (["--config.data.tokenizer=train:sentencepiece?vocab_size=300"], "data.tokenizer"),
        (
            [
                "--config.distill.losses=hidden_cosine:1,attention_relations:1",
                "--config.distill.relation_heads=3",
            ],
            "distill.relation_heads",
        ),  # fmt: skip
    ]
    for i, (extra, key) in enumerate(cases):
        w = tmp_path / f"w{i}"
        capsys.readouterr()
        assert _cli(config_file, w, *extra) == 2, extra
        assert key in capsys.readouterr().err, (extra, key)
        assert not w.exists()


def test_random_student_across_widths_with_relations_only(teachers, tmp_path):
    c = _student(
        teachers[0],
        **{
            "distill.student_init": "random",
            "distill.losses": "attention_relations:1,mlm:1",
            "model.hidden_size": 16,
            "model.num_heads": 2,
            "model.mlp_dim": 32,
            "model.num_layers": 1,
            "steps": 1,
        },
    )
    run.train(c, str(tmp_path / "w"), FAST)
    line = json.loads((tmp_path / "w" / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(line["loss"])


def test_a_narrower_student_compares_hidden_states_through_a_learned_projection(teachers, tmp_path):
    """TinyBERT's W_h: a 16-wide student of a 32-wide teacher learns `distill_projection`
    [16, 32], and hidden_cosine is 1 - cos(h_student W + b, h_teacher) on real tokens (a
    numpy computation here); a classifier fine-tuned from the student drops the projection."""
    widths = {"model.hidden_size": 16, "model.num_heads": 2, "model.mlp_dim": 32}
    c = _student(
        teachers[0],
        **widths,
        **{
            "distill.student_init": "random",
            "distill.losses": "hidden_cosine:1,attention_relations:1,mlm:1",
            "model.num_layers": 1,
        },
    )
    with run.start(c, str(tmp_path / "w"), checkpoints=False) as r:
        s, params = r.setup, r.state.params
        assert r.config.model.distill_width == 32
        proj = params["distill_projection"]
        assert proj["kernel"].shape == (16, 32) and proj["bias"].shape == (32,)
        batch = {k: np.asarray(v) for k, v in next(iter(r.train_data)).items()}
        _, mets = s.loss_fn(s.model, params, batch, jax.random.key(0), s.frozen[0], train=False)
        # The same masked input through both models, read back by hand.
        names = ("mask_id", "vocab_size", "special_ids", "pad_id", "mask_rate",
                 "max_predictions")  # fmt: skip
        key = jax.random.split(jax.random.key(0))[0]
        args = {n: s.loss_fn.keywords[n] for n in names}
        m = distill.Distill.mask(key, batch["input_ids"], **args)
        h_s = s.model.apply({"params": params}, m["input_ids"], batch["attention_mask"])
        h_t = s.frozen_models[0].apply({"params": s.frozen[0]}, m["input_ids"],
                                       batch["attention_mask"])  # fmt: skip
        h_s, h_t = np.asarray(h_s["last_hidden_state"]), np.asarray(h_t["last_hidden_state"])
        p = h_s @ np.asarray(proj["kernel"]) + np.asarray(proj["bias"])
        cos = (p * h_t).sum(-1) / np.linalg.norm(p, axis=-1) / np.linalg.norm(h_t, axis=-1)
        real = np.asarray(batch["attention_mask"], bool)
        want = np.sum((1 - cos)[real])
        np.testing.assert_allclose(float(mets["hidden_cosine_loss_sum"]), want, rtol=1e-4)
    run.train(c, str(tmp_path / "w"), FAST)
    f = config_lib.base_config()
    f.task, f.model.num_labels, f.init_from = "classify", 2, str(tmp_path / "w")
    f.data.source, f.data.seq_len, f.batch_size = "embedded:classify", 16, 4
    with run.start(f, str(tmp_path / "f"), checkpoints=False) as r:
        assert "distill_projection" not in r.state.params
        assert not r.config.model.distill_width


def test_a_config_saved_before_a_new_model_field_resolves_again(teachers):
    """`pjx eval` / a resume re-resolve a saved config: its teacher, written before a model
    field existed (here distill_width), is derived again, not compared with the old copy."""
    c = resolution.resolve(_student(teachers[0]))
    for block in (c.task_args, c.distill):
        del block.teacher_model["distill_width"]  # as an older version saved it
    again = resolution.complete(c)
    assert again.distill.teacher_model.distill_width == 0
    assert "teacher_model" not in again.task_args or again.task_args.teacher_model == (
        again.distill.teacher_model
    )


def test_a_private_student_trains_and_audits_with_its_teacher(teachers, tmp_path):
    """DP-SGD on rows the teacher never saw (it trained on embedded[:200]): the step takes
    the teacher as in plain distillation, and `pjx audit` runs the same step. On the
    teacher's own rows it is refused: the teacher trained on them without DP, and the
    student would learn them from its outputs."""
    from pjx.privacy import audit

    dp = {"dp.noise_multiplier": 1.0, "dp.delta": 1e-5, "data.pack": "none", "steps": 2}
    with pytest.raises(ValueError, match="distill.teacher=.*trained without DP-SGD.*holds 200"):
        run.train(_student(teachers[0], **dp), str(tmp_path / "same"), FAST)
    assert not (tmp_path / "same" / "checkpoints").exists()
    dp["data.source"] = "embedded[300:500]"
    run.train(_student(teachers[0], **dp), str(tmp_path / "w"), FAST, devices=jax.devices()[:1])
    lines = [json.loads(x) for x in open(tmp_path / "w" / "metrics.jsonl")]
    train_lines = [x for x in lines if x["split"] == "train"]
    assert [x["step"] for x in train_lines] == [1, 2]  # DP lines: released values only
    assert all(x["dp_epsilon"] > 0 and "loss" not in x for x in train_lines)
    r = audit.audit(
        _student(teachers[0], **dp), str(tmp_path / "a"), canaries=100,
        devices=jax.devices()[:1],
    )  # fmt: skip
    assert r["canaries"] == 100 and r["verdict"] in ("consistent", "inconclusive"), r


# ------------------------------------------------------------------ layouts, devices
def _setup(c, tokenizer, devices=None):
    s = train.build(plan_lib.from_config(c), tokenizer=tokenizer, devices=devices)
    t = saved.Saved(c.distill.teacher).params(like=s.abstract_frozen[0])
    return train.with_frozen(s, (t,))


def test_eight_devices_equal_one_and_scanned_equals_unscanned(teachers):
    from pjx import sharding

    c = resolution.resolve_data(_student(teachers[0], batch_size=8))
    tok = workdir_lib.build_tokenizer(c)
    c = resolution.resolve(c, tok)
    batch = next(iter(workdir_lib.build_data(plan_lib.from_config(c), tok, train=True)))
    results = {}
    for name, cfg, devices in [
        ("one", c, jax.devices()[:1]),
        ("eight", c, jax.devices()[:8]),
        ("scan", resolution.resolve(_student_scanned(teachers[0]), tok), jax.devices()[:1]),
    ]:
        s = _setup(cfg, tok, devices)
        state = run.fresh_state(s, cfg)
        with sharding.context(s.mesh):
            gb = sharding.global_batch(batch, s.batch_sharding)
            state, mets = s.step_fn(state, gb, *s.frozen)
        results[name] = (float(mets["loss"]), state)
    assert len(jax.devices()) == 8
    (l1, s1), (l8, s8) = results["one"], results["eight"]
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)  # noqa: E731
    close(l8, l1)
    jax.tree.map(close, s1.params, s8.params)
    # The scanned student starts from the same teacher layers (stacked): the same step.
    ls, ss = results["scan"]
    close(ls, l1)
    close(ss.params["bert"]["encoder"]["layer"]["output"]["dense"]["kernel"][1],
          s1.params["bert"]["encoder"]["layer_1"]["output"]["dense"]["kernel"])  # fmt: skip


def _student_scanned(teacher_dir):
    c = _student(teacher_dir, batch_size=8)
    c.model.scan_layers = True
    return resolution.resolve_data(c)
