"""An empirical lower bound on a DP-SGD run's epsilon, from one training run: the
white-box audit with gradient canaries of Steinke, Nasr and Jagielski 2023 ("Privacy
Auditing with One (1) Training Run"), scored by jax_privacy's `CanaryScoreAuditor`.

m canaries are gradients C * e_j on m distinct coordinates of the largest trainable
parameter (Dirac canaries: norm C, so clipping leaves them whole). Each is in the data
set with probability 1/2 and then drawn into each step's batch with probability q, like
any row; the real train step (pjx.grads) adds the drawn ones to its clipped sum before
the noise. An attacker who sees every update (the threat model DP-SGD's epsilon covers)
scores canary j by the sum of the released gradient at its coordinate; the audit guesses
the highest scores as "in" and turns the guesses into the largest epsilon that the
guesses' accuracy refutes at 95% confidence. An honest mechanism keeps that bound below
the claimed epsilon; a broken one (noise off, clipping skipped: what the tests inject)
does not. The bound is a lower bound: far below the claim is normal for real runs.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from pjx import config as config_lib
from pjx import grads, logs, privacy, sharding
from pjx import run as run_lib
from pjx import train as train_lib

log = logging.getLogger(__name__)


def canaries_for(abstract_params, trainable, m: int, value: float, q: float, seed: int):
    """`m` Dirac canaries on the largest trainable leaf, each included with probability
    1/2 (from `seed`: the run's secret, so inclusion is not guessable from the config)."""
    leaves = [x for x, t in zip(jax.tree.leaves(abstract_params), jax.tree.leaves(trainable)) if t]
    leaf = int(np.argmax([int(np.prod(x.shape)) for x in leaves]))
    size = int(np.prod(leaves[leaf].shape))
    if m > size:
        raise ValueError(f"--canaries {m}: the largest trainable parameter has only {size}")
    rng = np.random.default_rng([seed, 0xA0D17])
    coords = rng.choice(size, m, replace=False)
    included = rng.random(m) < 0.5
    return grads.Canaries(
        leaf=leaf,
        coords=tuple(int(c) for c in coords),
        included=tuple(bool(i) for i in included),
        value=float(value),
        sampling_rate=float(q),
    )


def audit(
    config,
    workdir: str,
    *,
    canaries: int = 1000,
    significance: float = 0.05,
    devices=None,
    mechanism: dict | None = None,
) -> dict:
    """Trains `config` (DP-SGD on) in `workdir` with canaries and returns {epsilon (the
    claim), epsilon_lower_bound, canaries, ...}. `mechanism`: fields of the step's
    `grads.DP` to replace; tests break the mechanism with it (noise_multiplier=0, or a
    canary `value` above the clip norm), never a real audit."""
    from jax_privacy import auditing

    logs.setup()
    config = config_lib.resolve_data(config)
    if not privacy.enabled(config.dp):
        raise ValueError(
            "pjx audit needs DP-SGD on: set --config.dp.noise_multiplier=SIGMA or "
            "--config.dp.target_epsilon=EPSILON"
        )
    os.makedirs(workdir, exist_ok=True)
    r = run_lib.resolve_run(config, workdir, devices=devices, checkpoints=False, fresh=True)
    config, plan, secret = r.config, r.plan, r.secret
    mech = dict(mechanism or {})
    value = float(mech.pop("value", config.dp.l2_norm_clip))
    made = []  # the canaries, placed once the step's parameters are known

    def with_canaries(abstract_params, trainable):
        q = plan.current.sampling_rate
        made.append(canaries_for(abstract_params, trainable, int(canaries), value, q, secret))
        return dict(mech, canaries=made[-1])

    s = train_lib.build(config, tokenizer=r.tokenizer, mesh=r.mesh, dp_mechanism=with_canaries)
    (c,) = made
    data = run_lib.build_data(
        config, r.tokenizer, train=True, workdir=workdir, mesh=s.mesh, seed=secret
    )
    state = run_lib.fresh_state(s, config, secret)
    batches = iter(data)
    batch = next(batches)
    step_fn = train_lib.compile_step(s, batch)
    total = None
    with sharding.context(s.mesh):
        for step in range(int(config.steps)):
            if step:
                batch = next(batches)
            state, mets = step_fn(state, sharding.global_batch(batch, s.batch_sharding))
            scores = mets["canary_scores"]
            total = scores if total is None else total + scores
    scores = np.asarray(jax.device_get(total), np.float64)
    included = np.asarray(c.included)
    auditor = auditing.CanaryScoreAuditor(scores[included], scores[~included])
    bound = float(auditor.epsilon_one_run(significance=significance, delta=plan.delta))
    return dict(
        epsilon=plan.epsilon,
        epsilon_lower_bound=bound,
        canaries=int(canaries),
        confidence=1 - significance,
        delta=plan.delta,
        steps=plan.steps,
        noise_multiplier=plan.current.noise_multiplier,
        sampling_rate=plan.current.sampling_rate,
        auroc=float(auditor.attack_auroc()),
    )
