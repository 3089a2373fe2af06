"""The Vendi score: the Gram-matrix computation against a direct n x n eigen-decomposition, known values,
invariances, and the group protocol's pure parts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scalingfilter.stages import vendi
from scalingfilter.stages.diversity import PAPER_GROUP_SIZE, format_results_txt, group_indices, plan_groups, summarize

ORDERS = [0, 0.5, 1, 2, 3, "inf"]


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("kernel", vendi.KERNELS)
@pytest.mark.parametrize("n,d", [(5, 16), (40, 8), (200, 16), (400, 64), (700, 3)])
def test_matches_direct_eigendecomposition(n, d, kernel):
    rng = np.random.default_rng(n * 1000 + d)
    # anisotropic, correlated embeddings with a shared offset, like real sentence embeddings
    X = (rng.standard_normal((n, d)) * np.linspace(0.2, 3.0, d) + 0.7 * rng.standard_normal(d)).astype(np.float32)
    fast, direct = vendi.gram_eigenvalues(X, kernel), vendi.direct_eigenvalues(X, kernel)
    assert math.isclose(fast.sum(), 1.0, rel_tol=1e-12) and math.isclose(direct.sum(), 1.0, rel_tol=1e-12)
    for q in ORDERS:
        a, b = vendi.vendi_score(X, q, kernel), vendi.vendi_score_direct(X, q, kernel)
        assert _rel(a, b) < 1e-8, (n, d, kernel, q, a, b)


def test_matches_the_reference_formula_on_its_kernel():
    """The reference: K = (cos + 1)/2 built from the n x n cosine matrix, scipy eigvalsh of K/n, exp(-sum p log p)."""
    import scipy.linalg

    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 32))
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    K = (U @ U.T + 1) / 2
    w = scipy.linalg.eigvalsh(K / K.shape[0])
    w = w[w > 0]
    expected = math.exp(-(w * np.log(w)).sum())
    assert _rel(vendi.vendi_score(X), expected) < 1e-8


def test_chunked_accumulation_is_the_same(monkeypatch):
    X = np.random.default_rng(2).standard_normal((1000, 24))
    whole = vendi.vendi_score(X)
    monkeypatch.setattr(vendi, "CHUNK_ROWS", 97)
    assert _rel(vendi.vendi_score(X), whole) < 1e-12


@pytest.mark.parametrize("q", ORDERS)
@pytest.mark.parametrize("kernel", vendi.KERNELS)
def test_identical_documents_score_one(q, kernel):
    X = np.tile(np.random.default_rng(3).standard_normal(10), (50, 1))
    assert math.isclose(vendi.vendi_score(X, q, kernel), 1.0, rel_tol=1e-9)


@pytest.mark.parametrize("q", ORDERS)
def test_orthogonal_embeddings_with_cosine_kernel_score_n(q):
    n = 12
    Q, _ = np.linalg.qr(np.random.default_rng(4).standard_normal((32, n)))
    X = Q.T * np.arange(1, n + 1)[:, None]  # orthogonal rows of different lengths: normalisation removes them
    assert math.isclose(vendi.vendi_score(X, q, "cosine"), n, rel_tol=1e-9)


def test_orthogonal_embeddings_with_reference_kernel_closed_form():
    """K = (1 1^T + I)/2: eigenvalues of K/n are (n+1)/(2n) once and 1/(2n) n-1 times."""
    n = 20
    X = np.eye(n, 30)
    a, b = (n + 1) / (2 * n), 1 / (2 * n)
    assert math.isclose(vendi.vendi_score(X, 1), math.exp(-(a * math.log(a) + (n - 1) * b * math.log(b))), rel_tol=1e-10)
    assert math.isclose(vendi.vendi_score(X, 2), 1 / (a * a + (n - 1) * b * b), rel_tol=1e-10)
    assert math.isclose(vendi.vendi_score(X, "inf"), 1 / a, rel_tol=1e-10)
    assert math.isclose(vendi.vendi_score(X, 0), n, rel_tol=1e-12)


def test_k_distinct_clusters_score_k():
    centers = np.eye(5, 8)
    X = np.repeat(centers, 7, axis=0)  # 5 orthogonal directions, 7 copies each
    for q in ORDERS:
        assert math.isclose(vendi.vendi_score(X, q, "cosine"), 5, rel_tol=1e-9)


def test_invariant_to_order_and_row_scale():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((300, 20))
    base = vendi.vendi_score(X)
    assert _rel(vendi.vendi_score(X[rng.permutation(300)]), base) < 1e-10
    assert _rel(vendi.vendi_score(X * rng.uniform(0.1, 10, (300, 1))), base) < 1e-10


def test_bounds_and_order_monotonicity():
    X = np.random.default_rng(6).standard_normal((100, 16))
    scores = [vendi.vendi_score(X, q) for q in (0, 0.5, 1, 2, "inf")]
    assert all(1 <= s <= 100 for s in scores)
    assert all(a >= b - 1e-9 for a, b in zip(scores, scores[1:]))  # Renyi entropy falls with q
    assert _rel(vendi.vendi_score(X, 1 + 1e-7), scores[2]) < 1e-5  # q -> 1 is Shannon


def test_float32_input_and_bad_input():
    X = np.random.default_rng(7).standard_normal((50, 8))
    assert _rel(vendi.vendi_score(X.astype(np.float32)), vendi.vendi_score(X)) < 1e-6
    with pytest.raises(ValueError, match="zero"):
        vendi.vendi_score(np.vstack([X, np.zeros(8)]))
    with pytest.raises(ValueError):
        vendi.vendi_score(np.zeros((0, 8)))
    with pytest.raises(ValueError):
        vendi.parse_order(-1)
    with pytest.raises(ValueError):
        vendi.feature_matrix(X, "rbf")
    assert vendi.parse_order("inf") == math.inf and vendi.parse_order("2") == 2.0


def test_plan_groups():
    p = plan_groups(250_000)
    assert (p.count, p.size, p.note) == (10, 10_000, None)
    p = plan_groups(35_000)
    assert (p.count, p.size) == (3, 10_000) and "3 group(s)" in p.note and "not comparable" not in p.note
    p = plan_groups(600)
    assert (p.count, p.size) == (1, 600) and "not comparable" in p.note and f"{PAPER_GROUP_SIZE:,}" in p.note
    p = plan_groups(600, groups=4, group_size=100)
    assert (p.count, p.size) == (4, 100) and "not comparable" in p.note
    p = plan_groups(250_000, full=True)
    assert (p.count, p.size) == (1, 250_000) and "--full" in p.note
    with pytest.raises(ValueError):
        plan_groups(0)


def test_groups_are_disjoint_and_seeded():
    p = plan_groups(1000, groups=3, group_size=300)
    g = group_indices(1000, p, seed=0)
    assert len(np.unique(np.concatenate(g))) == 900
    assert all(np.array_equal(a, b) for a, b in zip(g, group_indices(1000, p, seed=0)))
    assert not np.array_equal(g[0], group_indices(1000, p, seed=1)[0])


def test_results_txt_is_the_reference_format():
    scores = [52.5, 52.7, 52.3]
    lines = format_results_txt(scores).splitlines()
    assert [float(x) for x in lines[:3]] == scores
    mean, std = summarize(scores)
    assert lines[3] == f"Mean Semantic Diversity: {mean}" and lines[4] == f"Std Semantic Diversity: {std}"
    assert math.isclose(std, float(np.std(scores)))  # ddof = 0 like the reference
