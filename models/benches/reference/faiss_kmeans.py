#!/usr/bin/env python3
"""faiss-cpu side of `cargo bench -p models --bench kmeans`.

The bench writes the data, each case's training rows and starting centroids to a work
directory and a jobs.json describing them; this script runs faiss on exactly those inputs
with the same thread count and writes results.json (seconds, objective per iteration) and
each case's final centroids, which the bench scores with the same code as its own.

Needs: pip install faiss-cpu numpy
"""
import json
import os
import sys
import time

import numpy as np


def main(workdir):
    with open(os.path.join(workdir, "jobs.json")) as f:
        jobs = json.load(f)
    import faiss

    faiss.omp_set_num_threads(jobs["threads"])
    out = {"faiss_version": faiss.__version__, "threads": jobs["threads"], "cases": [], "pca": []}

    for p in jobs["pca"]:
        x = np.fromfile(os.path.join(workdir, p["data_file"]), dtype=np.float32).reshape(-1, p["d_in"])
        best = float("inf")
        for _ in range(p["repeats"]):
            pca = faiss.PCAMatrix(p["d_in"], p["d_out"], -0.5)
            t0 = time.perf_counter()
            pca.train(x)
            best = min(best, time.perf_counter() - t0)
        out["pca"].append({"name": p["name"], "faiss_s": best})

    data_cache = {}
    for c in jobs["cases"]:
        key = c["data_file"]
        if key not in data_cache:
            data_cache[key] = np.fromfile(os.path.join(workdir, key), dtype=np.float32).reshape(-1, c["d"])
        data = data_cache[key]
        idx = np.fromfile(os.path.join(workdir, c["sample_file"]), dtype=np.uint32)
        train = np.ascontiguousarray(data[idx])
        init = np.fromfile(os.path.join(workdir, c["init_file"]), dtype=np.float32).reshape(c["k"], c["d"])
        best, obj, cents = float("inf"), None, None
        for _ in range(c["repeats"]):
            # The bench already sub-sampled: faiss must train on exactly these rows.
            km = faiss.Kmeans(c["d"], c["k"], niter=c["iters"], max_points_per_centroid=1 << 30,
                              seed=1234, verbose=False)
            t0 = time.perf_counter()
            km.train(train, init_centroids=init.copy())
            dt = time.perf_counter() - t0
            if dt < best:
                best, obj, cents = dt, [float(v) for v in km.obj], km.centroids
        cents.astype(np.float32).tofile(os.path.join(workdir, c["name"] + ".faiss_centroids"))
        out["cases"].append({"name": c["name"], "faiss_s": best, "objective_per_iter": obj})

    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1])
