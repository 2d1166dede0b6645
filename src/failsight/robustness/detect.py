"""Shift detection from unlabelled data: two-sample tests on model outputs or features.

``detect_shift(reference, new, method=...)`` asks whether ``new`` comes from the same distribution as
``reference``. Inputs are ``(n, d)`` arrays of softmax outputs, logits or (penultimate) features — the
black-box dimensionality reduction of Rabanser et al. (2019), "Failing Loudly". Three tests:

- ``"bbsd"``: one two-sample Kolmogorov–Smirnov test per dimension, Bonferroni-corrected
  (black-box shift detection on softmax outputs).
- ``"mmd"``: unbiased MMD² with a Gaussian RBF kernel whose bandwidth comes from the median heuristic;
  p-value from a permutation test that counts the observed statistic, ``(1 + #{T_b >= T}) / (1 + B)``.
- ``"classifier"``: a classifier two-sample test (Lopez-Paz & Oquab 2017): train a classifier (balanced
  logistic regression or gradient boosting) to tell reference from new on one half of the pooled data and
  score it on the other half. Given the fitted classifier, the held-out group labels are exchangeable
  under the null, so the p-values are exact: by default the held-out AUC with a one-sided Mann–Whitney
  test (continuous: its false-positive rate sits at ``alpha`` even for small samples); optionally the
  held-out accuracy with the exact conditional (hypergeometric) tail — the binomial test made exact for
  finite, unequal groups, but discrete and therefore conservative for small samples.

Every test returns a :class:`ShiftTest` with ``statistic``, ``p_value``, ``threshold`` (the significance
level the p-value is compared against) and ``is_shift`` (``p_value <= threshold``); ``as_alibi()`` gives
alibi-detect's ``{is_drift, p_val, threshold, distance}``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np

from failsight._validate import FailsightInputError, as_float_array, check_fraction, check_int
from failsight.types import Result

Method = Literal["bbsd", "mmd", "classifier"]

#: Methods understood by :func:`detect_shift`.
METHODS: tuple[str, ...] = ("bbsd", "mmd", "classifier")

#: Fewest samples per group each test accepts (below this the test has no power or is undefined).
MIN_SAMPLES: dict[str, int] = {"bbsd": 5, "mmd": 5, "classifier": 10}

#: Largest pooled sample the MMD test accepts: its kernel matrix is (m + n)² floats.
MMD_MAX_POOLED = 20_000


@dataclasses.dataclass(frozen=True)
class ShiftTest(Result):
    """Outcome of a two-sample shift test.

    ``statistic`` is the test statistic (BBSD: largest per-dimension KS distance; MMD: unbiased MMD²;
    classifier: held-out AUC, or accuracy), ``p_value`` its (Bonferroni-adjusted, for BBSD) p-value,
    ``threshold`` the significance level ``alpha`` and ``is_shift = p_value <= threshold``.
    ``details`` holds method-specific extras (per-dimension p-values, bandwidth, permutation quantile, ...).
    """

    method: str
    statistic: float
    p_value: float
    threshold: float
    is_shift: bool
    n_reference: int
    n_new: int
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    # alibi-detect's names -------------------------------------------------------------------------
    @property
    def is_drift(self) -> bool:
        """Alias of ``is_shift`` (alibi-detect's name)."""
        return self.is_shift

    @property
    def p_val(self) -> float:
        """Alias of ``p_value`` (alibi-detect's name)."""
        return self.p_value

    @property
    def distance(self) -> float:
        """Alias of ``statistic`` (alibi-detect's name)."""
        return self.statistic

    def as_alibi(self) -> dict[str, Any]:
        """Return alibi-detect's ``{"is_drift", "p_val", "threshold", "distance"}`` dict."""
        return {"is_drift": int(self.is_shift), "p_val": self.p_value, "threshold": self.threshold,
                "distance": self.statistic}


# --------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------
def _as_2d(x: Any, name: str) -> np.ndarray:
    arr = as_float_array(x, name, ndim=(1, 2), allow_float32=False)
    return arr[:, None] if arr.ndim == 1 else arr


def _check_pair(reference: Any, new: Any, method: str) -> tuple[np.ndarray, np.ndarray]:
    ref = _as_2d(reference, "reference")
    cur = _as_2d(new, "new")
    if ref.shape[1] != cur.shape[1]:
        raise FailsightInputError(
            f"reference has {ref.shape[1]} feature(s) per sample but new has {cur.shape[1]}; both must be "
            "(n, d) arrays of the same kind (e.g. softmax outputs of the same model)."
        )
    need = MIN_SAMPLES[method]
    if min(len(ref), len(cur)) < need:
        raise FailsightInputError(
            f"too few samples for the {method!r} test: reference has {len(ref)} and new has {len(cur)}, "
            f"need at least {need} in each. Collect more data or pool several batches before testing."
        )
    return ref, cur


# --------------------------------------------------------------------------------------------------
# BBSD: per-dimension KS with Bonferroni
# --------------------------------------------------------------------------------------------------
def _max_ks_permutations(pooled: np.ndarray, m: int, rng: np.random.Generator, n_permutations: int,
                         chunk: int = 128) -> tuple[float, np.ndarray]:
    """Max over dimensions of the two-sample KS statistic, observed and under ``n_permutations`` random
    relabellings of the pooled sample ``(m + n, d)`` (first ``m`` rows = reference)."""
    big_n, d = pooled.shape
    n = big_n - m
    order = np.argsort(pooled, axis=0, kind="stable")  # (N, d), once
    labels = np.zeros((1 + n_permutations, big_n), dtype=np.float64)
    labels[0, :m] = 1.0
    base = labels[0].copy()
    for b in range(1, 1 + n_permutations):  # one shuffle per permutation (cheap); the KS work is batched below
        labels[b] = rng.permutation(base)
    stat = np.zeros(1 + n_permutations)
    for j in range(d):
        for lo in range(0, 1 + n_permutations, chunk):
            g = labels[lo:lo + chunk][:, order[:, j]]  # (b, N) group of each sorted value
            c_ref = np.cumsum(g, axis=1)
            c_cur = np.arange(1, big_n + 1) - c_ref
            ks = np.abs(c_ref / m - c_cur / n).max(axis=1)
            np.maximum(stat[lo:lo + chunk], ks, out=stat[lo:lo + chunk])
    return float(stat[0]), stat[1:]


def _bbsd(ref: np.ndarray, cur: np.ndarray, alpha: float, correction: str = "bonferroni",
          n_permutations: int = 500, rng: np.random.Generator | None = None) -> ShiftTest:
    from scipy import stats

    d = ref.shape[1]
    res = stats.ks_2samp(ref, cur, axis=0)  # vectorised over the d columns
    p_dims = np.atleast_1d(np.asarray(res.pvalue, dtype=np.float64))
    ks_dims = np.atleast_1d(np.asarray(res.statistic, dtype=np.float64))
    p_dims = np.where(np.isnan(p_dims), 1.0, p_dims)  # constant identical columns
    details: dict[str, Any] = {"p_values": p_dims, "ks_statistics": ks_dims, "correction": correction}
    if correction == "bonferroni":
        p_value = float(min(1.0, d * p_dims.min()))  # Bonferroni: reject if any p_j <= alpha / d
        details["per_dimension_threshold"] = alpha / d
    else:  # permutation distribution of max_j KS_j: exact size whatever the dependence between dimensions
        rng = rng if rng is not None else np.random.default_rng(0)
        observed, null = _max_ks_permutations(np.concatenate([ref, cur]), len(ref), rng, n_permutations)
        p_value = float((1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + n_permutations))
        details["n_permutations"] = n_permutations
    return ShiftTest(
        method="bbsd", statistic=float(ks_dims.max()), p_value=p_value, threshold=alpha,
        is_shift=bool(p_value <= alpha), n_reference=len(ref), n_new=len(cur), details=details,
    )


# --------------------------------------------------------------------------------------------------
# MMD with permutation test
# --------------------------------------------------------------------------------------------------
def _sq_dists(z: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", z, z)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)
    np.maximum(d2, 0.0, out=d2)
    np.fill_diagonal(d2, 0.0)
    return d2


def _mmd2_unbiased(k0s: np.ndarray, s: np.ndarray, rowsum: np.ndarray, total: float,
                   m: int, n: int) -> np.ndarray:
    """Unbiased MMD² for group indicators ``s`` ``(B, N)`` given ``k0s = s @ K0`` (K0: zero diagonal)."""
    xx = np.einsum("bj,bj->b", k0s, s)  # sum over i != j in X
    xr = s @ rowsum  # sum_i in X, j any of K0
    yy = total - 2.0 * xr + xx  # sum over i != j in Y
    xy = xr - xx  # sum_i in X, j in Y
    return xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2.0 * xy / (m * n)


def _mmd(ref: np.ndarray, cur: np.ndarray, alpha: float, n_permutations: int,
         rng: np.random.Generator, chunk: int = 256) -> ShiftTest:
    m, n = len(ref), len(cur)
    big_n = m + n
    if big_n > MMD_MAX_POOLED:
        raise FailsightInputError(
            f"the MMD test builds a ({big_n} x {big_n}) kernel matrix; pass at most {MMD_MAX_POOLED} samples "
            "in total (subsample reference and new, e.g. 2000 each)."
        )
    z = np.concatenate([ref, cur])
    d2 = _sq_dists(z)
    off = d2[np.triu_indices(big_n, k=1)]  # each pair once: same median as over all off-diagonal entries
    med = float(np.median(off))
    if med <= 0:  # more than half the pairs coincide: fall back to the mean squared distance
        med = float(off.mean())
    if med <= 0:
        med = 1.0  # all points identical: every statistic is 0, p-value 1
    bandwidth = float(np.sqrt(med / 2.0))  # k(x, y) = exp(-|x - y|² / (2 σ²)), 2σ² = median |x - y|²
    k0 = np.exp(-d2 / med)
    np.fill_diagonal(k0, 0.0)
    rowsum = k0.sum(axis=1)
    total = float(rowsum.sum())

    s_obs = np.zeros((1, big_n))
    s_obs[0, :m] = 1.0
    stat = float(_mmd2_unbiased(s_obs @ k0, s_obs, rowsum, total, m, n)[0])

    base = np.zeros(big_n)
    base[:m] = 1.0
    perm_stats = np.empty(n_permutations)
    for start in range(0, n_permutations, chunk):  # loop over chunks of permutations, not samples
        b = min(chunk, n_permutations - start)
        s = rng.permuted(np.broadcast_to(base, (b, big_n)), axis=1)
        perm_stats[start:start + b] = _mmd2_unbiased(s @ k0, s, rowsum, total, m, n)
    tol = 1e-12 * max(1.0, abs(stat))
    count = int(np.count_nonzero(perm_stats >= stat - tol))
    p_value = (1.0 + count) / (1.0 + n_permutations)
    return ShiftTest(
        method="mmd", statistic=stat, p_value=float(p_value), threshold=alpha,
        is_shift=bool(p_value <= alpha), n_reference=m, n_new=n,
        details={"kernel": "rbf", "bandwidth": bandwidth, "n_permutations": n_permutations,
                 "statistic_threshold": float(np.quantile(perm_stats, 1.0 - alpha)),
                 "permutation_mean": float(perm_stats.mean())},
    )


# --------------------------------------------------------------------------------------------------
# classifier two-sample test
# --------------------------------------------------------------------------------------------------
def _make_classifier(kind: str, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, class_weight="balanced"))
    if kind == "gbm":
        from sklearn.ensemble import GradientBoostingClassifier

        # single-threaded on purpose: the OpenMP histogram GBM crawls on a busy shared machine
        return GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=seed)
    raise FailsightInputError(f"unknown classifier {kind!r}; use 'logistic' or 'gbm'.")


