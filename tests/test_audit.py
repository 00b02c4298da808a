"""The one-run privacy audit (pjx.privacy.audit) on a tiny private classifier (claimed epsilon
0.79): the real mechanism stays below the claim; too little noise (a quarter: true
epsilon 15) and clipping switched off in the real clipping code are caught; the ceiling is
jax_privacy's own bound for a perfect attack, and a claim above it is inconclusive."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_privacy_run import _config

from pjx import cli, ghost_clipping, grads, privacy
from pjx.privacy import audit

# delta far below 1 / canaries: the one-run bound pays 2 * canaries * delta in its p-value.
STEPS = dict(steps=60, **{"dp.noise_multiplier": 2.0, "dp.delta": 1e-6})


def _audit(tmp_path, canaries=1000, kind="dirac", **mechanism):
    _fix_secret(tmp_path)
    return audit.audit(
        _config(**STEPS), str(tmp_path), canaries=canaries, kind=kind,
        devices=jax.devices()[:1], mechanism=mechanism,
    )  # fmt: skip


def _fix_secret(workdir, seed=20240044):
    """The run's secret seed (canaries, their inclusion, the noise) fixed: each test sees
    one draw, not a new one per run (each bound holds with 95% confidence over draws)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / privacy.SECRET_FILE).write_text(json.dumps({"seed": str(seed)}))


def _config_file(tmp_path):
    path = tmp_path / "audit_config.py"
    path.write_text(
        "from test_privacy_run import _config\n\n\ndef get_config(arg=None):\n"
        f"    return _config(**{dict(STEPS, steps=4, **{'mesh.data': -1})!r})\n"
    )
    return str(path)


def test_the_ceiling_is_jax_privacys_bound_for_a_perfect_attack():
    from jax_privacy import auditing

    # Steinke et al.'s p-value for m canaries all guessed right: binomial(m, e^eps/(1+e^eps))
    # tail <= significance, plus 2 m delta times the tail's worst ratio; jax_privacy's code
    # on perfectly separated scores is what the audit would return.
    for m, delta in [(1000, 1e-6), (10_000, 1.65e-6), (1000, 1.56e-3)]:
        perfect = auditing.CanaryScoreAuditor(np.arange(500) + 1e6, np.arange(m - 500))
        c = audit.ceiling(m, delta, n_in=500)
        assert c == pytest.approx(perfect.epsilon_one_run(significance=0.05, delta=delta))
    assert 4.7 < audit.ceiling(1000, 1e-6) < 4.9  # the figure
    assert 6.9 < audit.ceiling(10_000, 1.65e-6) < 7.1
    assert audit.ceiling(1000, 1.56e-3) < 0.8  # cannot refute a claim of 8, or of 1
    # Better scores cannot beat it: the ceiling bounds every score.
    rng = np.random.default_rng(0)
    noisy = auditing.CanaryScoreAuditor(rng.normal(3, 1, 500), rng.normal(0, 1, 500))
    assert noisy.epsilon_one_run(significance=0.05, delta=1e-6) <= audit.ceiling(1000, 1e-6)


def test_the_default_canaries_are_the_fewest_whose_ceiling_exceeds_the_claim():
    assert audit.choose_canaries(0.8, 1e-6, 10**9)[0] == 1000
    m, c = audit.choose_canaries(6.0, 1.65e-6, 10**9)
    assert m == 10_000 and c > 6.0
    assert audit.choose_canaries(8.0, 1.65e-6, 10**9)[0] == 100_000
    # Capped by the largest parameter: the cap itself is tried.
    assert audit.choose_canaries(6.0, 1.65e-6, 5000)[0] == 5000
    # Nothing refutes 8 at delta 1.56e-3: the best ceiling, still below the claim.
    m, c = audit.choose_canaries(8.0, 1.56e-3, 10**9)
    assert c < 8.0 and c == max(audit.ceiling(n, 1.56e-3) for n in audit.LADDER)


