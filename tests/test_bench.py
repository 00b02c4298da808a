"""`pjx bench`: the JSON last line, the FLOP / MFU arithmetic, the peak table, batches."""

import json
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pjx import bench, bench_from_config, cli
from pjx import config as config_lib
from pjx import plan as plan_lib

REQUIRED = ("tokens_per_s", "step_s", "compile_s", "params", "device", "backend", "jax")


@pytest.fixture
def tiny_config(tmp_path):
    p = tmp_path / "tiny.py"
    p.write_text(
        textwrap.dedent("""
        from pjx import config as config_lib

        def get_config(arg="bert"):
            c = config_lib.base_config()
            c.model.name, c.task = ("bert", "mlm") if arg == "bert" else ("gpt2", "clm")
            c.model.update(dict(num_layers=1, hidden_size=32, num_heads=2, mlp_dim=64,
                                vocab_size=64, max_position_embeddings=16))
            c.data.seq_len, c.batch_size = 16, 8
            c.progress = False
            return c
    """)
    )
    return str(p)


def _last_json(capsys):
    lines = capsys.readouterr().out.strip().splitlines()
    return lines, json.loads(lines[-1])


def test_cli_bench_prints_json_last_line(tiny_config, capsys):
    rc = cli.main(["bench", "--config", tiny_config + ":bert", "--steps", "2", "--warmup", "1"])
    assert rc == 0
    lines, r = _last_json(capsys)
    assert lines[-2].startswith("pjx bench bert/tiny mlm")
    for k in REQUIRED:
        assert k in r, k
    for k in ("tokens_per_s", "step_s", "compile_s", "params", "flops_per_token"):
        assert r[k] > 0, k
    assert r["batch_size"] == 8 and r["seq_len"] == 16 and r["steps"] == 2
    assert r["tokens_per_s"] == pytest.approx(8 * 16 / r["step_s"])
    assert r["step_s_min"] <= r["step_s"] <= r["step_s_max"]
    assert r["backend"] == "cpu" and "mfu" not in r  # no peak for a CPU
    assert np.isfinite(r["loss"])


