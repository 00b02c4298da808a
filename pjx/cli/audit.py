"""`pjx audit --config FILE[:ARG] [--config.key=value ...] [--canaries M] [--workdir DIR]`:
trains a DP-SGD config once with gradient canaries and prints, as its last line, one JSON
object: `epsilon` (claimed), `epsilon_lower_bound` (empirical, 95% confidence),
`canaries` (pjx.audit: Steinke, Nasr and Jagielski 2023).

    pjx audit --config configs/glue.py:sst2,dp,smoke --config.steps=50
"""

from __future__ import annotations

import json
import tempfile

from pjx.cli.common import add_config_argument, start_compute


def add_arguments(p):
    add_config_argument(p)
    p.add_argument("--canaries", type=int, default=1000, help="gradient canaries (default 1000)")
    p.add_argument("--workdir", help="where the audited run writes (default: a temporary dir)")


def main(args, overrides) -> int:
    from pjx import audit
    from pjx import config as config_lib

    config = config_lib.first_stage(config_lib.load(args.config, overrides))
    start_compute(args)
    with tempfile.TemporaryDirectory(prefix="pjx_audit_") as tmp:
        result = audit.audit(config, args.workdir or tmp, canaries=args.canaries)
    print(
        f"claimed epsilon {result['epsilon']:.4g}; empirical lower bound "
        f"{result['epsilon_lower_bound']:.4g} at {100 * result['confidence']:.0f}% confidence "
        f"from {result['canaries']} canaries",
        flush=True,
    )
    print(json.dumps(result), flush=True)
    return 0
