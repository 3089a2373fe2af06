"""The Vendi score of a set of embeddings, computed exactly without the n x n similarity matrix.

Notation: X is n x d (one embedding a row), x_i its rows scaled to unit length, K the n x n kernel
(similarity) matrix with K_ii = 1, and lambda_1..lambda_n the eigenvalues of K / n; they are >= 0
and sum to trace(K)/n = 1, so they form a probability vector. The Vendi score of order q is
exp(H_q(lambda)), H_q the Renyi entropy of order q (Friedman & Dieng 2023). ScalingFilter's semantic
diversity is the q = 1 score with the kernel K_ij = (1 + cos(x_i, x_j)) / 2.

Both kernels here are of the form K = Z Z^T with Z an n x m feature matrix (m = d + 1 or d). The non-zero
eigenvalues of Z Z^T / n are those of the m x m matrix Z^T Z / n, so the score needs an O(n m^2)
product and an m x m eigen-problem (all in float64) instead of an O(n^3) decomposition of an n x n
matrix that would take O(n^2) memory. The result is the same up to rounding, not an approximation.
"""

from __future__ import annotations

import math

import numpy as np

KERNELS = ("reference", "cosine")
"""reference: K_ij = (1 + cos_ij) / 2, as ScalingFilter's code; cosine: K_ij = cos_ij."""

# Rows of the feature matrix multiplied at a time in float64 (bounds the temporary copy: 8 * rows * m bytes).
CHUNK_ROWS = 65_536


def parse_order(q: float | int | str) -> float:
    """The order q as a float: a number >= 0, or 'inf' (math.inf)."""
    if isinstance(q, str):
        q = q.strip().lower()
        value = math.inf if q in ("inf", "infinity") else float(q)
    else:
        value = float(q)
    if not value >= 0:  # also catches NaN
        raise ValueError(f"order q must be >= 0 or 'inf', got {q!r}")
    return value


def normalize_rows(X: np.ndarray) -> np.ndarray:
    """x_i / ||x_i||_2 for every row, in float64. A zero row has no direction: ValueError."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (n x d), got shape {X.shape}")
    norms = np.linalg.norm(X, axis=1)
    bad = np.flatnonzero(~(norms > 0) | ~np.isfinite(norms))
    if bad.size:
        raise ValueError(f"{bad.size} embedding row(s) are zero or not finite (first: row {bad[0]}); cosine is undefined")
    return X / norms[:, None]


def feature_matrix(X: np.ndarray, kernel: str = "reference") -> np.ndarray:
    """Z with K = Z Z^T, from raw embeddings X (normalised here).

    reference: Z = [1/sqrt(2) * 1, x_i / sqrt(2)] (n x (d+1)), so Z Z^T = (1 1^T + X X^T) / 2 = (1 + cos) / 2.
    cosine:    Z = x_i (n x d), so Z Z^T = cos.
    """
    U = normalize_rows(X)
    if kernel == "cosine":
        return U
    if kernel == "reference":
        return np.hstack([np.ones((U.shape[0], 1)), U]) * (1.0 / math.sqrt(2.0))
    raise ValueError(f"unknown kernel {kernel!r} (expected one of {', '.join(KERNELS)})")


def kernel_matrix(X: np.ndarray, kernel: str = "reference") -> np.ndarray:
    """The full n x n kernel K = Z Z^T (float64): reference (1 + cos)/2 or plain cos. For checks and baselines only."""
    Z = feature_matrix(X, kernel)
    return Z @ Z.T


def gram_eigenvalues(X: np.ndarray, kernel: str = "reference") -> np.ndarray:
    """Eigenvalues of K / n via the m x m Gram matrix: eig(Z Z^T / n) \\ {0} = eig(Z^T Z / n).

    With U the unit rows (n x d) and s = U^T 1 their sum:
      cosine:    Z^T Z = U^T U
      reference: Z^T Z = 1/2 [[n, s^T], [s, U^T U]]   (Z = [1, U] / sqrt(2))
    U^T U and s are accumulated in float64 over chunks of CHUNK_ROWS rows, so memory is O(d^2) plus one
    chunk whatever n is. Rounding can make zero eigenvalues slightly negative: they are clipped to 0.
    Returns the m eigenvalues, ascending (m - rank of them are 0); they sum to 1.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r} (expected one of {', '.join(KERNELS)})")
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"need a non-empty n x d embedding matrix, got shape {X.shape}")
    n, d = X.shape
    UtU = np.zeros((d, d), dtype=np.float64)
    s = np.zeros(d, dtype=np.float64)
    for lo in range(0, n, CHUNK_ROWS):
        U = normalize_rows(X[lo : lo + CHUNK_ROWS])
        UtU += U.T @ U
        s += U.sum(axis=0)
    if kernel == "cosine":
        G = UtU
    else:
        G = np.empty((d + 1, d + 1), dtype=np.float64)
        G[0, 0] = n
        G[0, 1:] = G[1:, 0] = s
        G[1:, 1:] = UtU
        G *= 0.5
    w = np.linalg.eigvalsh(G / n)
    return np.clip(w, 0.0, None)