def _classifier(ref: np.ndarray, cur: np.ndarray, alpha: float, rng: np.random.Generator,
                classifier: str, test_size: float, seed: int, statistic: str) -> ShiftTest:
    from scipy import stats

    m, n = len(ref), len(cur)
    z = np.concatenate([ref, cur])
    y = np.concatenate([np.zeros(m, dtype=np.int64), np.ones(n, dtype=np.int64)])
    # stratified split: each group contributes the same share to the held-out half
    test_mask = np.zeros(m + n, dtype=bool)
    for lo, size in ((0, m), (m, n)):
        k = min(size - 1, max(1, round(test_size * size)))
        test_mask[lo + rng.permutation(size)[:k]] = True
    clf = _make_classifier(classifier, seed)
    y_train = y[~test_mask]
    if classifier == "gbm":  # balance the groups (logistic regression does it with class_weight)
        counts = np.bincount(y_train, minlength=2)
        clf.fit(z[~test_mask], y_train, sample_weight=(len(y_train) / (2.0 * counts))[y_train])
    else:
        clf.fit(z[~test_mask], y_train)
    score = np.asarray(clf.predict_proba(z[test_mask])[:, 1], dtype=np.float64)
    pred = (score > 0.5).astype(np.int64)
    y_test = y[test_mask]
    n_test = int(test_mask.sum())
    n_pos = int(y_test.sum())  # held-out samples from `new`
    n_neg = n_test - n_pos
    accuracy = float(np.mean(pred == y_test))
    # Under H0 the held-out labels are exchangeable given the fitted classifier, so both tests are exact.
    s_new, s_ref = score[y_test == 1], score[y_test == 0]
    ties = len(np.unique(score)) < n_test
    mwu = stats.mannwhitneyu(s_new, s_ref, alternative="greater",
                             method="exact" if (min(n_pos, n_neg) <= 20 and not ties) else "asymptotic")
    auc = float(mwu.statistic) / (n_pos * n_neg)
    if statistic == "auc":
        stat, p_value = auc, float(mwu.pvalue)
        kind = "one-sided Mann-Whitney U test of the held-out scores (AUC > 1/2)"
    else:
        # #correct = 2 TP + n_test - n_pred_pos - n_pos is increasing in TP, and TP is hypergeometric
        tp = int(np.count_nonzero((pred == 1) & (y_test == 1)))
        stat = accuracy
        p_value = float(stats.hypergeom.sf(tp - 1, n_test, n_pos, int(pred.sum())))
        kind = "exact conditional (hypergeometric) test of the held-out accuracy"
    p_value = min(1.0, max(p_value, 0.0))
    return ShiftTest(
        method="classifier", statistic=stat, p_value=p_value, threshold=alpha,
        is_shift=bool(p_value <= alpha), n_reference=m, n_new=n,
        details={"classifier": classifier, "statistic": statistic, "accuracy": accuracy, "auc": auc,
                 "n_test": n_test, "chance_accuracy": max(n_pos, n_neg) / n_test, "p_value_kind": kind},
    )


