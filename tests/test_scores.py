"""Confidence scores: definitions, orientation of the registry, logits handling, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from failsight._validate import FailsightInputError
from failsight.reliability.scores import (
    SCORES,
    ScoreSpec,
    confidence_score,
    doctor,
    energy,
    entropy,
    margin,
    max_logit,
    msp,
    ratio,
)

P = np.array([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [1.0, 0.0, 0.0]])


def test_probability_scores_match_their_definitions():
    np.testing.assert_allclose(msp(P), [0.7, 0.4, 1.0])
    np.testing.assert_allclose(margin(P), [0.5, 0.0, 1.0])
    np.testing.assert_allclose(ratio(P), [0.2 / 0.7, 1.0, 0.0])
    ent = -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1))
    np.testing.assert_allclose(entropy(P), [ent, -(0.8 * np.log(0.4) + 0.2 * np.log(0.2)), 0.0])  # 0 log 0 = 0
    gini = 1 - (P**2).sum(axis=1)
    np.testing.assert_allclose(doctor(P), gini / (1 - gini))
    np.testing.assert_allclose(doctor(P, variant="beta"), (1 - P.max(1)) / P.max(1))


def test_against_scipy_and_torch_references():
    torch = pytest.importorskip("torch")
    from scipy.stats import entropy as sp_entropy

    rng = np.random.default_rng(0)
    z = rng.standard_normal((200, 7)) * 4
    p = softmax(z, axis=1)
    np.testing.assert_allclose(entropy(p), sp_entropy(p, axis=1), rtol=1e-12)
    zt = torch.from_numpy(z)
    for t in (1.0, 0.5, 3.0):
        ref = (-t * torch.logsumexp(zt / t, dim=1)).numpy()
        np.testing.assert_allclose(energy(z, temperature=t), ref, rtol=1e-12)
    np.testing.assert_allclose(max_logit(z), z.max(axis=1))
    top2 = np.sort(p, axis=1)[:, -2:]
    np.testing.assert_allclose(margin(p), top2[:, 1] - top2[:, 0], atol=1e-15)
    np.testing.assert_allclose(ratio(p), top2[:, 0] / top2[:, 1], rtol=1e-12)


def test_energy_is_stable_for_large_logits():
    z = np.array([[1000.0, 999.0, -1000.0]])
    assert np.isfinite(energy(z)).all()
    np.testing.assert_allclose(energy(z), [-(1000.0 + np.log1p(np.exp(-1.0)))])


def test_outputs_are_float64_vectors_and_accept_float32_binary_and_logits():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((50, 4)).astype(np.float32)
    p = softmax(z.astype(np.float64), axis=1).astype(np.float32)
    for fn in (msp, margin, ratio, entropy, doctor):
        out = fn(p)
        assert out.shape == (50,) and out.dtype == np.float64
        # logits are softmaxed where probabilities are needed
        np.testing.assert_allclose(fn(logits=z), fn(p.astype(np.float64)), rtol=1e-5, atol=1e-6)
    for fn in (energy, max_logit):
        assert fn(z).shape == (50,) and fn(z).dtype == np.float64
    pb = np.array([0.9, 0.5, 0.2])  # binary: P(class 1)
    np.testing.assert_allclose(msp(pb), [0.9, 0.5, 0.8])
    np.testing.assert_allclose(margin(pb), [0.8, 0.0, 0.6])


def test_registry_orients_every_score_higher_is_more_confident():
    assert set(SCORES) == {"msp", "margin", "ratio", "entropy", "doctor", "energy", "max_logit"}
    logits = np.array([[6.0, 0.5, 0.0], [0.3, 0.2, 0.1]])  # row 0 confident, row 1 unsure
    probs = softmax(logits, axis=1)
    for name, spec in SCORES.items():
        assert isinstance(spec, ScoreSpec) and spec.input in ("probs", "logits")
        s = confidence_score(name, probs=probs, logits=logits)
        assert s.shape == (2,) and s.dtype == np.float64
        assert s[0] > s[1], name
        natural = spec.fn(logits) if spec.input == "logits" else spec.fn(probs)
        np.testing.assert_allclose(s, natural if spec.higher_is_confident else -natural)
    # energy: the confidence is minus the free energy
    np.testing.assert_allclose(confidence_score("energy", logits=logits), -energy(logits))
    # probability scores from logits alone
    np.testing.assert_allclose(confidence_score("msp", logits=logits), probs.max(axis=1))


def test_selective_ranking_matches_msp_for_monotone_scores():
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(2), size=100)  # binary: msp, margin, ratio, entropy, doctor are monotone
    order = np.argsort(confidence_score("msp", probs=p), kind="stable")
    for name in ("margin", "ratio", "entropy", "doctor"):
        s = confidence_score(name, probs=p)
        assert np.all(np.diff(s[order]) >= -1e-12), name


def test_bad_input_raises_clear_errors():
    with pytest.raises(FailsightInputError, match="unknown score"):
        confidence_score("softmax", probs=P)
    with pytest.raises(FailsightInputError, match="defined on logits"):
        confidence_score("energy", probs=P)
    with pytest.raises(FailsightInputError, match="needs probs"):
        confidence_score("msp")
    with pytest.raises(FailsightInputError, match="pass probs"):
        msp()
    with pytest.raises(FailsightInputError, match="temperature"):
        energy(np.zeros((2, 3)), temperature=0.0)
    with pytest.raises(FailsightInputError, match="variant"):
        doctor(P, variant="gamma")
    with pytest.raises(FailsightInputError, match="logits"):
        msp(np.array([[2.0, -1.0]]))  # logits passed as probabilities
    with pytest.raises(FailsightInputError, match="NaN"):
        energy(np.array([[np.nan, 1.0]]))
