#!/usr/bin/env python3
"""PyTorch side of `cargo bench -p host-train --bench train`: the same small-cnn, the same
DeepCluster training step (100-way head, cross-entropy, SGD lr 0.05 momentum 0.9 weight decay
1e-5), the same batch and thread count. Prints one JSON line: {"img_per_s": ...}.

Needs: pip install torch numpy
"""
import argparse
import json
import time

import torch
from torch import nn

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--batch", type=int, default=256)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--windows", type=int, default=3, help="report the best of this many timed windows")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)


def block(c_in, c_out, pool):
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
    return layers + ([nn.MaxPool2d(2)] if pool else [])


net = nn.Sequential(
    *block(1, 32, True), *block(32, 64, True), *block(64, 128, False),
    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 128),  # small-cnn, 128-d embedding
    nn.Linear(128, 100),  # DeepCluster's classifier over k = 100 pseudo-labels
)
opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-5)
x = torch.randn(a.batch, 1, 28, 28)
y = torch.randint(0, 100, (a.batch,))
loss_fn = nn.CrossEntropyLoss()
net.train()


def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()


for _ in range(a.warmup):
    step()
best = 0.0
for _ in range(a.windows):
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    best = max(best, a.batch * a.steps / (time.perf_counter() - t0))
print(json.dumps({"img_per_s": best, "torch": torch.__version__}))