# --------------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------------
def detect_shift(reference: Any, new: Any, method: Method = "bbsd", *, alpha: float = 0.05,
                 n_permutations: int = 500, seed: int = 0, classifier: str = "logistic",
                 classifier_statistic: str = "auc", test_size: float = 0.5,
                 bbsd_correction: str = "bonferroni") -> ShiftTest:
    """Test whether ``new`` was drawn from the same distribution as ``reference``.

    Parameters
    ----------
    reference : ``(m, d)`` array (or tensor) — softmax outputs, logits or features on in-distribution data.
    new : ``(n, d)`` array of the same kind on the data to check. ``(n,)`` inputs are read as ``d = 1``.
    method : ``"bbsd"`` (per-dimension KS + Bonferroni; meant for softmax outputs), ``"mmd"`` (RBF-kernel
        MMD² permutation test) or ``"classifier"`` (classifier two-sample test).
    alpha : significance level; ``is_shift`` is ``p_value <= alpha``.
    n_permutations : permutations for the MMD test and the permutation-calibrated BBSD (p-value resolution
        ``1 / (n_permutations + 1)``).
    seed : seeds the permutations and the classifier test's split, so results are reproducible.
    classifier : ``"logistic"`` (standardised logistic regression) or ``"gbm"`` (gradient boosting, 100
        depth-3 trees) for the classifier test; both weight the two groups equally.
    classifier_statistic : ``"auc"`` (default): held-out AUC of the classifier's scores with an exact /
        asymptotic Mann–Whitney p-value — continuous, so its false-positive rate sits at ``alpha`` even
        for small samples, and more powerful; ``"accuracy"``: held-out accuracy with the exact
        hypergeometric (conditional binomial) p-value — discrete, hence conservative for small samples.
    test_size : share of each group held out to score the classifier test.
    bbsd_correction : ``"bonferroni"`` (default; Rabanser et al. 2019: reject when any per-dimension exact KS
        p-value is ``<= alpha / d``; its size is at most ``alpha`` for any dependence between the ``d``
        outputs — on the digits CNN's softmax outputs it measured 0.044 [0.036, 0.054] at 10 new samples
        and 0.043–0.048 at 100–1000, 2000 trials each) or ``"permutation"`` (the maximum KS statistic over
        dimensions calibrated by relabelling the pooled sample: exact size for any dependence,
        ``n_permutations`` relabellings, ~10× the cost).

    Returns
    -------
    ShiftTest with ``statistic``, ``p_value``, ``threshold`` (= ``alpha``), ``is_shift`` and ``details``.
    """
    if method not in METHODS:
        raise FailsightInputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    alpha = check_fraction(alpha, "alpha")
    seed = check_int(seed, "seed", minimum=0)
    ref, cur = _check_pair(reference, new, method)
    rng = np.random.default_rng(seed)
    if method == "bbsd":
        if bbsd_correction not in ("bonferroni", "permutation"):
            raise FailsightInputError(
                f"unknown bbsd_correction {bbsd_correction!r}; use 'bonferroni' or 'permutation'."
            )
        if bbsd_correction == "permutation":
            n_permutations = check_int(n_permutations, "n_permutations", minimum=1)
        return _bbsd(ref, cur, alpha, bbsd_correction, n_permutations, rng)
    if method == "mmd":
        n_permutations = check_int(n_permutations, "n_permutations", minimum=1)
        return _mmd(ref, cur, alpha, n_permutations, rng)
    test_size = check_fraction(test_size, "test_size")
    if classifier_statistic not in ("auc", "accuracy"):
        raise FailsightInputError(
            f"unknown classifier_statistic {classifier_statistic!r}; use 'auc' or 'accuracy'."
        )
    return _classifier(ref, cur, alpha, rng, classifier, test_size, seed, classifier_statistic)