def test_cli_bench_profile_traces_the_timed_steps(tiny_config, tmp_path, capsys):
    out = tmp_path / "prof"
    argv = ["bench", "--config", tiny_config + ":gpt2", "--steps", "2", "--warmup", "1",
            "--profile", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    _, r = _last_json(capsys)
    assert r["profile_dir"] == str(out)
    traces = list(out.rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_cli_bench_overrides_reach_the_model(tiny_config, capsys):
    argv = ["bench", "--config", tiny_config + ":gpt2", "--steps", "1", "--warmup", "0"]
    assert cli.main(argv + ["--config.model.num_layers=2", "--config.batch_size=16"]) == 0
    _, r = _last_json(capsys)
    assert r["model"] == "gpt2/tiny" and r["task"] == "clm" and r["batch_size"] == 16
    # GPT-2, 2 layers, D=32, F=64, V=64, P=16: wte + wpe + 2 blocks + ln_f.
    D, F, V, P = 32, 64, 64, 16
    block = 2 * D + (D * 3 * D + 3 * D) + (D * D + D) + 2 * D + (D * F + F) + (F * D + D)
    assert r["params"] == V * D + P * D + 2 * block + 2 * D
    assert r["matmul_params"] == r["params"] - P * D  # the position table is only looked up


def test_flops_per_token_by_hand():
    # 6N + 12 * layers * seq * hidden (PaLM appendix B).
    assert bench.flops_per_token(1000, 2, 8, 4) == 6 * 1000 + 12 * 2 * 8 * 4 == 6768
    # GPT-2 small (nanoGPT's count: 124M with wpe minus wpe = 123.65M), L=1024:
    n = 123_653_376
    expected = 6 * n + 12 * 12 * 1024 * 768
    assert bench.flops_per_token(n, 12, 1024, 768) == expected
    assert expected == 855_166_464


def test_mfu_by_hand():
    # 100k tokens/s x 1 GFLOP/token = 1e14 FLOP/s on one H100 SXM (989.4 TFLOP/s dense bf16).
    peak, key = bench.peak_tflops("NVIDIA H100 80GB HBM3")
    assert (peak, key) == (989.4, "H100")
    assert bench.mfu(1e5, 1e9, peak, 1) == pytest.approx(1e14 / 989.4e12)
    assert bench.mfu(2e5, 1e9, peak, 2) == pytest.approx(1e14 / 989.4e12)  # per device


@pytest.mark.parametrize(
    "kind, peak",
    [
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA A100-SXM4-40GB", 312.0),
        ("TPU v4", 275.0),
        ("TPU v5 lite", 197.0),
        ("TPU v5", 459.0),
        ("cpu", None),
    ],
)
def test_peak_table(kind, peak):
    assert bench.peak_tflops(kind)[0] == peak


@pytest.mark.parametrize(
    "model, task, keys",
    [
        ("bert", "mlm", {"input_ids", "attention_mask", "token_type_ids", "segment_ids"}),
        ("gpt2", "clm", {"input_ids", "segment_ids", "position_ids"}),
        ("t5", "span", {"input_ids"}),
        ("t5", "seq2seq", {"input_ids", "attention_mask", "labels", "decoder_attention_mask"}),
        ("bert", "classify", {"input_ids", "attention_mask", "token_type_ids", "label"}),
        ("vit", "classify", {"pixel_values", "label"}),
        ("vit", "contrastive", {"view_a", "view_b"}),
    ],
)
def test_synthetic_batch_keys(model, task, keys):
    from pjx import models

    c = config_lib.base_config()
    c.model.name, c.task, c.batch_size, c.data.seq_len = model, task, 4, 16
    c = bench_from_config.prepare_config(c)
    mcfg = models.make_config(
        model, "tiny", **{k: v for k, v in c.model.items() if k not in ("name", "size")}
    )
    b = bench.synthetic_batch(plan_lib.from_config(c), mcfg)
    assert keys <= set(b)
    assert all(len(v) == 4 for v in b.values())
    if "input_ids" in b:  # ids avoid the special ids and stay in the vocabulary
        assert b["input_ids"].min() >= bench.FIRST_ID and b["input_ids"].max() < mcfg.vocab_size


def test_vocab_from_train_spec_and_mlm_defaults():
    c = config_lib.base_config()
    c.data.tokenizer = "train:sentencepiece?vocab_size=512&model_type=unigram"
    c = bench_from_config.prepare_config(c)
    assert c.model.vocab_size == 512
    assert c.task_args.mask_id == 4 and tuple(c.task_args.special_ids) == (0, 1, 2, 3)
    c = config_lib.base_config()
    c.data.tokenizer = "wordpiece:/x/vocab.txt"  # a file: its own size, read when loaded
    assert bench_from_config.prepare_config(c).model.get("vocab_size") is None


def test_a_fine_tuning_bench_reads_its_sources_vocabulary():
    """With init_from, `pjx bench` times the model a run would train: the source's
    architecture and vocabulary (its tokenizer), not the size of the config's `train:` spec."""
    source = pathlib.Path(__file__).parent / "fixtures" / "dp_run_v1"
    c = config_lib.base_config()
    c.task, c.model.num_labels, c.init_from = "classify", 2, str(source)
    c.data.tokenizer = "train:sentencepiece?vocab_size=512&model_type=unigram"
    plan, tokenizer = bench_from_config.resolve(c)
    saved = json.loads((source / "config.json").read_text())["model"]
    assert tokenizer is not None and tokenizer.vocab_size == saved["vocab_size"] == 261
    assert plan.model.fields["vocab_size"] == 261
    assert plan.model.fields["hidden_size"] == saved["hidden_size"]


def test_compiled_step_is_the_step_bench_times(tiny_config):
    """`bench.compiled_step` (benchmarks/dp_overhead.py, cpu_step_profile.py) hands out the
    step `pjx bench` times: same batch, same initial state, so the same loss."""
    plan, tokenizer = bench_from_config.resolve(config_lib.load(tiny_config + ":gpt2", []))
    assert tokenizer is None and plan.model.fields["vocab_size"] == 64
    s, compiled, state, (batch,), _ = bench.compiled_step(plan, tokenizer=tokenizer)
    expected = bench.synthetic_batch(s.plan, s.model.config)
    assert set(batch) == set(expected)
    for k in expected:
        np.testing.assert_array_equal(np.asarray(batch[k]), expected[k])
    _, mets = compiled(state, batch)
    r = bench.run(plan, steps=1, warmup=0, num_batches=1)
    assert float(mets["loss"]) == pytest.approx(r["loss"], rel=1e-6)


# What the GPU benchmark host lacks (BENCHMARKS.md, GPU: it has jax, flax, optax, orbax,
# chex, sentencepiece, torch and transformers).
NOT_ON_THE_GPU_HOST = ("ml_collections", "grain", "tensorflow", "tensorflow_datasets")
ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_bench_runs_without_ml_collections_grain_or_tensorflow():
    """benchmarks/gpu_bench.py (what benchmarks/gpu.sh runs) measures a pjx step on a host
    where importing any of NOT_ON_THE_GPU_HOST fails: pjx.bench's timing core, the train
    step and the privacy checks it pulls in must not import them at module level."""
    code = textwrap.dedent(f"""
        import importlib.abc, runpy, sys

        class NotInstalled(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {NOT_ON_THE_GPU_HOST!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

        sys.meta_path.insert(0, NotInstalled())
        sys.argv = ["gpu_bench.py", "bert_base", "--tiny", "--attention", "xla",
                    "--dtype", "float32", "--steps", "1", "--warmup", "0"]
        runpy.run_path("benchmarks/gpu_bench.py", run_name="__main__")
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert "error" not in r, r
    assert r["tokens_per_s"] > 0 and r["task"] == "mlm" and r["attention_effective"] == "xla"
