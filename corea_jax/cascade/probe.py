"""The Probe baseline: a linear probe on the SLM's last hidden state predicts its correctness.

An L2-regularized logistic regression on standardized features, fitted by Newton's method in
the dual-free primal form (D ~ 900 features, a few hundred calibration items: a D x D solve per
step is cheap). The calibration split has fewer items than features, so the probe's in-sample
predictions are overconfident; thresholds on the calibration split therefore use cross-fitted
predictions (`cross_fit`), each item scored by a probe that never saw it.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Probe:
    """weights [D], bias [], and the feature standardization (mean [D], scale [D])."""

    weights: np.ndarray
    bias: float
    mean: np.ndarray
    scale: np.ndarray

    def predict(self, features) -> np.ndarray:
        """[N, D] hidden states -> [N] probabilities that the SLM is right."""
        z = (np.asarray(features, np.float64) - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(z @ self.weights + self.bias)))


def fit_probe(features, correct, l2: float = 1.0, steps: int = 25) -> Probe:
    """Fits the probe on [N, D] features and [N] bool labels; `l2` penalizes the weights
    (not the bias) on standardized features, scaled by N so it is a per-item penalty."""
    x = np.asarray(features, np.float64)
    y = np.asarray(correct, np.float64)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"features: expected [N, D] with N = {y.shape[0]} labels, found {x.shape}")
    if l2 <= 0:
        raise ValueError(f"probe_l2: expected a number > 0, found {l2}")
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = np.concatenate([(x - mean) / scale, np.ones((x.shape[0], 1))], axis=1)
    n, d = z.shape
    penalty = np.full(d, l2 * n)
    penalty[-1] = 1e-6 * n
    theta = np.zeros(d)
    theta[-1] = np.log((y.mean() + 1e-3) / (1 - y.mean() + 1e-3))
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z @ theta)))
        grad = z.T @ (p - y) + penalty * theta
        hessian = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty)
        step = np.linalg.solve(hessian, grad)
        theta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return Probe(theta[:-1], float(theta[-1]), mean, scale)


def cross_fit(features, correct, l2: float = 1.0, folds: int = 5, seed: int = 0) -> np.ndarray:
    """[N] out-of-fold probabilities: item i is scored by a probe fitted without its fold."""
    x = np.asarray(features, np.float64)
    y = np.asarray(correct, bool)
    n = x.shape[0]
    folds = max(2, min(folds, n))
    assignment = np.random.default_rng(seed).permutation(n) % folds
    out = np.empty(n)
    for k in range(folds):
        held = assignment == k
        out[held] = fit_probe(x[~held], y[~held], l2).predict(x[held])
    return out
