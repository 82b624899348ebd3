#!/usr/bin/env python3
"""PyTorch side of the `train` part of host-train's CUDA bench (host-train/benches/cuda.rs):
the same CIFAR-style ResNet-18 (3x3 stem, no max-pool, 1 input channel, 128-d projection),
the same DeepCluster step (100-way head, cross-entropy, SGD lr 0.05 momentum 0.9 weight
decay 1e-5) at the same batch, on the GPU, with PyTorch's default precision settings.

  step:    images/s of forward + backward + SGD on one device-resident batch (best window)
  extract: images/s of eval-mode embedding of --images images, batch 512

Prints one JSON line.
"""
import argparse
import json
import time

import torch
from torch import nn

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=256)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--warmup", type=int, default=5)
p.add_argument("--windows", type=int, default=3)
p.add_argument("--images", type=int, default=60000)
a = p.parse_args()
torch.manual_seed(0)
dev = torch.device("cuda")


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, c_in=1, embed=128):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(c_in, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        blocks, c = [], 64
        for stage, w in enumerate([64, 128, 256, 512]):
            for i in range(2):
                blocks.append(Block(c, w, 2 if stage > 0 and i == 0 else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.proj = nn.Linear(512, embed)

    def forward(self, x):
        return self.proj(self.blocks(self.stem(x)).mean((2, 3)))


net = ResNet18().to(dev)
head = nn.Linear(128, 100).to(dev)
params = list(net.parameters()) + list(head.parameters())
opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-5)
loss_fn = nn.CrossEntropyLoss()
x = torch.randn(a.batch, 1, 32, 32, device=dev)
y = torch.randint(0, 100, (a.batch,), device=dev)


def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(head(net(x)), y)
    loss.backward()
    opt.step()
    return loss


net.train()
for _ in range(a.warmup):
    step()
torch.cuda.synchronize()
best = 0.0
for _ in range(a.windows):
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    loss.item()  # waits for the window's work, as the Rust side's read-back does
    best = max(best, a.batch * a.steps / (time.perf_counter() - t0))

net.eval()
xe = torch.randn(512, 1, 32, 32, device=dev)
with torch.no_grad():
    net(xe)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    done = 0
    while done < a.images:
        net(xe).cpu()
        done += 512
    extract = done / (time.perf_counter() - t0)

print(json.dumps({
    "step_img_per_s": best,
    "extract_img_per_s": extract,
    "torch": torch.__version__,
    "cudnn": torch.backends.cudnn.version(),
    "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    "device": torch.cuda.get_device_name(),
}))
