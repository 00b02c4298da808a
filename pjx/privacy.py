"""Differentially private training: DP-SGD (Abadi et al. 2016) and its accounting.

Each example's gradient is clipped to L2 norm C (`dp.l2_norm_clip`), the clipped gradients
are summed, Gaussian noise of standard deviation C * sigma (`dp.noise_multiplier`) is
added once per logical batch, and the sum is divided by the expected batch size (a public
constant, never the actual count). The privacy unit is one example: one row of the task's
table (a sentence, a packed sequence, an image). Batches are Poisson samples (each example
in each step with probability q = batch_size / N), padded to a fixed shape so the jitted
step sees static shapes; `dp.sampling="shuffle"` uses shuffled fixed-size batches instead,
and the epsilon then reported still assumes Poisson sampling (said at the start of a run).

Accounting is dp_accounting's (PLD by default, RDP on request). A padded Poisson batch is
truncated when more than `padded_batch_size` examples are drawn; the pad is 6 standard
deviations above the mean, where the exact truncated-Poisson epsilon (computed once at the
start) equals plain Poisson's to about 1e-5, so the per-line `dp_epsilon` uses the faster
plain composition.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from pjx import ghost_clipping

# `config.dp` and its defaults (pjx.config holds it as a ConfigDict). DP is on when
# noise_multiplier > 0, or target_epsilon > 0 (sigma is then calibrated before training).
DEFAULTS = dict(
    noise_multiplier=0.0,  # sigma: noise std / clip norm
    target_epsilon=0.0,  # > 0: calibrate sigma to reach this epsilon after `steps`
    l2_norm_clip=1.0,  # C: per-example gradient clip norm
    delta=0.0,  # 0 = 1 / (10 N): below 1/N, as a meaningful delta must be
    sampling="poisson",  # "poisson" | "shuffle" (epsilon then assumes Poisson)
    accountant="pld",  # "pld" | "rdp" (dp_accounting)
    microbatch_size=0,  # examples per vmap when computing per-example gradients; 0 = all
    clipping="auto",  # "ghost" | "vmap" | "auto": ghost unless nn.scan / remat (see below)
)
SAMPLINGS = ("poisson", "shuffle")
ACCOUNTANTS = ("pld", "rdp")
# The smallest noise multiplier calibration considers.
MIN_NOISE_MULTIPLIER = 0.3
# Padded Poisson batches: mean + this many standard deviations (truncation ~1e-9 per step).
MARGIN_SIGMAS = 6.0


def batch_rows(config) -> int:
    """Rows of a physical training batch: the padded Poisson batch under DP-SGD, else
    `batch_size`."""
    dp = config.get("dp") or {}
    return int(dp.get("padded_batch_size") or 0) or int(config["batch_size"])


def enabled(dp_cfg) -> bool:
    return bool(dp_cfg) and (
        float(dp_cfg.get("noise_multiplier") or 0) > 0
        or float(dp_cfg.get("target_epsilon") or 0) > 0
    )


def check(dp_cfg) -> None:
    """Raises ValueError for a DP setting that cannot work, saying which and why."""
    if dp_cfg.get("sampling") not in SAMPLINGS:
        raise ValueError(f"dp.sampling={dp_cfg.get('sampling')!r}: choose one of {SAMPLINGS}")
    if dp_cfg.get("accountant") not in ACCOUNTANTS:
        raise ValueError(f"dp.accountant={dp_cfg.get('accountant')!r}: one of {ACCOUNTANTS}")
    if dp_cfg.get("clipping", "auto") not in ("auto", *CLIPPING):
        raise ValueError(f"dp.clipping={dp_cfg.get('clipping')!r}: one of auto, {CLIPPING}")
    if not float(dp_cfg.get("l2_norm_clip") or 0) > 0:
        raise ValueError("dp.l2_norm_clip must be > 0 (the per-example clip norm C)")
    if float(dp_cfg.get("noise_multiplier") or 0) > 0 and float(dp_cfg.target_epsilon or 0) > 0:
        raise ValueError(
            "set dp.noise_multiplier or dp.target_epsilon, not both (a target epsilon "
            "calibrates the noise multiplier)"
        )


def clipping_method(dp_cfg, model_cfg) -> str:
    """How per-example norms are found: "ghost" (pjx.ghost_clipping) unless the layers
    run inside nn.scan / nn.remat, whose activations cannot leave the transform."""
    chosen = dp_cfg.get("clipping") or "auto"
    lifted = bool(model_cfg.get("scan_layers")) or (model_cfg.get("remat") or "none") != "none"
    if chosen == "auto":
        return "vmap" if lifted else "ghost"
    if chosen == "ghost" and lifted:
        raise ValueError(
            "dp.clipping='ghost' cannot see layers inside model.scan_layers / model.remat; "
            "use dp.clipping='vmap' (or 'auto') with them"
        )
    return chosen


# ------------------------------------------------------------------------ accounting
def _event(sigma, q, steps):
    import dp_accounting

    step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    return dp_accounting.SelfComposedDpEvent(step, int(steps))


def _accountant(name: str):
    import dp_accounting

    return dp_accounting.pld.PLDAccountant() if name == "pld" else dp_accounting.rdp.RdpAccountant()


def epsilon(sigma: float, q: float, steps: int, delta: float, accountant: str = "pld") -> float:
    """Epsilon after `steps` Poisson-sampled Gaussian steps (dp_accounting; PLD: the cached
    one-step PLD self-composed, what PLDAccountant computes for this event)."""
    if steps <= 0 or q <= 0:
        return 0.0
    if accountant == "pld":
        base = _one_step_pld(float(sigma), float(q))
        return float(base.self_compose(int(steps)).get_epsilon_for_delta(delta))
    return float(_accountant(accountant).compose(_event(sigma, q, steps)).get_epsilon(delta))


# PLDAccountant's default grid: the precision of every epsilon pjx reports.
PLD_INTERVAL = 1e-4
# The grid calibration searches on. A pessimistic PLD on a coarser grid (every point of which
# is also on the finer one) bounds the finer one from above, so a sigma that meets the target
# here meets it at PLD_INTERVAL too; each evaluation costs ~10x less.
CALIBRATION_INTERVAL = 1e-3


@functools.lru_cache(maxsize=8)
def _one_step_pld(sigma, q, num_examples=0, padded_batch_size=0, interval=PLD_INTERVAL):
    """One DP-SGD step's privacy loss distribution: Poisson sampling at rate q, truncated
    to `padded_batch_size` rows when given (Feldman et al. 2025). Building it is the slow
    part of accounting (seconds), so a run builds it once for its plan and every log line."""
    import dp_accounting

    pld = dp_accounting.pld.privacy_loss_distribution
    if padded_batch_size:
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


def truncated_epsilon(sigma, q, steps, delta, num_examples, padded_batch_size) -> float:
    """Epsilon of truncated Poisson sampling (at most `padded_batch_size` per batch), by
    dp_accounting's PLD for that event."""
    base = _one_step_pld(float(sigma), float(q), int(num_examples), int(padded_batch_size))
    return float(base.self_compose(int(steps)).get_epsilon_for_delta(delta))


