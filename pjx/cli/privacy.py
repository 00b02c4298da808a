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
    from pjx import config as config_lib
    from pjx import privacy, resolution, run, sharding
    from pjx import workdir as workdir_lib
    from pjx.privacy import accounting

    config = config_lib.first_stage(config_lib.load(args.config, overrides))
    config = resolution.resolve_data(config)
    if not privacy.enabled(config.dp):
        raise ValueError(
            "dp is off in this config: set --config.dp.noise_multiplier=SIGMA or "
            "--config.dp.target_epsilon=EPSILON (and --config.dp.l2_norm_clip=C)"
        )
    tokenizer = None
    if not args.num_examples:  # N is the training table's rows: encode it as `pjx train` would
        tokenizer = workdir_lib.cached_tokenizer(config)
        config = resolution.resolve(config, tokenizer)
    mesh = sharding.make_mesh(config.mesh)
    inherited = ()
    if config.get("init_from"):  # its private steps on these rows count (pjx.privacy.inherit)
        inherited, why = run.inherited_privacy(config)
        print(why, flush=True)
    plan = run.plan_privacy(
        config, tokenizer, None, mesh, num_examples=args.num_examples, inherited=inherited
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
