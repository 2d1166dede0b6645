"""The one binning core behind every binned calibration quantity in :mod:`failsight.reliability`.

Every binned metric (ECE/MCE/RMSCE in all variants, reliability diagrams, their bootstrap intervals)
reduces its input to per-bin sums computed here, so bin edges and bin membership are defined once:

* ``B`` bins. ``strategy="uniform"``: edges ``np.linspace(0, 1, B + 1)``. ``strategy="quantile"``:
  edges ``np.percentile(values, 100 * np.linspace(0, 1, B + 1))`` (exactly scikit-learn's
  ``calibration_curve``), outer edges pinned to 0 and 1. Tied values can make quantile bins empty.
* Bins are **right-closed** as in Guo et al. (2017): bin ``b`` holds ``e_b < x <= e_(b+1)``, and the
  first bin also holds ``x = 0``. So a confidence of exactly 1.0 is in the last bin and 0 in the first;
  there is no extra bin. The assignment equals ``np.searchsorted(edges[1:-1], x, side="left")``, the
  rule of scikit-learn's ``calibration_curve``.
* All sums are accumulated in float64, also for float32 input.

A "column" generalises the three binned views of a probability matrix: column ``j`` holds one value per
sample and the sample is a *hit* in column ``j`` when its label equals ``j``. Top-label binning is one
column (the max probability; label 0 when the argmax is correct), class-wise binning has one column per
class (``p[:, j]`` against ``y == j``).

Two backends give bit-identical results: numba kernels (one fused pass over the probability matrix:
validation, max, argmax, label compare, bin index and accumulation) and a pure-numpy fallback used when
numba is not installed (or ``USE_NUMBA`` is set to False). Both accumulate each bin's sums in the same
order (rows in fixed chunks of ``CHUNK``, partial sums added chunk by chunk), so their floating-point
results agree exactly, whatever the number of threads. Large inputs are split over threads by chunk
ranges (the kernels release the GIL); small ones run in the calling thread, where starting threads
would cost more than the work.

Bootstrap resampling draws indices from a counter-based generator (SplitMix64 finaliser keyed by
``(seed, resample, draw)``): the same indices on every backend and thread count, so bootstrap
results are reproducible from ``seed`` alone.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from failsight._validate import (
    PROB_SUM_ATOL,
    FailsightInputError,
    FailsightWarning,
    check_consistent_length,
    check_int,
    check_labels,
    check_probs,
    to_numpy,
)

try:  # numba is a declared dependency; the numpy fallback keeps the core working without it
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - tested in a subprocess that blocks the numba import
    HAVE_NUMBA = False

#: Use the numba kernels (set the environment variable FAILSIGHT_DISABLE_NUMBA=1 to force numpy).
USE_NUMBA: bool = HAVE_NUMBA and not os.environ.get("FAILSIGHT_DISABLE_NUMBA")

#: Rows per accumulation chunk. Fixed (not tied to the thread count) so results are deterministic.
CHUNK = 1 << 13

#: Inputs with at least this many element operations are split over threads; smaller ones run serially.
PARALLEL_MIN_WORK = 1 << 21


def _default_threads() -> int:
    env = os.environ.get("FAILSIGHT_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


#: Most threads to use (environment variable ``FAILSIGHT_NUM_THREADS``; default: the usable CPUs).
MAX_THREADS: int = _default_threads()

STRATEGIES = ("uniform", "quantile")

#: Most bins a binned metric accepts (the per-bin sums are dense arrays of this length per chunk).
_MAX_BINS = 1 << 16

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_LO32 = np.uint64(0xFFFFFFFF)
_ONE = np.uint64(1)


# ----------------------------------------------------------------------------------------------------
# results and parameter checks
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class BinCounts:
    """Per-bin sums of ``m`` binned columns.

    Attributes: ``edges (m, B+1)``, ``count (m, B)``, ``sum_value (m, B)`` (sum of the binned values),
    ``sum_hit (m, B)`` (number of hits), all float64, and ``n`` (number of samples).
    """

    edges: np.ndarray
    count: np.ndarray
    sum_value: np.ndarray
    sum_hit: np.ndarray
    n: int

    @classmethod
    def empty(cls, edges: np.ndarray) -> BinCounts:
        """The identity of :meth:`merge`: zero sums on ``edges`` ``(m, B+1)`` (or ``(B+1,)`` for one column)."""
        e = np.atleast_2d(np.asarray(edges, dtype=np.float64))
        z = np.zeros((e.shape[0], e.shape[1] - 1))
        return cls(e, z, z.copy(), z.copy(), 0)

    def merge(self, other: BinCounts) -> BinCounts:
        """Sums of two disjoint sets of samples binned on the same edges (a new object; neither is changed).

        Counts and hits are exact under any grouping; ``sum_value`` is a float sum, so a fixed merge order
        (the engine's key-ordered fold) makes it bit-reproducible.
        """
        if self.edges.shape != other.edges.shape or not np.array_equal(self.edges, other.edges):
            raise FailsightInputError(
                "cannot merge bin counts over different bin edges; bin both parts with the same uniform edges "
                "(quantile edges depend on all of the data and do not merge)."
            )
        return BinCounts(self.edges, self.count + other.count, self.sum_value + other.sum_value,
                         self.sum_hit + other.sum_hit, int(self.n + other.n))


@dataclasses.dataclass(frozen=True, eq=False)
class Reduced:
    """Samples reduced to what binning needs; the input to bootstrap resampling.

    ``values (n, m)`` binned values, ``labels (n,)`` (a sample is a hit in column ``j`` when
    ``labels == j``), ``edges (m, B+1)`` and ``bin_index (n, m)`` (compact unsigned ints).
    """

    values: np.ndarray
    labels: np.ndarray
    edges: np.ndarray
    bin_index: np.ndarray

    @property
    def n_bins(self) -> int:
        return self.edges.shape[1] - 1


def check_strategy(strategy: Any) -> str:
    """Validate ``strategy`` ("uniform" or "quantile")."""
    if strategy not in STRATEGIES:
        raise FailsightInputError(
            f"strategy must be 'uniform' (equal-width bins) or 'quantile' (equal-mass bins), got {strategy!r}."
        )
    return str(strategy)


def check_n_bins(n_bins: Any, n_samples: int) -> int:
    """Validate ``n_bins``: an integer >= 1. More bins than samples is allowed (as in torchmetrics, netcal
    and scikit-learn: most bins are then empty and the estimate is noisy), with a :class:`FailsightWarning`."""
    b = check_int(n_bins, "n_bins", minimum=1)
    if b > _MAX_BINS:
        raise FailsightInputError(
            f"n_bins={b} is more than {_MAX_BINS:,} bins: per-bin sums that large cost memory for nothing "
            "(and almost every bin would be empty); use 10-20 bins, or strategy='quantile' for equal-mass bins."
        )
    if b > n_samples:
        warnings.warn(
            f"n_bins={b} is more bins than samples ({n_samples}): at most {n_samples} bins hold a sample and "
            "the calibration error is a very noisy estimate (10-20 bins need a few hundred samples). Pass "
            "fewer bins, or ci=0.95 to calibration_error to see the uncertainty.",
            FailsightWarning, stacklevel=4,
        )
    return b


def uniform_edges(n_bins: int) -> np.ndarray:
    """Equal-width edges ``(B+1,)`` on [0, 1]."""
    return np.linspace(0.0, 1.0, n_bins + 1)


def quantile_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-mass edges ``(B+1,)`` of ``values (n,)`` (as sklearn's ``calibration_curve``), ends 0 and 1."""
    v = np.asarray(values, dtype=np.float64)
    edges = np.percentile(v, np.linspace(0.0, 1.0, n_bins + 1) * 100)
    edges[0], edges[-1] = 0.0, 1.0
    return edges


def make_edges(values: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    """Edges ``(m, B+1)`` for the columns of ``values (n, m)``."""
    m = values.shape[1]
    if strategy == "uniform":
        return np.tile(uniform_edges(n_bins), (m, 1))
    return np.stack([quantile_edges(values[:, j], n_bins) for j in range(m)])


def assign_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Right-closed bin index of each value ``(n,)`` for edges ``(B+1,)``; int64 in ``[0, B)``."""
    return np.searchsorted(edges[1:-1], values, side="left").astype(np.int64, copy=False)


def _is_uniform(edges: np.ndarray) -> bool:
    b = edges.shape[1] - 1
    return bool(np.array_equal(edges, np.tile(uniform_edges(b), (edges.shape[0], 1))))


def _compact_index_dtype(n_bins: int) -> type:
    if n_bins <= 256:
        return np.uint8
    if n_bins <= 65536:
        return np.uint16
    return np.int64


_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def _ranges(total: int, work: int) -> list[tuple[int, int]]:
    """Split ``range(total)`` (chunks or resamples) into contiguous ranges, one per thread."""
    t = min(MAX_THREADS, total) if work >= PARALLEL_MIN_WORK else 1
    bounds = np.linspace(0, total, max(t, 1) + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds.tolist()) if b > a]


def _run(kernel: Any, total: int, work: int, *args: Any) -> None:
    """Call ``kernel(*args, a, b)`` for ranges covering ``range(total)``, in threads when large."""
    ranges = _ranges(total, work)
    if len(ranges) <= 1:
        kernel(*args, 0, total)
        return
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE < len(ranges):
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(max_workers=len(ranges), thread_name_prefix="failsight")
            _POOL_SIZE = len(ranges)
        pool = _POOL
    for f in [pool.submit(kernel, *args, a, b) for a, b in ranges]:
        f.result()


def _reduce_chunks(parts: np.ndarray) -> np.ndarray:
    """Sum per-chunk partials ``(C, ...)`` chunk by chunk (the one fixed order both backends share)."""
    total = np.zeros(parts.shape[1:], dtype=np.float64)
    for c in range(parts.shape[0]):
        total += parts[c]
    return total


# ----------------------------------------------------------------------------------------------------
# numba kernels
#
# Notes for maintainers: (1) never pass arrays to helper functions called once per row or element:
# numba then emits atomic reference counting per call, which costs more than the work itself; helpers
# here are called once per chunk. (2) a row pass writes confidence/correctness to chunk buffers and a
# second pass bins them: mixing the data-dependent histogram stores into the row loop stalls the CPU.
# (3) drivers take a range ``a..b`` of chunks (or resamples) and write into preallocated outputs, so
# :func:`_run` can hand ranges to threads; results never depend on the split.
# ----------------------------------------------------------------------------------------------------

if HAVE_NUMBA:

    @njit(cache=True, fastmath={"reassoc"})
    def _nb_rows_top(p, y, lo, hi, atol, conf, hit):  # pragma: no cover - compiled
        # rows lo..hi: conf = max, hit = (first argmax == y), and the checks of check_probs.
        # Row sums accumulate in float64 whatever p's dtype (as check_probs does), so their rounding is
        # ~k * 1.1e-16, not k * 6e-8 (float32 sums of >16,700 classes would exceed the 1e-3 tolerance itself).
        # "reassoc" only lets LLVM vectorise the row sums (used for validation, never for results);
        # comparisons keep their IEEE meaning, so NaN/inf still fail the checks.
        k = p.shape[1]
        flag = False
        for i in range(lo, hi):
            best = p[i, 0]
            arg = 0
            if k >= 32:  # long rows: 4-way max, first-index test of the label, vectorised sum / sign
                m0 = best
                m1 = best
                m2 = best
                m3 = best
                j = 1
                while j + 4 <= k:
                    v0 = p[i, j]
                    v1 = p[i, j + 1]
                    v2 = p[i, j + 2]
                    v3 = p[i, j + 3]
                    m0 = v0 if v0 > m0 else m0
                    m1 = v1 if v1 > m1 else m1
                    m2 = v2 if v2 > m2 else m2
                    m3 = v3 if v3 > m3 else m3
                    j += 4
                while j < k:
                    v0 = p[i, j]
                    m0 = v0 if v0 > m0 else m0
                    j += 1
                m0 = m1 if m1 > m0 else m0
                m2 = m3 if m3 > m2 else m2
                best = m2 if m2 > m0 else m0
                yi = y[i]
                earlier = False  # the first argmax is y[i] iff p[i, y] is the max and no earlier entry is
                for j in range(yi):
                    earlier |= p[i, j] == best
                arg = yi if (p[i, yi] == best and not earlier) else -1
                s = 0.0
                neg = False
                for j in range(k):
                    v = p[i, j]
                    s += np.float64(v)
                    neg |= v < 0
                ok = not neg
            else:  # short rows: one fused loop
                s = np.float64(best)
                mn = best
                for j in range(1, k):
                    v = p[i, j]
                    s += np.float64(v)
                    mn = min(mn, v)
                    if v > best:
                        best = v
                        arg = j
                ok = mn >= 0
            if ok and best <= 1 and abs(s - 1.0) <= atol:  # False for NaN/inf as well
                conf[i - lo] = best
            else:
                flag = True
                conf[i - lo] = 0.0
            hit[i - lo] = arg == y[i]
        return flag

    @njit(cache=True)
    def _nb_locate(x, edges, row, uniform, out):  # pragma: no cover - compiled
        # right-closed bin of each x[r] for edges[row]; equals np.searchsorted(edges[row, 1:-1], x, "left")
        nb = edges.shape[1] - 1
        if uniform:
            fnb = np.float64(nb)
            for r in range(x.shape[0]):
                xr = x[r]  # in [0, 1]
                b = np.int64(xr * fnb)
                b = b if b < nb else nb - 1
                # one-step correction to the exact edges (x * nb can round across an edge)
                down = (xr <= edges[row, b]) & (b > 0)
                up = (xr > edges[row, b + 1]) & (b < nb - 1)
                out[r] = b - np.int64(down) + np.int64(up)
        else:
            for r in range(x.shape[0]):
                xr = x[r]
                lo = 0
                hi = nb - 1
                while lo < hi:
                    mid = (lo + hi) >> 1
                    if xr <= edges[row, mid + 1]:
                        hi = mid
                    else:
                        lo = mid + 1
                out[r] = lo

    @njit(cache=True)
    def _nb_accumulate(bins, vals, hit, cnt, sv, sh):  # pragma: no cover - compiled
        # count and hits share one int64 (count < 2**32 per chunk): one read-modify-write fewer per sample
        nb = cnt.shape[0]
        packed = np.zeros(nb, dtype=np.int64)
        for r in range(bins.shape[0]):
            b = bins[r]
            packed[b] += 1 + (np.int64(hit[r]) << 32)
            sv[b] += vals[r]
        for b in range(nb):
            cnt[b] += packed[b] & 0xFFFFFFFF
            sh[b] += packed[b] >> 32

    @njit(cache=True, nogil=True)
    def _nb_top_label_hist(p, y, edges, uniform, atol, chunk, cnt, sv, sh, bad, a, b):  # pragma: no cover
        n = p.shape[0]
        for c in range(a, b):
            lo = c * chunk
            hi = min(n, lo + chunk)
            conf = np.empty(hi - lo)
            hit = np.empty(hi - lo, dtype=np.bool_)
            bins = np.empty(hi - lo, dtype=np.int64)
            bad[c] = _nb_rows_top(p, y, lo, hi, atol, conf, hit)
            _nb_locate(conf, edges, 0, uniform, bins)
            _nb_accumulate(bins, conf, hit, cnt[c], sv[c], sh[c])

    @njit(cache=True, nogil=True)
    def _nb_top_label_reduce(p, y, atol, chunk, conf, hit, bad, a, b):  # pragma: no cover - compiled
        n = p.shape[0]
        for c in range(a, b):
            lo = c * chunk
            hi = min(n, lo + chunk)
            bad[c] = _nb_rows_top(p, y, lo, hi, atol, conf[lo:hi], hit[lo:hi])

    @njit(cache=True, nogil=True)
    def _nb_bin_index(v, edges, uniform, chunk, out, a, b):  # pragma: no cover - compiled
        n, m = v.shape
        for c in range(a, b):
            lo = c * chunk
            hi = min(n, lo + chunk)
            x = np.empty(hi - lo)
            bins = np.empty(hi - lo, dtype=np.int64)
            for j in range(m):
                for r in range(hi - lo):
                    x[r] = v[lo + r, j]
                _nb_locate(x, edges, j, uniform, bins)
                for r in range(hi - lo):
                    out[lo + r, j] = bins[r]

    @njit(cache=True, nogil=True)
    def _nb_column_hist(v, y, bidx, chunk, cnt, sv, sh, a, b):  # pragma: no cover - compiled
        # v (n, m) values, y (n,) labels, bidx (n, m) bin indices -> per-chunk sums (nc, m, nb)
        n, m = v.shape
        for c in range(a, b):
            lo = c * chunk
            hi = min(n, lo + chunk)
            lc = cnt[c]
            ls = sv[c]
            lh = sh[c]
            for i in range(lo, hi):
                yi = y[i]
                for j in range(m):
                    k = np.int64(bidx[i, j])
                    lc[j, k] += 1
                    ls[j, k] += v[i, j]
                    if yi == j:
                        lh[j, k] += 1

    @njit(cache=True)
    def _nb_mix(z):  # pragma: no cover - compiled
        z = (z ^ (z >> _S30)) * _MIX1
        z = (z ^ (z >> _S27)) * _MIX2
        return z ^ (z >> _S31)

    @njit(cache=True)
    def _nb_boot1_one(key, v, seed, r, lc, ls, lh):  # pragma: no cover - compiled
        # resample r of one column; key = bin << 1 | hit (compact ints keep the random reads in cache)
        n = key.shape[0]
        nn = np.uint64(n)
        ctr = _nb_mix(seed + (np.uint64(r) + _ONE) * _GAMMA)
        for _t in range(n):
            ctr += _GAMMA
            z = _nb_mix(ctr)
            i = np.int64(((z >> _S32) * nn + (((z & _LO32) * nn) >> _S32)) >> _S32)
            kk = np.int64(key[i])
            b = kk >> 1
            lc[b] += 1
            lh[b] += kk & 1
            ls[b] += v[i]

    @njit(cache=True)
    def _nb_boot_one(bidx, v, y, seed, r, lc, ls, lh):  # pragma: no cover - compiled
        # resample r of m columns (lc, ls, lh are (m, nb))
        n, m = bidx.shape
        nn = np.uint64(n)
        ctr = _nb_mix(seed + (np.uint64(r) + _ONE) * _GAMMA)
        for _t in range(n):
            ctr += _GAMMA
            z = _nb_mix(ctr)
            i = np.int64(((z >> _S32) * nn + (((z & _LO32) * nn) >> _S32)) >> _S32)
            yi = np.int64(y[i])
            for j in range(m):
                b = np.int64(bidx[i, j])
                lc[j, b] += 1
                ls[j, b] += v[i, j]
                if yi == j:
                    lh[j, b] += 1

    @njit(cache=True, nogil=True)
    def _nb_bootstrap1(key, v, seed, cnt, sv, sh, r0, a, b):  # pragma: no cover - compiled
        for r in range(a, b):
            _nb_boot1_one(key, v, seed, r0 + r, cnt[r], sv[r], sh[r])

    @njit(cache=True, nogil=True)
    def _nb_bootstrap(bidx, v, y, seed, cnt, sv, sh, r0, a, b):  # pragma: no cover - compiled
        for r in range(a, b):
            _nb_boot_one(bidx, v, y, seed, r0 + r, cnt[r], sv[r], sh[r])


# ----------------------------------------------------------------------------------------------------
# numpy fallbacks (same values and the same accumulation order as the kernels)
# ----------------------------------------------------------------------------------------------------


def _chunks(n: int) -> range:
    return range(0, n, CHUNK)


def _col_groups(rows: int, m: int) -> list[range]:
    """Column groups small enough for a vectorised bincount (columns are separate histograms)."""
    g = max(1, (1 << 21) // max(1, rows))
    return [range(a, min(m, a + g)) for a in range(0, m, g)]


def _np_top_label_reduce(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    arg = p.argmax(axis=1)
    conf = np.take_along_axis(p, arg[:, None], axis=1)[:, 0].astype(np.float64)
    return conf, arg == y


def _np_bin_index(v: np.ndarray, edges: np.ndarray, dtype: type) -> np.ndarray:
    out = np.empty(v.shape, dtype=dtype)
    for j in range(v.shape[1]):
        out[:, j] = assign_bins(v[:, j].astype(np.float64), edges[j])
    return out


def _np_column_hist(v: np.ndarray, y: np.ndarray, bidx: np.ndarray, nb: int) -> tuple[np.ndarray, ...]:
    n, m = v.shape
    nc = len(_chunks(n))
    cnt = np.zeros((nc, m, nb), dtype=np.int64)
    sh = np.zeros((nc, m, nb), dtype=np.int64)
    sv = np.zeros((nc, m, nb))
    for c, lo in enumerate(_chunks(n)):
        hi = min(n, lo + CHUNK)
        for cols in _col_groups(hi - lo, m):
            g = len(cols)
            b = bidx[lo:hi, cols.start:cols.stop].astype(np.int64)
            key = (b + np.arange(g, dtype=np.int64) * nb).ravel()
            hits = (y[lo:hi, None] == np.arange(cols.start, cols.stop)).ravel()
            vals = v[lo:hi, cols.start:cols.stop].astype(np.float64).ravel()
            cnt[c, cols.start:cols.stop] = np.bincount(key, minlength=g * nb).reshape(g, nb)
            sv[c, cols.start:cols.stop] = np.bincount(key, weights=vals, minlength=g * nb).reshape(g, nb)
            sh[c, cols.start:cols.stop] = np.bincount(key[hits], minlength=g * nb).reshape(g, nb)
    return cnt, sv, sh


def _np_top_label_hist(p: np.ndarray, y: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, ...]:
    n = p.shape[0]
    nb = edges.shape[1] - 1
    nc = len(_chunks(n))
    cnt = np.zeros((nc, nb), dtype=np.int64)
    sh = np.zeros((nc, nb), dtype=np.int64)
    sv = np.zeros((nc, nb))
    for c, lo in enumerate(_chunks(n)):
        conf, hit = _np_top_label_reduce(p[lo:lo + CHUNK], y[lo:lo + CHUNK])
        b = assign_bins(conf, edges[0])
        cnt[c] = np.bincount(b, minlength=nb)
        sv[c] = np.bincount(b, weights=conf, minlength=nb)
        sh[c] = np.bincount(b[hit], minlength=nb)
    return cnt, sv, sh


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


def resolve_seed(seed: Any) -> int:
    """Validate a seed (int >= 0, or None for fresh entropy) and return it as an int in [0, 2**64)."""
    if seed is None:
        return int(np.random.SeedSequence().entropy) % (1 << 64)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise FailsightInputError(f"seed must be an integer (or None for a fresh random seed), got {seed!r}.")
    if seed < 0:
        raise FailsightInputError(f"seed must be >= 0, got {seed}.")
    return int(seed) % (1 << 64)


def bootstrap_indices(n: int, n_boot: int, seed: int | None = 0, start: int = 0) -> np.ndarray:
    """Resampling indices ``(n_boot, n)`` (int64 in ``[0, n)``) of resamples ``start .. start+n_boot-1``.

    Counter-based (SplitMix64 finaliser of ``(seed, resample, draw)``, mapped to ``[0, n)`` by an exact
    multiply-high, so the bias is below ``n / 2**64``): resample ``r`` is the same whichever chunk of
    resamples it is drawn in and on every backend. Every bootstrap in failsight uses these indices.
    """
    n = check_int(n, "n", minimum=1)
    if n >= 1 << 32:
        raise FailsightInputError(f"bootstrap supports fewer than 2**32 samples, got {n}.")
    s = np.uint64(resolve_seed(seed))
    with np.errstate(over="ignore"):
        r = np.arange(start, start + n_boot, dtype=np.uint64)
        keys = _mix(s + (r + _ONE) * _GAMMA)
        ctr = keys[:, None] + np.arange(1, n + 1, dtype=np.uint64)[None, :] * _GAMMA
        z = _mix(ctr)
        nn = np.uint64(n)
        idx = ((z >> _S32) * nn + (((z & _LO32) * nn) >> _S32)) >> _S32
    return idx.astype(np.int64)


def _np_bootstrap(red: Reduced, seed: int, r0: int, nr: int) -> tuple[np.ndarray, ...]:
    n, m = red.bin_index.shape
    nb = red.n_bins
    cnt = np.zeros((nr, m, nb), dtype=np.int64)
    sh = np.zeros((nr, m, nb), dtype=np.int64)
    sv = np.zeros((nr, m, nb))
    step = max(1, (1 << 21) // n)
    for a in range(0, nr, step):
        rr = min(step, nr - a)
        idx = bootstrap_indices(n, rr, seed, r0 + a)  # (rr, n)
        yb = red.labels[idx]
        for cols in _col_groups(rr * n, m):
            g = len(cols)
            b = red.bin_index[:, cols.start:cols.stop][idx].astype(np.int64)  # (rr, n, g)
            offs = (np.arange(rr)[:, None, None] * g + np.arange(g)[None, None, :]) * nb
            key = (b + offs).ravel()
            vals = red.values[:, cols.start:cols.stop][idx].astype(np.float64).ravel()
            hits = (yb[:, :, None] == np.arange(cols.start, cols.stop)).ravel()
            size = rr * g * nb
            cnt[a:a + rr, cols.start:cols.stop] = np.bincount(key, minlength=size).reshape(rr, g, nb)
            sv[a:a + rr, cols.start:cols.stop] = np.bincount(key, weights=vals, minlength=size).reshape(rr, g, nb)
            sh[a:a + rr, cols.start:cols.stop] = np.bincount(key[hits], minlength=size).reshape(rr, g, nb)
    return cnt, sv, sh


# ----------------------------------------------------------------------------------------------------
# public core
# ----------------------------------------------------------------------------------------------------


def _kernel_atol(p: np.ndarray) -> float:
    """Row-sum tolerance for the kernels, derived so that every row :func:`check_probs` rejects is flagged.

    Both sum a row's ``k`` entries in float64 (float32 entries convert exactly), into a sum of at most
    ``1 + PROB_SUM_ATOL`` for any row near the tolerance: the kernel sequentially (in any order, under
    "reassoc"), error <= (k - 1) u (1 + atol); numpy pairwise, error <= (log2 k + 1) u (1 + atol), with
    u = 2**-53. A row check_probs rejects has a float64 sum off by > atol, so its exact sum is off by more than
    atol - that error, and the kernel's sum by more than atol - both errors: the returned value. That is
    PROB_SUM_ATOL - ~k * 1.1e-16, i.e. 1e-3 to 11 digits for any class count numpy can hold, in float32 as in
    float64. A row the kernel flags that check_probs accepts (a band ~1e-11 wide) is recomputed, never
    zeroed (see :func:`_recheck`)."""
    u = float(np.finfo(np.float64).eps) / 2
    k = p.shape[1]
    return PROB_SUM_ATOL - 1.01 * (k + np.log2(max(k, 2)) + 1) * u * (1 + PROB_SUM_ATOL)


def prepare_probs(y_prob: Any) -> tuple[np.ndarray, bool]:
    """Return ``(p, checked)``: ``p`` is ``(n, k)``; ``checked`` says it went through ``check_probs``.

    With numba, a C-contiguous float32/float64 ``(n, k)`` array is passed on unchecked: the fused kernels
    test the conditions of :func:`failsight._validate.check_probs` in the same pass, and the caller runs
    ``check_probs`` (which raises its usual message) only when they flag a problem.
    """
    arr = to_numpy(y_prob, "y_prob")
    if (USE_NUMBA and arr.ndim == 2 and arr.dtype in (np.float32, np.float64) and arr.shape[0] > 0
            and arr.shape[1] >= 2 and arr.flags.c_contiguous):
        return arr, False
    return np.ascontiguousarray(check_probs(arr)), True


def prepare(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """Labels ``(n,)`` int64 and probabilities ``(n, k)``, validated; see :func:`prepare_probs`."""
    p, checked = prepare_probs(y_prob)
    y = check_labels(y_true, n_classes=p.shape[1])
    check_consistent_length(y, p, names=("y_true", "y_prob"))
    return y, p, checked


def _recheck(y_prob: Any, bad: np.ndarray, checked: bool) -> bool:
    """After a fused kernel: raise ``check_probs``'s message for the rows it flagged, or (a row within float
    rounding of the tolerance, which check_probs accepts) return True: the caller recomputes with numpy,
    since the kernel zeroed the flagged rows' confidences."""
    if not bool(np.any(bad)):
        return False
    if not checked:
        check_probs(y_prob)  # raises the canonical message
    return True


def top_label_reduce(y: np.ndarray, p: np.ndarray, y_prob: Any = None,
                     checked: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Confidence ``max_j p[:, j]`` ``(n,)`` float64 and correctness of the (first) argmax ``(n,)`` bool."""
    if not USE_NUMBA:
        return _np_top_label_reduce(p, y)
    n = p.shape[0]
    nc = len(_chunks(n))
    conf = np.empty(n)
    hit = np.empty(n, dtype=np.bool_)
    bad = np.zeros(nc, dtype=np.bool_)
    _run(_nb_top_label_reduce, nc, p.size, p, y, _kernel_atol(p), CHUNK, conf, hit, bad)
    if _recheck(y_prob, bad, checked):
        return _np_top_label_reduce(p, y)
    return conf, hit


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Right-closed bin index ``(n, m)`` of every value of ``values (n, m)`` (compact unsigned dtype)."""
    dtype = _compact_index_dtype(edges.shape[1] - 1)
    if not USE_NUMBA:
        return _np_bin_index(values, edges, dtype)
    out = np.empty(values.shape, dtype=dtype)
    _run(_nb_bin_index, len(_chunks(values.shape[0])), values.size, np.ascontiguousarray(values),
         np.ascontiguousarray(edges, dtype=np.float64), _is_uniform(edges), CHUNK, out)
    return out


def counts_from_reduced(red: Reduced) -> BinCounts:
    """Per-bin sums of reduced data (all columns)."""
    n, m = red.values.shape
    nb = red.n_bins
    if USE_NUMBA:
        nc = len(_chunks(n))
        cnt = np.zeros((nc, m, nb), dtype=np.int64)
        sh = np.zeros((nc, m, nb), dtype=np.int64)
        sv = np.zeros((nc, m, nb))
        _run(_nb_column_hist, nc, n * m, np.ascontiguousarray(red.values), red.labels,
             np.ascontiguousarray(red.bin_index), CHUNK, cnt, sv, sh)
        parts = (cnt, sv, sh)
    else:
        parts = _np_column_hist(red.values, red.labels, red.bin_index, nb)
    c, v, h = (_reduce_chunks(a) for a in parts)
    return BinCounts(red.edges, c, v, h, int(n))


def top_label_reduced(y: np.ndarray, p: np.ndarray, n_bins: int, strategy: str, y_prob: Any = None,
                      checked: bool = True) -> Reduced:
    """One column: the confidence, a hit (label 0) where the argmax is right."""
    conf, hit = top_label_reduce(y, p, y_prob, checked)
    values = conf[:, None]
    labels = np.where(hit, 0, 1).astype(np.int64)
    edges = make_edges(values, n_bins, strategy)
    return Reduced(values, labels, edges, bin_index(values, edges))


def classwise_reduced(y: np.ndarray, p: np.ndarray, n_bins: int, strategy: str) -> Reduced:
    """One column per class: ``p[:, j]`` binned, a hit where ``y == j``."""
    edges = make_edges(p, n_bins, strategy)
    return Reduced(p, y, edges, bin_index(p, edges))


def class_reduced(y: np.ndarray, p: np.ndarray, class_index: int, n_bins: int, strategy: str) -> Reduced:
    """One column: ``p[:, class_index]`` binned, a hit (label 0) where ``y == class_index``."""
    values = np.ascontiguousarray(p[:, class_index:class_index + 1])
    labels = np.where(y == class_index, 0, 1).astype(np.int64)
    edges = make_edges(values, n_bins, strategy)
    return Reduced(values, labels, edges, bin_index(values, edges))


def top_label_counts(y_true: Any, y_prob: Any, n_bins: int = 15, strategy: str = "uniform") -> BinCounts:
    """Validate and bin top-label confidences (``m = 1``); one fused pass for ``strategy="uniform"``."""
    strategy = check_strategy(strategy)
    y, p, checked = prepare(y_true, y_prob)
    nb = check_n_bins(n_bins, len(y))
    if strategy == "quantile":
        return counts_from_reduced(top_label_reduced(y, p, nb, strategy, y_prob=y_prob, checked=checked))
    edges = uniform_edges(nb)[None, :]
    if USE_NUMBA:
        nc = len(_chunks(len(y)))
        cnt = np.zeros((nc, nb), dtype=np.int64)
        sh = np.zeros((nc, nb), dtype=np.int64)
        sv = np.zeros((nc, nb))
        bad = np.zeros(nc, dtype=np.bool_)
        _run(_nb_top_label_hist, nc, p.size, p, y, edges, True, _kernel_atol(p), CHUNK, cnt, sv, sh, bad)
        if _recheck(y_prob, bad, checked):
            cnt, sv, sh = _np_top_label_hist(p, y, edges)
    else:
        cnt, sv, sh = _np_top_label_hist(p, y, edges)
    return BinCounts(edges, _reduce_chunks(cnt)[None], _reduce_chunks(sv)[None], _reduce_chunks(sh)[None],
                     len(y))


def bootstrap_counts(red: Reduced, seed: int, start: int, n_boot: int) -> tuple[np.ndarray, ...]:
    """Per-bin sums ``(n_boot, m, B)`` (count, sum of values, hits) of resamples ``start..start+n_boot-1``.

    Each resample draws ``n`` samples with replacement (the indices of :func:`bootstrap_indices`) from
    the reduced data; bin edges stay those of the full sample.
    """
    n, m = red.values.shape
    if n >= 1 << 32:
        raise FailsightInputError(f"bootstrap supports fewer than 2**32 samples, got {n}.")
    seed = resolve_seed(seed)
    if not USE_NUMBA:
        return _np_bootstrap(red, seed, start, n_boot)
    nb = red.n_bins
    cnt = np.zeros((n_boot, m, nb), dtype=np.int64)
    sh = np.zeros((n_boot, m, nb), dtype=np.int64)
    sv = np.zeros((n_boot, m, nb))
    s = np.uint64(seed)
    if m == 1:
        key = red.bin_index[:, 0].astype(np.int64) << 1 | (red.labels == 0)
        key = key.astype(np.uint16 if nb < 1 << 15 else np.int64)
        _run(_nb_bootstrap1, n_boot, n * n_boot, key, red.values[:, 0].copy(), s, cnt[:, 0], sv[:, 0],
             sh[:, 0], start)
    else:
        ys = red.labels.astype(np.int16) if m < 1 << 15 else red.labels
        _run(_nb_bootstrap, n_boot, n * m * n_boot, np.ascontiguousarray(red.bin_index),
             np.ascontiguousarray(red.values), ys, s, cnt, sv, sh, start)
    return cnt, sv, sh
