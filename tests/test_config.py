"""Config loading, typed overrides, unknown-key errors, stages, and the CLI's handling."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pjx import cli, resolution
from pjx import config as config_lib


@pytest.fixture
def cfg_file(tmp_path):
    p = tmp_path / "c.py"
    p.write_text(
        textwrap.dedent("""
        from pjx import config as config_lib

        def get_config(arg=None):
            c = config_lib.base_config()
            c.model.name = "gpt2"
            c.task = "clm"
            c.steps = 100 if arg != "smoke" else 2
            c.stages = (("a", {"steps": 3}), ("b", {"task": "classify", "init_from": "stage:a"}))
            return c
    """)
    )
    return str(p)


def test_load_with_arg_and_typed_overrides(cfg_file):
    c = config_lib.load(
        cfg_file + ":smoke",
        [
            "--config.optimizer.lr=3e-4",
            "--config.steps=7",
            "--config.progress=false",
            "config.data.source=text:/x/*.txt",
        ],
    )
    assert c.steps == 7 and isinstance(c.steps, int)
    assert c.optimizer.lr == 3e-4 and isinstance(c.optimizer.lr, float)
    assert c.progress is False and c.data.source == "text:/x/*.txt"
    # None-typed fields take a Python literal.
    c = config_lib.apply_overrides(c, ["--config.optimizer.end_lr_fraction=0.1"])
    assert c.optimizer.end_lr_fraction == 0.1
    # Model fields not in the file are checked against the family's Config dataclass.
    c = config_lib.apply_overrides(c, ["--config.model.num_layers=3"])
    assert c.model.num_layers == 3
    assert config_lib.load(cfg_file).steps == 100


def test_unknown_key_lists_close_keys(cfg_file):
    c = config_lib.load(cfg_file)
    with pytest.raises(config_lib.ConfigError, match="optimizer.lr") as e:
        config_lib.apply_overrides(c, ["--config.optimizer.lrr=1"])
    assert "unknown config key 'optimizer.lrr'" in str(e.value)
    with pytest.raises(config_lib.ConfigError, match="model.num_layers"):
        config_lib.apply_overrides(c, ["--config.model.num_layer=2"])
    with pytest.raises(config_lib.ConfigError, match="cannot parse"):
        config_lib.apply_overrides(c, ["--config.steps=ten"])


def test_cli_unknown_key_fails_fast(cfg_file, tmp_path, capsys):
    rc = cli.main(
        ["train", "--config", cfg_file, "--workdir", str(tmp_path / "w"), "--config.batch_sise=4"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "batch_size" in err and "unknown config key" in err
    assert not (tmp_path / "w").exists()


def test_a_count_out_of_range_names_the_key_before_the_workdir_exists(cfg_file, tmp_path, capsys):
    w = tmp_path / "w"
    rc = cli.main(["train", "--config", cfg_file, "--workdir", str(w), "--config.batch_size=-4"])
    assert rc == 2
    assert "batch_size=-4: must be an integer >= 1 (examples per step" in capsys.readouterr().err
    assert not w.exists()
    c = config_lib.apply_overrides(config_lib.base_config(), ["--config.eval_steps=-1"])
    with pytest.raises(config_lib.ConfigError, match=r"eval_steps=-1: must be an integer >= 0"):
        resolution.resolve_data(c)
    for key in ("keep_checkpoints", "log_every"):  # read as they are: no silent default
        c = config_lib.apply_overrides(config_lib.base_config(), [f"--config.{key}=0"])
        with pytest.raises(config_lib.ConfigError, match=rf"{key}=0: must be an integer >= 1"):
            resolution.resolve_data(c)


def test_first_stage_is_the_first_stage_or_the_config(cfg_file):
    c = config_lib.load(cfg_file)
    (_, first), _ = config_lib.stage_configs(c, "", ())
    assert config_lib.first_stage(c).to_dict() == first.to_dict()
    plain = config_lib.base_config()
    assert config_lib.first_stage(plain) is plain


def test_stages_in_order_with_overrides(cfg_file, tmp_path):
    c = config_lib.load(cfg_file)
    stages = config_lib.stage_configs(c, str(tmp_path), ["--config.seed=5"])
    assert [d for d, _ in stages] == [str(tmp_path / "a"), str(tmp_path / "b")]
    (_, a), (_, b) = stages
    assert a.steps == 3 and a.task == "clm" and a.seed == 5
    assert b.steps == 100 and b.task == "classify" and b.init_from == str(tmp_path / "a")
    assert not a.stages and not b.stages


GLUE = str(Path(__file__).resolve().parents[1] / "configs" / "glue.py")


def test_values_derived_from_steps_follow_the_command_line():
    """`--config.steps=500` on GLUE SST-2: 10% warm-up of the 500 steps, not of the file's
    5,000 (the derived values are references, resolved after the overrides)."""
    c = resolution.resolve_data(config_lib.load(GLUE + ":sst2", ["--config.steps=500"]))
    assert (c.steps, c.optimizer.warmup_steps, c.eval_every, c.checkpoint_every) == (
        500,
        50,
        100,
        100,
    )
    c = resolution.resolve_data(config_lib.load(GLUE + ":sst2"))
    assert (c.optimizer.warmup_steps, c.eval_every) == (500, 1000)
    # An explicit value replaces the rule; the rest keep following `steps`.
    c = config_lib.load(GLUE + ":sst2", ["--config.optimizer.warmup_steps=7", "--config.steps=50"])
    c = resolution.resolve_data(c)
    assert (c.optimizer.warmup_steps, c.eval_every) == (7, 10)


@pytest.mark.parametrize(
    "spec",
    [
        "bert_mlm.py",
        "gpt2_lm.py:shakespeare_char",
        "t5_span.py",
        "vit_cls.py",
        "vit_simclr.py",
        "quickstart.py",
        "glue.py:rte",
    ],
)
def test_no_config_derives_from_the_steps_in_its_file(spec):
    """Every shipped config's schedule fields scale with --config.steps."""
    path = str(Path(GLUE).parent / spec.split(":")[0]) + spec[len(spec.split(":")[0]) :]
    for steps in (400, 4000):
        c = config_lib.load(path, [f"--config.steps={steps}"])
        for _, s in config_lib.stage_configs(c, "", ()) if c.stages else [("", c)]:
            s = resolution.resolve_data(s)
            if s.get("stages"):
                continue
            assert 0 < s.optimizer.warmup_steps <= steps // 5, (spec, steps)
            for every in (s.eval_every, s.checkpoint_every):
                assert every == 0 or every <= steps, (spec, steps)


