"""`pjx config --config FILE[:ARG] [--config.key=value ...]`: every key with its value.

References are resolved (warm-up from `steps`, ...); what a run adds from its tokenizer and
`init_from` (vocabulary size, architecture) is in WORKDIR/config.json of the run.
"""

from __future__ import annotations

from pjx.cli.common import add_config_argument


def add_arguments(p):
    add_config_argument(p)


def main(args, overrides) -> int:
    from pjx import config as config_lib
    from pjx import resolution

    for stage, cfg in config_lib.stage_configs(config_lib.load(args.config), "", overrides):
        if stage:
            print(f"# stage {stage}")
        print(config_lib.to_json(resolution.resolve_data(cfg)))
    return 0
