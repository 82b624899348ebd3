#!/usr/bin/env python3
"""Reference values for models/tests/reference.rs, from scikit-learn, scipy and numpy.

Run from the repository root to regenerate reference.json:
    pip install numpy scipy scikit-learn
    python3 models/tests/reference/make_reference.py
Versions used for the committed file are recorded in it.
"""
import json
import os

import numpy as np
import scipy
import sklearn
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

rng = np.random.default_rng(20261122)
out = {"versions": {"numpy": np.__version__, "scipy": scipy.__version__, "sklearn": sklearn.__version__}}


def accuracy(t, p):
    """Best one-to-one map of clusters to classes (scipy's Hungarian solver)."""
    classes, clusters = np.unique(t), np.unique(p)
    c = np.zeros((clusters.size, classes.size), dtype=np.int64)
    for ti, pi in zip(np.searchsorted(classes, t), np.searchsorted(clusters, p)):
        c[pi, ti] += 1
    rows, cols = linear_sum_assignment(-c)
    return c[rows, cols].sum() / t.size


def purity(t, p):
    return sum(np.bincount(t[p == c]).max() for c in np.unique(p)) / t.size


cases = []
for n, kt, kp in [(50, 3, 3), (200, 10, 10), (300, 5, 12), (120, 8, 4), (1000, 10, 100)]:
    t = rng.integers(0, kt, n)
    # Predictions that partly agree with the truth, partly noise.
    p = np.where(rng.random(n) < 0.6, (t * 7 + 3) % kp, rng.integers(0, kp, n))
    cases.append({
        "labels_true": t.tolist(), "labels_pred": p.tolist(),
        "nmi": normalized_mutual_info_score(t, p), "ari": adjusted_rand_score(t, p),
        "accuracy": accuracy(t, p), "purity": purity(t, p),
    })
out["metrics"] = cases

# PCA: sklearn divides variances by n - 1; faiss and models divide by n.
n, d, d_out = 80, 6, 4
x = (rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)).astype(np.float32)
x64 = x.astype(np.float64)
pca = PCA(n_components=d_out, whiten=True, svd_solver="full").fit(x64)
scale = np.sqrt(n / (n - 1))
out["pca"] = {
    "n": n, "d": d, "d_out": d_out, "x": x64.ravel().tolist(),
    "eigenvalues": (pca.explained_variance_ * (n - 1) / n).tolist(),
    "components": pca.components_.ravel().tolist(),
    "whitened": (pca.transform(x64) * scale).ravel().tolist(),
}

# Weighted kNN (Wu et al. 2018): cosine similarity, top k, votes exp(s / tau).
nr, nq, d, k = 400, 60, 5, 20
ref = rng.normal(size=(nr, d)).astype(np.float32)
ref_labels = (ref[:, 0] > 0).astype(int) * 2 + (ref[:, 1] > 0).astype(int)
qry = rng.normal(size=(nq, d)).astype(np.float32)
r64, q64 = ref.astype(np.float64), qry.astype(np.float64)
sims = (q64 / np.linalg.norm(q64, axis=1, keepdims=True)) @ (r64 / np.linalg.norm(r64, axis=1, keepdims=True)).T
knn = {"reference": r64.ravel().tolist(), "reference_labels": ref_labels.tolist(),
       "queries": q64.ravel().tolist(), "d": d, "k": k, "predictions": {}}
for tau in (0.07, 0.1):
    top = np.argsort(-sims, axis=1)[:, :k]
    votes = np.zeros((nq, 4))
    for q in range(nq):
        for j in top[q]:
            votes[q, ref_labels[j]] += np.exp(sims[q, j] / tau)
    knn["predictions"][str(tau)] = votes.argmax(axis=1).tolist()
out["knn"] = knn

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference.json")
with open(path, "w") as f:
    json.dump(out, f)
print("wrote", path)