def test_eval_data_inherits_data_unless_set():
    c = config_lib.base_config()
    c.data.seq_len, c.eval_data.source = 64, "embedded"
    c = config_lib.apply_overrides(c, ["--config.data.pack=stream"])
    r = resolution.resolve_data(c)
    assert (r.eval_data.seq_len, r.eval_data.pack, r.eval_data.source) == (64, "stream", "embedded")
    assert "tokenizer" not in r.eval_data  # one tokenizer per run
    r = resolution.resolve_data(config_lib.apply_overrides(c, ["--config.eval_data.seq_len=128"]))
    assert (r.data.seq_len, r.eval_data.seq_len) == (64, 128)
    with pytest.raises(config_lib.ConfigError, match="eval_data.seq_le"):
        config_lib.apply_overrides(c, ["--config.eval_data.seq_le=1"])


def test_unknown_key_names_close_keys_and_where_the_full_list_is():
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.apply_overrides(config_lib.base_config(), ["--config.optimizer.lrr=1"])
    msg = str(e.value)
    assert "optimizer.lr" in msg and "pjx config --config FILE" in msg
    assert "mesh.tensor" not in msg and msg.count(",") < 6  # the close keys, not all


def test_pjx_config_prints_every_key(capsys):
    assert cli.main(["config", "--config", GLUE + ":sst2", "--config.steps=500"]) == 0
    c = json.loads(capsys.readouterr().out)
    assert c["optimizer"]["warmup_steps"] == 50 and c["eval_data"]["seq_len"] == 128


def test_pytest_prints_its_summary_line(tmp_path):
    """The README's test command (`pytest -q`) must end with "N passed": the project's
    addopts must not add a second -q."""
    test = tmp_path / "test_one.py"
    test.write_text("def test_ok():\n    pass\n")
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)]
    cmd += ["-c", str(root / "pyproject.toml"), "--rootdir", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120).stdout
    assert re.search(r"\b1 passed\b", out), out