def calibrate(target_epsilon, q, steps, delta, accountant="pld") -> float:
    """The smallest noise multiplier whose epsilon after `steps` is at most the target (to
    a relative 1e-4). PLD: bracketed by the RDP answer (RDP is the looser bound, found in
    milliseconds) and searched on CALIBRATION_INTERVAL's grid."""
    import dp_accounting

    target, delta = float(target_epsilon), float(delta)
    event = lambda sigma: _event(sigma, q, steps)
    if accountant != "pld":
        return float(
            dp_accounting.calibrate_dp_mechanism(
                dp_accounting.rdp.RdpAccountant,
                event,
                target,
                delta,
                dp_accounting.LowerEndpointAndGuess(MIN_NOISE_MULTIPLIER, 1.0),
            )
        )
    make = lambda: dp_accounting.pld.PLDAccountant(
        value_discretization_interval=CALIBRATION_INTERVAL
    )
    gap = lambda sigma: make().compose(event(sigma)).get_epsilon(delta) - target
    upper = calibrate(target, q, steps, delta, "rdp")
    while gap(upper) > 0:
        upper *= 1.25
    # Below sigma ~0.3 a PLD's privacy losses are so spread that its FFT runs out of memory;
    # no useful DP-SGD run lives there (epsilon is then in the hundreds).
    lower = upper
    while lower > MIN_NOISE_MULTIPLIER:
        lower = max(MIN_NOISE_MULTIPLIER, lower * 0.8)
        if gap(lower) > 0:
            break
    else:
        return MIN_NOISE_MULTIPLIER  # even the smallest sigma considered meets the target
    bracket = dp_accounting.ExplicitBracketInterval(lower, upper)
    return float(
        dp_accounting.calibrate_dp_mechanism(make, event, target, delta, bracket, tol=1e-4 * upper)
    )


