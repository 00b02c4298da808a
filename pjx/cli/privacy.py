"""`pjx privacy --config FILE[:ARG] [--config.key=value ...]`: a DP-SGD config's privacy
budget without training. The last line is one JSON object: `epsilon`, `delta`,
`noise_multiplier`, `steps`, `sampling_rate` (and N, the batch sizes, the accountant).

    pjx privacy --config configs/glue.py:sst2,dp                        # epsilon of the plan
    pjx privacy --config configs/glue.py:sst2,dp --config.dp.target_epsilon=3 \\
        --config.dp.noise_multiplier=0                                  # sigma for epsilon 3
    pjx privacy --config configs/glue.py:sst2,dp --max-steps-for 8      # steps within epsilon 8

N is the number of rows of the training table, which the data pipeline encodes (and caches)
as `pjx train` does; `--num-examples N` skips that.
"""

from __future__ import annotations

import json

from pjx.cli.common import add_config_argument


def add_arguments(p):
    add_config_argument(p)
    p.add_argument("--num-examples", type=int, help="N (default: the training table's rows)")
    p.add_argument(
        "--max-steps-for", type=float, metavar="EPSILON", help="also: the most steps within it"
    )


def main(args, overrides) -> int:
    from pjx import accounting, privacy, sharding
    from pjx import config as config_lib
    from pjx import workdir as workdir_lib
    from pjx.cli.bench import first_stage, pipeline_tokenizer

    config = config_lib.resolve_data(first_stage(config_lib.load(args.config, overrides)))
    if not privacy.enabled(config.dp):
        raise ValueError(
            "dp is off in this config: set --config.dp.noise_multiplier=SIGMA or "
            "--config.dp.target_epsilon=EPSILON (and --config.dp.l2_norm_clip=C)"
        )
    n = args.num_examples
    if not n:  # N is the training table's rows: encode it as `pjx train` would
        tokenizer = pipeline_tokenizer(config, config.data)
        n = workdir_lib.num_examples(config_lib.resolve(config, tokenizer), tokenizer)
    mesh = sharding.make_mesh(config.mesh)
    multiple = sharding.batch_devices(mesh) * int(config.optimizer.accum_steps or 1)
    plan = privacy.plan(
        config.dp,
        num_examples=n,
        batch_size=config.batch_size,
        steps=config.steps,
        multiple=multiple,
    )
    print(plan.describe(), flush=True)
    result = plan.to_dict()
    if args.max_steps_for:
        result["max_steps_for_epsilon"] = args.max_steps_for
        s = plan.current
        result["max_steps"] = accounting.steps_for(
            args.max_steps_for, s.noise_multiplier, s.sampling_rate, plan.delta, plan.accountant
        )
        print(f"at most {result['max_steps']} steps stay within epsilon {args.max_steps_for}")
    print(json.dumps(result), flush=True)
    return 0