def direct_eigenvalues(X: np.ndarray, kernel: str = "reference") -> np.ndarray:
    """Eigenvalues of K / n from the n x n matrix (numpy.linalg.eigvalsh, float64), clipped at 0: the baseline."""
    K = kernel_matrix(X, kernel)
    return np.clip(np.linalg.eigvalsh(K / K.shape[0]), 0.0, None)


def entropy(p: np.ndarray, q: float | int | str = 1, rtol: float = 1e-10) -> float:
    """Renyi entropy of order q of a probability vector p (natural log); zero entries do not count.

    q = 0:   H = log #{i : p_i > 0}                 (log of the rank)
    q = 1:   H = -sum_i p_i log p_i                  (Shannon; the limit q -> 1)
    q = inf: H = -log max_i p_i
    else:    H = log(sum_i p_i^q) / (1 - q)
    "p_i > 0" means p_i > rtol * max(p): eigenvalues that should be 0 come out of floating point as tiny
    numbers (about 1e-16 relative), which would otherwise each count 1 for q = 0. p is renormalised to sum 1.
    """
    q = parse_order(q)
    p = np.asarray(p, dtype=np.float64)
    total = p.sum()
    if not total > 0:
        raise ValueError("entropy of an all-zero vector")
    p = p / total
    top = p.max()
    p = p[p > rtol * top]
    if q == 0:
        return float(math.log(p.size))
    if q == 1:
        return float(-(p * np.log(p)).sum())
    if math.isinf(q):
        return float(-math.log(top))
    return float(math.log((p**q).sum()) / (1.0 - q))


def vendi_from_eigenvalues(eigenvalues: np.ndarray, q: float | int | str = 1, rtol: float = 1e-10) -> float:
    """Vendi score VS_q = exp(H_q(lambda)), lambda the eigenvalues of K / n. Ranges from 1 (all items alike) to n."""
    return float(math.exp(entropy(eigenvalues, q, rtol)))


def vendi_score(X: np.ndarray, q: float | int | str = 1, kernel: str = "reference", rtol: float = 1e-10) -> float:
    """Vendi score of order q of the rows of X: exp(H_q(eig(K / n))), K = (1 + cos)/2 ('reference') or cos ('cosine').

    Exact, via the (d+1) x (d+1) (or d x d) Gram matrix in float64: O(n d^2) time, O(d^2) memory.
    """
    return vendi_from_eigenvalues(gram_eigenvalues(X, kernel), q, rtol)


def vendi_score_direct(X: np.ndarray, q: float | int | str = 1, kernel: str = "reference", rtol: float = 1e-10) -> float:
    """The same score from the n x n eigen-decomposition: O(n^3) time, O(n^2) memory. Baseline for tests and benchmarks."""
    return vendi_from_eigenvalues(direct_eigenvalues(X, kernel), q, rtol)