def steps_for(target_epsilon, sigma, q, delta, accountant="pld") -> int:
    """The most steps a noise multiplier allows within a target epsilon."""
    import dp_accounting

    return int(
        dp_accounting.calibrate_dp_mechanism(
            lambda: _accountant(accountant),
            lambda steps: _event(sigma, q, steps),
            float(target_epsilon),
            float(delta),
            dp_accounting.LowerEndpointAndGuess(1, 2),
            discrete=True,
        )
    )


@dataclasses.dataclass(frozen=True)
class Plan:
    """The privacy of one run, fixed before its first step."""

    noise_multiplier: float
    l2_norm_clip: float
    delta: float
    sampling_rate: float  # q
    steps: int
    num_examples: int  # N, rows of the training table
    expected_batch_size: int  # the public constant the clipped sum is divided by
    padded_batch_size: int  # rows a (Poisson) batch is padded / truncated to
    sampling: str
    accountant: str
    epsilon: float  # after `steps`, exact for the sampling used
    calibrated: bool  # sigma came from dp.target_epsilon

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        how = "calibrated to" if self.calibrated else "gives"
        text = (
            f"DP-SGD: noise multiplier {self.noise_multiplier:.4g} {how} epsilon "
            f"{self.epsilon:.4g} at delta {self.delta:.3g} after {self.steps} steps "
            f"(clip {self.l2_norm_clip:g}, {self.sampling} sampling rate q = "
            f"{self.sampling_rate:.4g} = {self.expected_batch_size} / {self.num_examples}, "
            f"{self.accountant.upper()} accountant)"
        )
        if self.sampling == "shuffle":
            text += (
                "; batches are shuffled fixed-size batches, and this epsilon assumes Poisson "
                "sampling, which they are not: it is not a proven guarantee for this run"
            )
        return text


def plan(dp_cfg, *, num_examples: int, batch_size: int, steps: int, multiple: int = 1) -> Plan:
    """The run's Plan: delta, sampling rate, padded batch, sigma (calibrated to
    dp.target_epsilon when given) and the epsilon it reaches after `steps`."""
    check(dp_cfg)
    N, B = int(num_examples), int(batch_size)
    if B > N:
        raise ValueError(f"batch_size {B} is larger than the {N} training examples")
    q = B / N
    delta = float(dp_cfg.get("delta") or 0) or 1.0 / (10 * N)
    if delta >= 1.0 / N:
        raise ValueError(
            f"dp.delta={delta:g} is not below 1/N = {1 / N:.3g} (N = {N} examples): a delta "
            "that large allows leaking an example outright; use e.g. 1/(10 N)"
        )
    accountant, sampling = dp_cfg.get("accountant", "pld"), dp_cfg.get("sampling", "poisson")
    target = float(dp_cfg.get("target_epsilon") or 0)
    sigma = float(dp_cfg.get("noise_multiplier") or 0)
    if target > 0:
        sigma = calibrate(target, q, steps, delta, accountant)
    padded = B
    if sampling == "poisson":
        padded = int(math.ceil(B + MARGIN_SIGMAS * math.sqrt(B * (1 - q))))
        padded = min(
            int(math.ceil(padded / multiple) * multiple), int(math.ceil(N / multiple)) * multiple
        )
        eps = truncated_epsilon(sigma, q, steps, delta, N, padded) if padded < N else None
    else:
        eps = None
    if eps is None:
        eps = epsilon(sigma, q, steps, delta, accountant)
    return Plan(
        noise_multiplier=sigma,
        l2_norm_clip=float(dp_cfg.l2_norm_clip),
        delta=delta,
        sampling_rate=q,
        steps=int(steps),
        num_examples=N,
        expected_batch_size=B,
        padded_batch_size=padded,
        sampling=sampling,
        accountant=accountant,
        epsilon=eps,
        calibrated=target > 0,
    )


