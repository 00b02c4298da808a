"""Privacy accounting (dp_accounting): the epsilon of DP-SGD steps run in segments, and the
noise multiplier that meets a target.

A `Segment` is a run of steps with one mechanism: Poisson sampling at rate q on N rows,
batches truncated to a padded size, the Gaussian mechanism with noise multiplier sigma.
`compose` gives the epsilon of segments run one after the other: PLD (default) for the
truncated Poisson-sampled Gaussian (Feldman et al. 2025), or RDP, which has no truncated
form: there the epsilon is RDP's at delta / 2 and the other half of delta bounds the
probability that any step truncated its batch. The run's plan and ledger are pjx.privacy.
"""

from __future__ import annotations

import dataclasses
import functools
import math

# The smallest noise multiplier calibration considers.
MIN_NOISE_MULTIPLIER = 0.3
# PLDAccountant's default grid: the precision of every epsilon pjx reports.
PLD_INTERVAL = 1e-4
# The grid calibration searches on. A pessimistic PLD on a coarser grid (every point of
# which is also on the finer one) bounds the finer one from above, so a sigma that meets the
# target here meets it at PLD_INTERVAL too; each evaluation costs ~10x less.
CALIBRATION_INTERVAL = 1e-3


@dataclasses.dataclass(frozen=True)
class Segment:
    """Steps run with one mechanism: `steps` Poisson-sampled Gaussian steps at rate q, on
    N rows, batches truncated to `padded_batch_size` rows (N or more: never truncated)."""

    steps: int
    noise_multiplier: float
    sampling_rate: float
    num_examples: int
    padded_batch_size: int
    l2_norm_clip: float

    @property
    def truncated(self) -> bool:
        return self.padded_batch_size < self.num_examples

    def truncation_probability(self) -> float:
        """P(a step draws more rows than its padded batch holds): Binomial(N, q) tail."""
        if not self.truncated:
            return 0.0
        from scipy import stats

        return float(stats.binom.sf(self.padded_batch_size, self.num_examples, self.sampling_rate))

    def same_mechanism(self, other: Segment) -> bool:
        return dataclasses.replace(self, steps=0) == dataclasses.replace(other, steps=0)


class TruncationTooLikely(ValueError):
    """RDP accounting: the padded batch is too small for the run's delta."""


@functools.lru_cache(maxsize=32)
def _one_step_pld(sigma, q, num_examples, padded_batch_size, interval=PLD_INTERVAL):
    """One step's privacy loss distribution: Poisson sampling at rate q, truncated to
    `padded_batch_size` rows when that is below N. Building it is the slow part of
    accounting (seconds), so each (sigma, q, grid) is built once."""
    import dp_accounting

    pld = dp_accounting.pld.privacy_loss_distribution
    if padded_batch_size < num_examples:
        return pld.from_truncated_subsampled_gaussian_mechanism(
            dataset_size=int(num_examples),
            sampling_probability=float(q),
            truncated_batch_size=int(padded_batch_size),
            noise_multiplier=float(sigma),
            value_discretization_interval=interval,
        )
    return pld.from_gaussian_mechanism(
        float(sigma), sampling_prob=float(q), value_discretization_interval=interval
    )


def _rdp_event(segments):
    import dp_accounting

    return dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(
                    s.sampling_rate, dp_accounting.GaussianDpEvent(s.noise_multiplier)
                ),
                int(s.steps),
            )
            for s in segments
            if s.steps > 0
        ]
    )


