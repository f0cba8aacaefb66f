"""Pass@k statistics: numpy only, no torch.

- `pass_at_k(n, c, k)`: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k),
  computed as a product of ratios in log space (no factorial overflow up to n in the millions).
- `pass_at_k_curve`: the set-level curve for k = 1, 2, 4, ..., n and any k asked for.
- `bootstrap_ci`: percentile bootstrap over *problems* with its own seeded generator.
- `fit_beta_binomial` / `extrapolate_pass_at_k`: pass@K for K beyond the samples drawn, from a
  zero-inflated beta-binomial fitted by maximum likelihood to per-problem counts (empirical Bayes),
  with a bootstrap-over-problems interval that refits the distribution on each resample.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special


def _as_int_array(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must hold whole numbers.")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}.")
    return arr.astype(np.int64)


def _per_problem(n, c) -> tuple[np.ndarray, np.ndarray]:
    """Per-problem counts as flat int arrays; `n` may be one number for all problems."""
    c = _as_int_array(c, "c").reshape(-1)
    n = np.broadcast_to(_as_int_array(n, "n"), c.shape)
    if c.size == 0:
        raise ValueError("No problems: counts are empty.")
    return n, c


def pass_at_k(n, c, k) -> np.ndarray | float:
    """Unbiased pass@k of problems with `n` samples of which `c` are correct.

    Vectorised: `n`, `c` and `k` broadcast against each other (e.g. per-problem `n`, `c` of shape
    (P,) and `k` of shape (K, 1) give a (K, P) array). Returns a float for scalar inputs.
    Raises ValueError for n < 1, c < 0, c > n, k < 1 or k > n.
    """
    n, c, k = _as_int_array(n, "n"), _as_int_array(c, "c"), _as_int_array(k, "k")
    n, c, k = np.broadcast_arrays(n, c, k)
    if np.any(n < 1):
        raise ValueError("n (samples per problem) must be >= 1.")
    if np.any(c < 0) or np.any(c > n):
        raise ValueError("c (correct samples) must satisfy 0 <= c <= n.")
    if np.any(k < 1):
        raise ValueError("k must be >= 1.")
    if np.any(k > n):
        raise ValueError(
            f"k={int(k.max())} exceeds the samples drawn (n={int(n.min())}); sample more or use extrapolation."
        )
    # C(n-c, k) / C(n, k) = prod_{i=0}^{k-1} (n-c-i)/(n-i); zero when n - c < k.
    # log form: lgamma(n-c+1) - lgamma(n-c-k+1) - lgamma(n+1) + lgamma(n-k+1)
    fail = n - c
    out = np.ones(n.shape, dtype=np.float64)
    possible = fail >= k
    if np.any(possible):
        f, nn, kk = fail[possible], n[possible], k[possible]
        log_ratio = (
            special.gammaln(f + 1)
            - special.gammaln(f - kk + 1)
            - special.gammaln(nn + 1)
            + special.gammaln(nn - kk + 1)
        )
        out[possible] = -np.expm1(log_ratio)
    out = np.where(c == 0, 0.0, np.clip(out, 0.0, 1.0))
    return float(out) if out.ndim == 0 else out


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, with n itself included."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    ks.append(n)
    return ks


def pass_at_k_curve(n, c, ks: Sequence[int] | None = None) -> dict[int, float]:
    """Mean pass@k over problems for each k (k <= min n). `n` may be a scalar or per-problem."""
    n, c = _per_problem(n, c)
    ks = default_ks(int(n.min())) if ks is None else sorted(set(int(k) for k in ks))
    values = pass_at_k(n[None, :], c[None, :], np.asarray(ks)[:, None])
    return {k: float(v) for k, v in zip(ks, np.mean(values, axis=1))}


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    method: str


def bootstrap_ci(n, c, k: int, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
    """Percentile bootstrap CI of the set-level pass@k, resampling problems with replacement.

    Each problem's unbiased pass@k is computed once; resampling problems captures the uncertainty
    from which problems were drawn (not the per-problem sampling noise, which the unbiased
    estimator already averages). Uses its own `numpy.random.Generator(seed)`.
    """
    n, c = _per_problem(n, c)
    return bootstrap_mean_ci(np.atleast_1d(pass_at_k(n, c, k)), level, resamples, seed)


def bootstrap_mean_ci(per_problem, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
    """Percentile bootstrap CI of the mean of one value per problem (pass@k, a mean score), resampling problems
    with replacement; uses its own `numpy.random.Generator(seed)`."""
    per_problem = np.asarray(per_problem, dtype=float)
    if per_problem.ndim != 1 or per_problem.size == 0:
        raise ValueError("bootstrap_mean_ci needs one value per problem, at least one problem.")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_problem), size=(resamples, len(per_problem)))
    means = per_problem[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return Interval(
        float(per_problem.mean()),
        float(np.quantile(means, alpha)),
        float(np.quantile(means, 1 - alpha)),
        f"percentile bootstrap over {len(per_problem)} problems, {resamples} resamples, seed {seed}, level {level}",
    )


# ---- large-k extrapolation ------------------------------------------------------------------
@dataclass(frozen=True)
class BetaBinomial:
    """Per-problem success probability p: 0 with probability `zero`, else Beta(alpha, beta).

    The point mass at zero matters for large-k extrapolation: problems the model cannot solve at
    all are common, and a plain beta spreads them over small positive p, which inflates pass@K.
    """

    alpha: float
    beta: float
    zero: float = 0.0

    def pass_at_k(self, k: int) -> float:
        """E[1 - (1-p)^k] under the fitted distribution."""
        solvable = -np.expm1(special.betaln(self.alpha, self.beta + k) - special.betaln(self.alpha, self.beta))
        return float((1 - self.zero) * solvable)


_LOG_BOUND = 12.0  # bound on |log alpha|, |log beta|, |logit zero| of a fit


def fit_beta_binomial(n, c, zero_inflated: bool = True) -> BetaBinomial:
    """Maximum-likelihood (zero-inflated) beta-binomial for per-problem counts.

    Problems may have different n (as after dynamic allocation: the likelihood does not depend on
    an adaptive stopping rule). Optimised over log alpha, log beta and logit(zero).
    """
    n, c = (a.astype(float) for a in _per_problem(n, c))
    unsolved = c == 0

    def nll_and_gradient(theta):
        a, b = np.exp(theta[:2])
        log_beta = special.betaln(c + a, n - c + b) - special.betaln(a, b)
        shared = special.digamma(a + b) - special.digamma(n + a + b)
        d_log_beta = np.stack(
            [
                a * (special.digamma(c + a) - special.digamma(a) + shared),
                b * (special.digamma(n - c + b) - special.digamma(b) + shared),
            ]
        )
        if not zero_inflated:
            return -np.sum(log_beta), -d_log_beta.sum(axis=1)
        z = special.expit(theta[2])
        # An unsolved problem: z + (1 - z) B(c+a, n-c+b) / B(a, b); a solved one: (1 - z) B(...) / B(a, b).
        ll_unsolved = np.logaddexp(np.log(z), np.log1p(-z) + log_beta)
        ll = np.where(unsolved, ll_unsolved, np.log1p(-z) + log_beta)
        weight = np.where(unsolved, np.exp(np.log1p(-z) + log_beta - ll_unsolved), 1.0)  # d ll / d log_beta
        d_z = np.where(unsolved, -np.expm1(log_beta) / np.exp(ll_unsolved), -1.0 / (1 - z)) * z * (1 - z)
        gradient = np.append((d_log_beta * weight).sum(axis=1), d_z.sum())
        return -np.sum(ll), -gradient

    # Six starts: the mean success rate of all problems or of the solved ones, times three zero masses.
    # From one start the fit can end at zero = 0 with a small alpha (another way to explain unsolved
    # problems), below the best optimum. Bounded at e^+-12: beyond, betaln's difference loses precision.
    means = [(c.sum() + 0.5) / (n.sum() + 1.0), (c[~unsolved].sum() + 0.5) / (n[~unsolved].sum() + 1.0)]
    unsolved_share = np.clip(unsolved.mean(), 0.05, 0.95)
    zeros = [[special.logit(unsolved_share * f)] for f in (0.3, 0.6, 0.9)] if zero_inflated else [[]]
    starts = [[np.log(m), np.log1p(-m)] + z for m in means for z in zeros]
    bounds = [(-_LOG_BOUND, _LOG_BOUND)] * len(starts[0])
    fits = [optimize.minimize(nll_and_gradient, start, jac=True, method="L-BFGS-B", bounds=bounds) for start in starts]
    res = min(fits, key=lambda r: r.fun)
    a, b = np.exp(res.x[:2])
    zero = float(special.expit(res.x[2])) if zero_inflated else 0.0
    return BetaBinomial(float(a), float(b), zero)


def posterior_pass_at_k(n, c, k: int, prior: BetaBinomial) -> np.ndarray:
    """Per-problem E[1 - (1-p)^k | c of n correct] under the empirical-Bayes prior."""
    n, c = (a.astype(float) for a in _per_problem(n, c))
    a, b = prior.alpha + c, prior.beta + n - c
    solvable = -np.expm1(special.betaln(a, b + k) - special.betaln(a, b))
    if prior.zero <= 0:
        return solvable
    # An unsolved problem may be one of the never-solvable ones: weigh by the posterior odds.
    log_beta_part = (
        np.log1p(-prior.zero) + special.betaln(prior.alpha, prior.beta + n) - special.betaln(prior.alpha, prior.beta)
    )
    weight = np.where(c == 0, special.expit(log_beta_part - np.log(prior.zero)), 1.0)
    return weight * solvable


@functools.lru_cache(maxsize=4)
def _bootstrap_priors(n: tuple, c: tuple, resamples: int, seed: int) -> tuple[BetaBinomial, list]:
    """The prior fitted to all problems and, per bootstrap resample, (problem indices, refitted prior).

    Cached: the fits do not depend on k, and a measurement extrapolates several k from the same counts."""
    n_, c_ = np.asarray(n), np.asarray(c)
    rng = np.random.default_rng(seed)
    refits = []
    for _ in range(resamples):
        idx = rng.integers(0, len(c_), size=len(c_))
        refits.append((idx, fit_beta_binomial(n_[idx], c_[idx])))
    return fit_beta_binomial(n_, c_), refits


def extrapolate_pass_at_k(n, c, k: int, resamples: int = 200, level: float = 0.95, seed: int = 0) -> Interval:
    """pass@k for any k, including k > n, from a zero-inflated beta-binomial fit (empirical Bayes).

    Each problem contributes its posterior E[1-(1-p)^k] given its own counts and the fitted prior;
    where n >= k for every problem the unbiased estimate is returned instead. The interval refits
    the prior on each bootstrap resample of problems (percentile method).
    """
    n, c = _per_problem(n, c)
    if np.all(n >= k):
        ci = bootstrap_ci(n, c, k, level=level, resamples=max(resamples, 1000), seed=seed)
        return Interval(ci.estimate, ci.low, ci.high, "unbiased estimator; " + ci.method)
    prior, refits = _bootstrap_priors(tuple(n.tolist()), tuple(c.tolist()), resamples, seed)
    estimate = float(posterior_pass_at_k(n, c, k, prior).mean())
    values = [posterior_pass_at_k(n[idx], c[idx], k, refit).mean() for idx, refit in refits]
    alpha = (1 - level) / 2
    return Interval(
        estimate,
        float(np.quantile(values, alpha)),
        float(np.quantile(values, 1 - alpha)),
        f"zero-inflated beta-binomial empirical Bayes (MLE prior a={prior.alpha:.3g}, b={prior.beta:.3g}, "
        f"zero={prior.zero:.3g}); percentile bootstrap "
        f"over {len(c)} problems refitting the prior, {resamples} resamples, seed {seed}, level {level}",
    )