class Ledger:
    """Epsilon spent after a given step, for the metrics lines: the plan's one-step PLD
    self-composed per query (~0.2 s a query); with the PLD accountant, after `steps` it is
    the plan's epsilon."""

    def __init__(self, p: Plan):
        self.plan = p
        self._cache: dict[int, float] = {}

    def epsilon(self, step: int) -> float:
        step = int(step)
        if step not in self._cache:
            self._cache[step] = self._epsilon(step)
        return self._cache[step]

    def _epsilon(self, step: int) -> float:
        p = self.plan
        if step <= 0:
            return 0.0
        # The event the plan accounted: truncated Poisson batches where they are padded.
        truncated = p.sampling == "poisson" and p.padded_batch_size < p.num_examples
        if p.accountant == "pld" and truncated:
            return truncated_epsilon(
                p.noise_multiplier, p.sampling_rate, step, p.delta, p.num_examples,
                p.padded_batch_size,
            )  # fmt: skip
        return epsilon(p.noise_multiplier, p.sampling_rate, step, p.delta, p.accountant)


# ------------------------------------------------------------------- DP gradients
CLIPPING = ("ghost", "vmap")


def chunk_rows(rows: int, size: int) -> int:
    """Rows per per-example-gradient chunk: the largest divisor of `rows` up to `size`
    (`dp.microbatch_size`; 0 = all rows at once), so any padded batch splits evenly."""
    if not size or size >= rows:
        return rows
    return max(d for d in range(1, size + 1) if rows % d == 0)