def compose(segments, delta: float, accountant: str = "pld", interval=PLD_INTERVAL) -> float:
    """Epsilon at `delta` of the segments run one after the other. RDP raises
    `TruncationTooLikely` when truncated batches do not fit in half of delta."""
    segments = [s for s in segments if s.steps > 0]
    if not segments:
        return 0.0
    if accountant == "pld":
        total = None
        for s in segments:
            one = _one_step_pld(
                float(s.noise_multiplier), float(s.sampling_rate), int(s.num_examples),
                int(s.padded_batch_size), interval,
            ).self_compose(int(s.steps))  # fmt: skip
            total = one if total is None else total.compose(one)
        return float(total.get_epsilon_for_delta(delta))
    import dp_accounting

    truncation = sum(s.steps * s.truncation_probability() for s in segments)
    rdp = dp_accounting.rdp.RdpAccountant().compose(_rdp_event(segments))
    if not truncation:  # batches padded to N: the plain Poisson mechanism
        return float(rdp.get_epsilon(delta))
    eps = float(rdp.get_epsilon(delta / 2))
    # A run that truncated no batch is the Poisson mechanism, so the truncated mechanism
    # is (eps, delta / 2 + (1 + e^eps) P[any truncation])-DP.
    if truncation * (1 + math.exp(min(eps, 700))) > delta / 2:
        raise TruncationTooLikely(
            f"dp.accountant=rdp: the chance that a batch is truncated ({truncation:.2g} over "
            f"the run) does not fit in delta / 2 = {delta / 2:.2g}; use dp.accountant=pld, "
            "which accounts truncated batches exactly"
        )
    return eps


def epsilon(sigma: float, q: float, steps: int, delta: float, accountant: str = "pld") -> float:
    """Epsilon after `steps` Poisson-sampled Gaussian steps (no truncation)."""
    s = Segment(int(steps), float(sigma), float(q), 1, 1, 1.0)
    return compose([s], delta, accountant) if steps > 0 and q > 0 else 0.0


def truncated_epsilon(sigma, q, steps, delta, num_examples, padded_batch_size) -> float:
    """Epsilon of truncated Poisson sampling (at most `padded_batch_size` per batch)."""
    s = Segment(int(steps), float(sigma), float(q), int(num_examples), int(padded_batch_size), 1)
    return compose([s], delta, "pld")


def calibrate(target_epsilon, delta, make_segment, prior=(), accountant="pld") -> float:
    """The smallest noise multiplier (to a relative 1e-4) for which the prior segments and
    `make_segment(sigma)` compose to at most the target, by the accounting every line
    reports. Searched on CALIBRATION_INTERVAL's grid (an upper bound of the reported one)
    between sigmas bracketed by doubling, then checked on the reported grid."""
    target = float(target_epsilon)
    coarse = CALIBRATION_INTERVAL if accountant == "pld" else PLD_INTERVAL

    def gap(sigma, grid=coarse):
        segments = [*prior, make_segment(sigma)]
        if accountant == "rdp":  # RDP's padding is chosen after sigma (`plan`)
            segments = [dataclasses.replace(s, padded_batch_size=s.num_examples) for s in segments]
            return compose(segments, delta / 2, accountant) - target
        return compose(segments, delta, accountant, grid) - target

    spent = compose(prior, delta, accountant)
    if spent >= target:
        steps = sum(s.steps for s in prior)
        raise ValueError(
            f"dp.target_epsilon={target:g} is already spent: the {steps} steps that ran give "
            f"epsilon {spent:.4g}. Raise the target or stop at the steps that ran."
        )
    hi = 1.0
    while gap(hi) > 0:
        hi *= 2
        if hi > 1e4:
            raise ValueError(f"dp.target_epsilon={target:g} cannot be met: too small")
    lo = hi / 2
    if gap(lo) <= 0:
        while lo > MIN_NOISE_MULTIPLIER and gap(lo) <= 0:
            hi, lo = lo, max(lo / 2, MIN_NOISE_MULTIPLIER)
        if gap(lo) <= 0:
            return lo  # even the smallest sigma considered meets the target
    while hi - lo > 1e-4 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if gap(mid) <= 0 else (mid, hi)
    while gap(hi, PLD_INTERVAL) > 0:  # the reported accounting is the one that must hold
        hi *= 1 + 1e-4
    return hi


def steps_for(target_epsilon, sigma, q, delta, accountant="pld") -> int:
    """The most steps a noise multiplier allows within a target epsilon."""
    eps = lambda n: epsilon(sigma, q, n, delta, accountant)
    if eps(1) > target_epsilon:
        return 0
    lo, hi = 1, 2
    while eps(hi) <= target_epsilon:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if eps(mid) <= target_epsilon else (lo, mid)
    return lo
