#!/usr/bin/env python3
"""PyTorch side of the `kmeans` part of host-train's CUDA bench: Lloyd's k-means with the
distances as one GEMM per block of points, argmin on the GPU and the means by index_add_,
on the points and initial centroids the Rust side wrote (raw little-endian f32), for the
same number of iterations. Clusters that end empty keep their centroid (the Rust side
splits them, as faiss does; with k-means++-free random init on this data few are empty).

Times from the points in host memory to the last iteration's centroids (host-to-device
copy included, as on the Rust side). Prints one JSON line.
"""
import argparse
import json
import time

import numpy as np
import torch

p = argparse.ArgumentParser()
p.add_argument("--points", required=True)
p.add_argument("--init", required=True)
p.add_argument("--dim", type=int, required=True)
p.add_argument("--iters", type=int, default=20)
p.add_argument("--block", type=int, default=1 << 27, help="distances held at once (values)")
a = p.parse_args()
dev = torch.device("cuda")
x_host = torch.from_numpy(np.fromfile(a.points, dtype="<f4").reshape(-1, a.dim))
c_host = torch.from_numpy(np.fromfile(a.init, dtype="<f4").reshape(-1, a.dim))
n, k = x_host.shape[0], c_host.shape[0]
x_host = x_host.pin_memory()

# Warm up cuBLAS and the kernels on a small slice.
torch.cdist(x_host[:1024].to(dev), c_host[:128].to(dev)).argmin(1)
torch.cuda.synchronize()

t0 = time.perf_counter()
x = x_host.to(dev, non_blocking=True)
c = c_host.to(dev)
xn = (x * x).sum(1)
rows = max(1, a.block // k)
objective = []
for it in range(a.iters):
    cn = (c * c).sum(1)
    labels = torch.empty(n, dtype=torch.long, device=dev)
    dist = torch.empty(n, device=dev)
    for s in range(0, n, rows):
        d = torch.addmm(cn.unsqueeze(0), x[s:s + rows], c.t(), alpha=-2.0)
        m, i = d.min(1)
        labels[s:s + rows] = i
        dist[s:s + rows] = (m + xn[s:s + rows]).clamp_min(0)
    objective.append(dist.sum())
    sums = torch.zeros_like(c).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k).to(x.dtype)
    nonempty = counts > 0
    c = torch.where(nonempty.unsqueeze(1), sums / counts.clamp_min(1).unsqueeze(1), c)
torch.cuda.synchronize()
seconds = time.perf_counter() - t0
print(json.dumps({
    "seconds": seconds,
    "objective_first": float(objective[0]),
    "objective_last": float(objective[-1]),
    "empty_last": int((~nonempty).sum()),
    "n": n, "k": k, "dim": a.dim, "iters": a.iters,
    "torch": torch.__version__,
    "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    "device": torch.cuda.get_device_name(),
}))