def _in_chunks(fn, batch, keys, size: int):
    """sum over chunks of `chunk_rows(rows, size)` rows of fn(chunk, chunk_keys) (a scan
    bounds memory)."""
    B = len(keys)
    size = chunk_rows(B, size)
    if size == B:
        return fn(batch, keys)
    split = lambda x: x.reshape(B // size, size, *x.shape[1:])
    chunks, chunk_keys = jax.tree.map(split, batch), split(keys)

    def body(carry, xs):
        return jax.tree.map(jnp.add, carry, fn(*xs)), None

    zeros = jax.eval_shape(fn, jax.tree.map(lambda x: x[0], chunks), chunk_keys[0])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
    return jax.lax.scan(body, zeros, (chunks, chunk_keys))[0]


def private_gradients(
    loss_fn,
    params,
    batch,
    rng,
    *,
    l2_norm_clip: float,
    noise_multiplier: float,
    expected_batch_size: int,
    accum_steps: int = 1,
    microbatch_size: int = 0,
    trainable=None,
    clipping: str = "ghost",
):
    """(loss, metric sums, privatised gradient) of one logical batch, like
    `pjx.optim.accumulate_gradients`.

    Per-example gradients of `loss_fn(params, example_batch, rng)` (each example a batch of
    one: the privacy unit) are clipped to `l2_norm_clip` and summed by jax_privacy's
    `clipped_grad` (vmapped in chunks of `microbatch_size`), over `accum_steps` slices of
    the batch; Gaussian noise of std l2_norm_clip * noise_multiplier is added once, in
    float32, from `rng`'s noise stream (replicated: every device adds the same noise), and
    the result is divided by `expected_batch_size`. Rows with `weight` 0 (padding) add
    nothing. Each example's random key comes from its position in the batch, so the result
    does not depend on `accum_steps`. `trainable`: a bool pytree like params; False leaves
    get no gradient (and do not count towards the clip norm). `clipping`: "ghost"
    (pjx.ghost_clipping: norms from layer inputs and output gradients, no per-example
    weight gradients) or "vmap" (a per-example gradient of every parameter); the same
    result. Layers inside nn.scan / nn.remat need "vmap".
    """
    if clipping not in CLIPPING:
        raise ValueError(f"dp.clipping={clipping!r}: pick one of {CLIPPING}")
    leaves, treedef = jax.tree.flatten(params)
    mask = [True] * len(leaves) if trainable is None else jax.tree.leaves(trainable)
    fixed = [x for x, m in zip(leaves, mask) if not m]

    def join(train_leaves):
        it_t, it_f = iter(train_leaves), iter(fixed)
        return jax.tree.unflatten(treedef, [next(it_t) if m else next(it_f) for m in mask])

    def example_loss(train_leaves, example, key_data):
        key = jax.random.wrap_key_data(key_data[0])
        loss, mets = loss_fn(join(train_leaves), example, key)
        return loss, mets

    k_examples, k_noise = jax.random.split(rng)
    B = len(next(iter(batch.values())))
    keys = jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(k_examples, i)))(jnp.arange(B))
    train_leaves = [x for x, m in zip(leaves, mask) if m]

    def vmapped(micro, micro_keys):
        from jax_privacy import clipping  # heavy (scipy, pydantic): only here

        grad_fn = clipping.clipped_grad(
            example_loss,
            has_aux=True,
            l2_clip_norm=float(l2_norm_clip),
            batch_argnums=(1, 2),
            keep_batch_dim=True,
            # jax_privacy reshapes into chunks of this size: at most the rows there are.
            microbatch_size=int(microbatch_size)
            if 0 < int(microbatch_size) < len(micro_keys)
            else None,
            dtype=jnp.float32,
        )
        g, aux = grad_fn(train_leaves, micro, micro_keys)
        return g, jax.tree.map(lambda v: jnp.sum(v, axis=0), aux.aux)  # per-example sums

    def ghost(micro, micro_keys):
        return ghost_clipping.clipped_sum(
            loss_fn, params, mask, micro, micro_keys, float(l2_norm_clip)
        )

    def one(micro, micro_keys):
        if clipping == "vmap":  # clipped_grad micro-batches itself
            return vmapped(micro, micro_keys)
        return _in_chunks(ghost, micro, micro_keys, int(microbatch_size))

    if accum_steps <= 1:
        gsum, msum = one(batch, keys)
    else:
        # Slice j takes rows j, j+A, ...: every slice stays spread over the batch's devices.
        split = lambda x: jnp.moveaxis(
            x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]), 1, 0
        )
        micro, micro_keys = jax.tree.map(split, batch), split(keys)

        def body(carry, xs):
            g, m = one(*xs)
            return jax.tree.map(jnp.add, carry, (g, m)), None

        zeros = jax.eval_shape(one, jax.tree.map(lambda x: x[0], micro), micro_keys[0])
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
        (gsum, msum), _ = jax.lax.scan(body, zeros, (micro, micro_keys))

    noise_keys = jax.random.split(k_noise, len(gsum))
    std = float(l2_norm_clip) * float(noise_multiplier)
    noisy = [
        (g + std * jax.random.normal(k, g.shape, jnp.float32)) / float(expected_batch_size)
        for g, k in zip(gsum, noise_keys)
    ]
    it = iter(noisy)
    grads = jax.tree.unflatten(
        treedef, [next(it) if m else jnp.zeros_like(x) for x, m in zip(leaves, mask)]
    )
    loss = msum["loss_sum"] / jnp.maximum(msum["count"], 1.0)
    return loss, msum, grads
