"""Config loading, typed overrides, unknown-key errors, stages, and the CLI's handling."""

import textwrap

import pytest

from pjx import cli
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


def test_stages_in_order_with_overrides(cfg_file, tmp_path):
    c = config_lib.load(cfg_file)
    stages = config_lib.stage_configs(c, str(tmp_path), ["--config.seed=5"])
    assert [d for d, _ in stages] == [str(tmp_path / "a"), str(tmp_path / "b")]
    (_, a), (_, b) = stages
    assert a.steps == 3 and a.task == "clm" and a.seed == 5
    assert b.steps == 100 and b.task == "classify" and b.init_from == str(tmp_path / "a")
    assert not a.stages and not b.stages
