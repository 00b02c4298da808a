"""An empirical lower bound on a DP-SGD run's epsilon, from one training run: the
white-box one-run audit of Steinke, Nasr and Jagielski 2023 ("Privacy Auditing with One
(1) Training Run"), scored by jax_privacy's `CanaryScoreAuditor.epsilon_one_run`.

m canaries, each in the data set with probability 1/2 (from the run's secret seed), then
drawn into each step's batch with probability q like any row. An attacker who sees every
privatised gradient (the threat model DP-SGD's epsilon covers) gives each canary a score;
the audit guesses the highest scores as "in" and turns the guesses' accuracy into the
largest epsilon they refute at 95% confidence. Two kinds of canary (`kind`):

- "dirac": canary j is the gradient C * e_j on its own coordinate of the largest
  trainable parameter, added by the train step (pjx.grads) to its clipped sum before the
  noise. Cheap (coordinates, not examples: 10^5 canaries cost nothing), and the most
  sensitive test of the noise. It bypasses the pipeline's sampling and per-example
  clipping (it is added after both), so it cannot see a clipping bug.
- "example": the same coordinates, but each drawn canary is an example whose loss is
  value * (its coordinate), value = EXAMPLE_NORM * C, clipped per example by the run's
  own clipping code (ghost_clipping.clipped_sum, or jax_privacy's clipped_grad for
  dp.clipping=vmap) before it joins the sum, so clipping must scale it to C. If clipping
  fails (too large a clip factor, a clip norm not applied) the canary enters at up to
  EXAMPLE_NORM * C and the bound rises; when clipping works it is a Dirac canary.
  What it does not exercise: the layer-wise norm formulas of ghost clipping for Dense /
  Embed layers (a canary's gradient is on a raw parameter), and the data pipeline's
  Poisson sampling (canaries are drawn in the step with the same rate q). Why not
  example rows (random tokens, random labels) scored by their own gradient: at
  initialisation the tiny BERT's per-example gradients are one direction for any input
  (measured: the first singular vector holds all of it for 1,000 random rows), so no
  score can tell such canaries apart; rows need a trained, input-sensitive model.

Scores: each step's value x (the canary's coordinate, or projection, in units of C per
expected batch: 1 when a canary was drawn, 0 else, plus noise of std sigma) goes into the
Neyman-Pearson statistic of "drawn with probability q at each step",
sum_t log(1 - q + q exp((x_t - 1/2) / s^2)), with s the noise the attacker measures on
the release itself (the scaled median absolute deviation of the first step's values):
any function of the released gradients is a valid score, and one that uses the noise
actually added (not the claimed noise) catches too little noise.

What a bound can show is capped: with m canaries at delta and 95% confidence, even a
perfect attack (every guess right) refutes no epsilon above `epsilon_ceiling` (about 4.8
for 1,000 canaries at delta 1e-6, 7.0 for 10^4, 8.7 for 10^5; less at larger delta, where
the bound pays 2 m delta). The verdict: "inconclusive" when the ceiling is at or below
the claim (the audit could not refute it whatever happened), else "violation" when the
lower bound exceeds the claim, else "consistent". Consistent is not proof of privacy: a
lower bound far below the claim is normal for real runs.

jax_privacy's f-DP one-run estimator (`epsilon_one_run_fdp`, Mahloujifar et al. 2024)
reports larger numbers from the same scores (ceiling 9.4 at 1,000 canaries, delta 1e-6)
but refutes "the run is as private as the Gaussian mechanism with this (epsilon, delta)",
a stronger claim than (epsilon, delta)-DP: DP-SGD's subsampled trade-off curve is not
Gaussian, so an honest run could fail it. The verdict uses `epsilon_one_run` only.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os

import jax
import numpy as np

from pjx import grads, logs, privacy, resolution, sharding
from pjx import run as run_lib
from pjx import train as train_lib
from pjx import workdir as workdir_lib

log = logging.getLogger(__name__)

KINDS = ("dirac", "example")
LADDER = (1_000, 10_000, 100_000, 1_000_000)  # canaries the default picks from
SIGNIFICANCE = 0.05
# Example canaries clipped per step: P(more drawn in one step) < this (the audit then
# stops rather than keep a step that dropped one: that would not be the mechanism).
SLOTS_TAIL = 1e-9
EXAMPLE_NORM = 10.0  # an example canary's gradient norm, in units of the clip norm


def ceiling(m: int, delta: float, significance: float = SIGNIFICANCE, n_in: int | None = None):
    """What `epsilon_one_run` returns for m canaries (n_in of them in) when every guess is
    right: jax_privacy's own code on perfectly separated, distinct scores."""
    from jax_privacy import auditing

    n_in = m // 2 if n_in is None else int(n_in)
    perfect = auditing.CanaryScoreAuditor(np.arange(n_in) + m, np.arange(m - n_in, dtype=float))
    return float(perfect.epsilon_one_run(significance=significance, delta=delta))