@pytest.mark.parametrize("clipping", grads.CLIPPING)
def test_example_canaries_are_clipped_by_the_runs_clipping(clipping, monkeypatch):
    """Every canary drawn (q = 1), no noise, real rows with zero gradient: an example
    canary of norm 10 C enters at C, a Dirac one as it is; with ghost clipping's clip norm
    taken away, the example canary enters whole."""

    def loss_fn(p, batch, rng):
        w = batch["weight"]
        total = jnp.sum(w * (batch["x"] @ p["w"][:2]))
        return total / jnp.maximum(jnp.sum(w), 1.0), {"loss_sum": total, "count": jnp.sum(w)}

    params = {"w": jnp.zeros((50,))}
    batch = {"x": jnp.zeros((4, 2)), "weight": jnp.ones((4,))}
    c = grads.Canaries(leaf=0, coords=tuple(range(10, 20)), included=(True,) * 10,
                       value=5.0, sampling_rate=1.0)  # fmt: skip

    def released(slots):
        dp = grads.DP(0.5, 0.0, 4, clipping=clipping, canaries=dataclasses.replace(c, slots=slots))
        _, mets, g = grads.gradients(loss_fn, params, batch, jax.random.PRNGKey(0), dp=dp)
        np.testing.assert_allclose(mets["canary_scores"], g["w"][10:20], rtol=1e-6)
        assert float(jnp.abs(g["w"][:10]).max()) == 0.0
        return np.asarray(g["w"][10:20])

    np.testing.assert_allclose(released(slots=10), 0.5 / 4, rtol=1e-5)  # clipped to C
    np.testing.assert_allclose(released(slots=0), 5.0 / 4, rtol=1e-6)  # Dirac: as it is
    if clipping == "ghost":
        clipped_sum = ghost_clipping.clipped_sum
        monkeypatch.setattr(
            ghost_clipping, "clipped_sum", lambda *a, **k: clipped_sum(*a[:5], l2_norm_clip=1e9)
        )
        np.testing.assert_allclose(released(slots=10), 5.0 / 4, rtol=1e-5)


def test_the_real_mechanism_stays_below_the_claim(tmp_path):
    r = _audit(tmp_path)
    assert r["epsilon"] < 1.0 and r["epsilon_ceiling"] > 4
    assert r["epsilon_lower_bound"] <= r["epsilon"] and r["verdict"] == "consistent", r
    assert r["measured_noise"] == pytest.approx(2.0, rel=0.15)  # the noise it claims
    assert 0.4 < r["auroc"] < 0.65


def test_a_quarter_of_the_noise_is_caught(tmp_path):
    """sigma 0.5 where the plan says 2 (true epsilon about 15): the attacker measures the
    noise on the release, so its scores separate the canaries."""
    r = _audit(tmp_path, noise_multiplier=0.5)
    assert r["epsilon_lower_bound"] > r["epsilon"] and r["verdict"] == "violation", r


def test_clipping_switched_off_is_caught_by_example_canaries(tmp_path, monkeypatch):
    """ghost_clipping.clipped_sum with no clip norm (every example's gradient kept whole),
    the noise unchanged: the example canaries' gradients exceed C, so they show."""
    clipped_sum = ghost_clipping.clipped_sum
    monkeypatch.setattr(
        ghost_clipping, "clipped_sum", lambda *a, **k: clipped_sum(*a[:5], l2_norm_clip=math.inf)
    )
    r = _audit(tmp_path, canaries=1000, kind="example")
    assert r["epsilon_lower_bound"] > r["epsilon"] and r["verdict"] == "violation", r


def test_noise_switched_off_is_caught_at_a_claim_of_8(tmp_path):
    """The headline claim people use (epsilon 8 at delta 1e-6, noise calibrated to it) and no
    noise at all: the default picks 10^5 canaries (ceiling 8.7 > 8), so the bound can pass
    the claim, and does. The model is wide enough for that many coordinates (128 x 800)."""
    _fix_secret(tmp_path)
    big = {"model.hidden_size": 128, "model.mlp_dim": 800, "dp.noise_multiplier": None}
    c = _config(**{**STEPS, **big, "dp.target_epsilon": 8.0})
    r = audit.audit(c, str(tmp_path), devices=jax.devices()[:1], mechanism={"noise_multiplier": 0})
    assert r["epsilon"] == pytest.approx(8, abs=1e-3) and r["canaries"] == 100_000, r
    assert r["epsilon_ceiling"] > 8 and r["verdict"] == "violation", r


def test_example_canaries_on_the_real_mechanism_stay_below_the_claim(tmp_path):
    r = _audit(tmp_path, canaries=1000, kind="example")
    assert r["epsilon_lower_bound"] <= r["epsilon"] and r["verdict"] == "consistent", r


def test_a_claim_above_the_ceiling_is_inconclusive(tmp_path, capsys):
    """Too few canaries to refute the claim (10 refute nothing at delta 1e-6): the verdict
    says so, whatever the bound; `pjx audit` prints the ceiling first, the JSON last."""
    _fix_secret(tmp_path / "w")
    rc = cli.main(
        ["audit", "--config", _config_file(tmp_path), "--canaries", "10",
         "--workdir", str(tmp_path / "w")]
    )  # fmt: skip
    cap = capsys.readouterr()
    out = cap.out.strip().splitlines()
    assert rc == 0 and out, cap.err[-2000:]
    r = json.loads(out[-1])
    assert any("10 dirac canaries" in line for line in out[:3])  # the ceiling comes first
    assert {"epsilon", "epsilon_lower_bound", "canaries", "epsilon_ceiling", "verdict"} <= set(r)
    assert r["canaries"] == 10 and r["epsilon_ceiling"] <= r["epsilon"]
    assert r["verdict"] == "inconclusive"