def choose_canaries(claim: float, delta: float, largest: int, significance=SIGNIFICANCE):
    """(m, its ceiling): the smallest m of LADDER (capped at `largest`) whose ceiling
    exceeds `claim`; else the m with the highest ceiling (the audit is then inconclusive;
    past about 1 / (20 delta) canaries the ceiling falls again)."""
    ladder = sorted({min(m, largest) for m in LADDER})
    best = None
    for m in ladder:
        c = ceiling(m, delta, significance)
        if c > claim:
            return m, c
        best = (m, c) if best is None or c > best[1] else best
    return best


def score(x_TxM, q: float, s: float):
    """The Neyman-Pearson statistic of a canary drawn with probability q per step adding
    1 to x under N(0, s^2) noise, summed over steps: [T, M] -> [M]."""
    z = (np.asarray(x_TxM, np.float64) - 0.5) / max(s, 1e-6) ** 2
    return np.logaddexp(np.log1p(-q), np.log(q) + z).sum(axis=0)


def measured_noise(x_M) -> float:
    """The noise's std on one step's values, robust to the few canaries drawn in it."""
    x = np.asarray(x_M, np.float64)
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def _leaves(abstract_params, trainable):
    return [x for x, t in zip(jax.tree.leaves(abstract_params), jax.tree.leaves(trainable)) if t]


def largest_leaf(abstract_params, trainable) -> tuple[int, int]:
    """(index among the trainable leaves, size) of the largest trainable parameter."""
    sizes = [math.prod(x.shape) for x in _leaves(abstract_params, trainable)]
    return int(np.argmax(sizes)), max(sizes)


def canaries_for(abstract_params, trainable, m: int, value: float, q: float, seed: int):
    """`m` Dirac canaries on the largest trainable leaf, each included with probability
    1/2 (from `seed`: the run's secret, so inclusion is not guessable from the config)."""
    leaf, size = largest_leaf(abstract_params, trainable)
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


def slots(n_in: int, q: float) -> int:
    """Example canaries one step clips at most (see SLOTS_TAIL)."""
    import scipy.stats

    return int(scipy.stats.binom.isf(SLOTS_TAIL, n_in, q)) + 1


def audit(
    config,
    workdir: str,
    *,
    canaries: int | None = None,
    kind: str = "dirac",
    significance: float = SIGNIFICANCE,
    devices=None,
    mechanism: dict | None = None,
) -> dict:
    """Trains `config` (DP-SGD on) in `workdir` with canaries and returns {epsilon (the
    claim), epsilon_lower_bound, epsilon_ceiling, verdict, canaries, ...} (module
    docstring). `canaries`: None picks from LADDER. `mechanism`: fields of the step's
    `grads.DP` to replace (tests break the noise with it), never a real audit."""
    from jax_privacy import auditing

    if kind not in KINDS:
        raise ValueError(f"canary kind {kind!r}: pick one of {KINDS}")
    logs.setup()
    config = resolution.resolve_data(config)
    if not privacy.enabled(config.dp):
        raise ValueError(
            "pjx audit needs DP-SGD on: set --config.dp.noise_multiplier=SIGMA or "
            "--config.dp.target_epsilon=EPSILON"
        )
    os.makedirs(workdir, exist_ok=True)
    r = run_lib.resolve_run(config, workdir, devices=devices)
    config, plan, secret = r.config, r.privacy, r.secret
    C, B = float(config.dp.l2_norm_clip), int(config.batch_size)
    q = float(plan.current.sampling_rate)
    chosen = {}

    mech = dict(mechanism or {})
    value = float(mech.pop("value", C * (EXAMPLE_NORM if kind == "example" else 1.0)))

    def pick(abstract_params, trainable):
        largest = largest_leaf(abstract_params, trainable)[1]
        if canaries is None:
            m, c = choose_canaries(plan.epsilon, plan.delta, largest, significance)
        else:
            m, c = int(canaries), ceiling(int(canaries), plan.delta, significance)
        chosen.update(m=m, ceiling=c)
        made = canaries_for(abstract_params, trainable, m, value, q, secret)
        if kind == "example":
            made = dataclasses.replace(made, slots=slots(sum(made.included), q))
        chosen.update(included=np.asarray(made.included))
        return dict(mech, canaries=made)

    s = train_lib.build(r.plan, tokenizer=r.tokenizer, mesh=r.mesh, dp_mechanism=pick)
    if s.frozen_models:  # distill's teacher: the step takes its parameters, as in training
        config, s = run_lib.load_teacher(s, config, workdir)
    m = chosen["m"]
    _announce(m, kind, chosen["ceiling"], plan, significance)
    x_TxM = _released_scores(s, config, r.tokenizer, workdir, secret) * B / C
    noise = measured_noise(x_TxM[0])
    scores = score(x_TxM, q, noise)
    included = np.asarray(chosen["included"])
    auditor = auditing.CanaryScoreAuditor(scores[included], scores[~included])
    bound = float(auditor.epsilon_one_run(significance=significance, delta=plan.delta))
    top = ceiling(m, plan.delta, significance, n_in=int(included.sum()))
    return dict(
        epsilon=plan.epsilon,
        epsilon_lower_bound=bound,
        epsilon_ceiling=top,
        verdict=verdict(bound, top, plan.epsilon),
        canaries=m,
        canary_kind=kind,
        confidence=1 - significance,
        delta=plan.delta,
        steps=plan.steps,
        noise_multiplier=plan.current.noise_multiplier,
        measured_noise=noise,
        sampling_rate=q,
        auroc=float(auditor.attack_auroc()),
    )


def _released_scores(s: train_lib.Setup, config, tokenizer, workdir, secret) -> np.ndarray:
    """Trains the canaried run from scratch; [steps, canaries]: the released (noised,
    summed) gradient at each canary's coordinate, step by step."""
    data = workdir_lib.build_data(
        s.plan, tokenizer, train=True, workdir=workdir, mesh=s.mesh, seed=secret
    )
    state = run_lib.fresh_state(s, config, secret)
    batches = iter(data)
    batch = next(batches)
    step_fn = train_lib.compile_step(s, batch)
    xs = []
    with sharding.context(s.mesh):
        for step in range(s.plan.loop.steps):
            if step:
                batch = next(batches)
            state, mets = step_fn(state, sharding.global_batch(batch, s.batch_sharding), *s.frozen)
            if int(mets.get("canaries_dropped", 0)):
                raise RuntimeError(f"step {step}: more example canaries drawn than slots")
            xs.append(np.asarray(jax.device_get(mets["canary_scores"]), np.float32))
    return np.stack(xs)


def _announce(m: int, kind: str, top: float, plan, significance: float) -> None:
    """Says what the canaries can show at most, and warns when that cannot refute the claim."""
    print(
        f"audit: {m:,} {kind} canaries; a perfect attack could show at most epsilon "
        f"{top:.3g} (delta {plan.delta:.3g}, {100 * (1 - significance):.0f}% "
        f"confidence) against the claimed {plan.epsilon:.4g}",
        flush=True,
    )
    if top <= plan.epsilon:
        log.warning(
            f"audit: {m:,} canaries cannot refute epsilon {plan.epsilon:.4g}: the verdict "
            "will be inconclusive whatever the run does (more canaries raise the ceiling, "
            "up to about 1 / (20 delta))"
        )


def verdict(bound: float, top: float, claimed: float) -> str:
    """inconclusive: the canaries could not show `claimed` (their ceiling `top` is below
    it); violation: the lower bound exceeds the claim; else consistent."""
    if top <= claimed:
        return "inconclusive"
    return "violation" if bound > claimed else "consistent"
