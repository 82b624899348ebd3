"""SimCLR (Chen et al. 2020) in PyTorch on a labeled image folder: the reference that
host-train's RGB results are compared with, on the same data, image size and CPU budget.

The encoder is host-train's small-cnn (three conv-BN-ReLU blocks of 32, 64, 128 channels, two
2x2 max pools, global average pooling) with SimCLR's two-layer projection head; the views are
torchvision's SimCLR pipeline (random resized crop 0.08-1, flip, colour jitter 0.8s/0.2s with
p 0.8, grayscale p 0.2). NT-Xent loss, temperature 0.5, Adam 1e-3 (SimCLR's small-scale
setting). After training: weighted kNN (k 200, tau 0.07) of the validation split against the
training split, and k-means (k = classes, 10 restarts) NMI, ARI and accuracy on the training
embeddings, as `host-train eval` scores them. Prints one JSON line.
"""

import argparse, glob, json, math, os, random, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2 as T


def load_folder(root, size):
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    xs, ys = [], []
    for c, name in enumerate(classes):
        for f in sorted(glob.glob(os.path.join(root, name, "**", "*"), recursive=True)):
            if f.lower().endswith((".jpg", ".jpeg", ".png")):
                img = Image.open(f).convert("RGB")
                s = size / min(img.size)
                img = img.resize((max(size, round(img.width * s)), max(size, round(img.height * s))), Image.BILINEAR)
                left, top = (img.width - size) // 2, (img.height - size) // 2
                img = img.crop((left, top, left + size, top + size))
                xs.append(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
                ys.append(c)
    return torch.from_numpy(np.stack(xs)), np.array(ys), classes


def split(labels, fraction, seed):
    rng = np.random.default_rng(seed)
    val = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        take = min(max(1, round(len(idx) * fraction)), len(idx) - 1)
        val[rng.choice(idx, take, replace=False)] = True
    return np.flatnonzero(~val), np.flatnonzero(val)


class SmallCnn(nn.Module):
    def __init__(self, widths=(32, 64, 128), dim=128):
        super().__init__()
        layers, c = [], 3
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.backbone = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, dim))

    def forward(self, x):
        return self.proj(self.backbone(x))


def nt_xent(z, t):
    z = F.normalize(z, dim=1)
    n = z.shape[0] // 2
    sim = z @ z.t() / t
    sim.fill_diagonal_(-1e9)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def kmeans(x, k, restarts, seed, iters=50):
    g = torch.Generator().manual_seed(seed)
    best = (math.inf, None)
    for _ in range(restarts):
        c = x[torch.randperm(len(x), generator=g)[:k]].clone()
        for _ in range(iters):
            lab = torch.cdist(x, c).argmin(1)
            for j in range(k):
                m = lab == j
                if m.any():
                    c[j] = x[m].mean(0)
        obj = (torch.cdist(x, c).min(1).values ** 2).sum().item()
        if obj < best[0]:
            best = (obj, lab.numpy())
    return best[1]


def nmi_ari_acc(a, b):
    from itertools import permutations
    ka, kb = a.max() + 1, b.max() + 1
    m = np.zeros((ka, kb))
    np.add.at(m, (a, b), 1)
    n = m.sum()
    pa, pb, pab = m.sum(1) / n, m.sum(0) / n, m / n
    nz = pab > 0
    mi = (pab[nz] * np.log(pab[nz] / np.outer(pa, pb)[nz])).sum()
    h = lambda p: -(p[p > 0] * np.log(p[p > 0])).sum()
    nmi = mi / max((h(pa) + h(pb)) / 2, 1e-12)
    c2 = lambda v: v * (v - 1) / 2
    s, sa, sb = c2(m).sum(), c2(m.sum(1)).sum(), c2(m.sum(0)).sum()
    exp = sa * sb / c2(n)
    ari = (s - exp) / max((sa + sb) / 2 - exp, 1e-12)
    # Best one-to-one matching (small k: exhaustive over the columns).
    k = max(ka, kb)
    mm = np.zeros((k, k))
    mm[:ka, :kb] = m
    acc = max(sum(mm[i, p[i]] for i in range(k)) for p in permutations(range(k))) / n if k <= 8 else float("nan")
    return nmi, ari, acc


def knn_top1(train, ytr, test, yte, k=200, t=0.07):
    sim = test @ train.t()
    s, i = sim.topk(min(k, len(train)), dim=1)
    votes = torch.zeros(len(test), int(ytr.max()) + 1)
    votes.scatter_add_(1, torch.from_numpy(ytr)[i], (s / t).exp())
    return (votes.argmax(1).numpy() == yte).mean()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--minutes", type=float, default=None, help="stop after this wall time")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(args.threads)
    x, y, classes = load_folder(args.data, args.size)
    tr, va = split(y, args.val_fraction, args.seed)
    views = T.Compose([
        T.RandomResizedCrop(args.size, scale=(0.08, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.ToDtype(torch.float32, scale=True),
    ])
    xf = x.float() / 255
    mean, std = xf[tr].mean((0, 2, 3), keepdim=True), xf[tr].std((0, 2, 3), keepdim=True)
    norm = lambda b: (b - mean) / std
    model = SmallCnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-6)
    t0, epochs = time.time(), 0
    for epoch in range(args.epochs):
        if args.minutes is not None and time.time() - t0 > 60 * args.minutes:
            break
        model.train()
        perm = tr[np.random.default_rng(args.seed + epoch).permutation(len(tr))]
        for b in range(0, len(perm) - 1, args.batch_size):
            idx = perm[b:b + args.batch_size]
            if len(idx) < 2:
                continue
            v1 = torch.stack([views(img) for img in x[idx]])
            v2 = torch.stack([views(img) for img in x[idx]])
            loss = nt_xent(model(norm(torch.cat([v1, v2]))), 0.5)
            opt.zero_grad()
            loss.backward()
            opt.step()
        epochs = epoch + 1
    train_s = time.time() - t0
    model.eval()
    with torch.no_grad():
        emb = F.normalize(model(norm(xf)), dim=1)
    lab = kmeans(emb[tr], len(classes), 10, args.seed)
    nmi, ari, acc = nmi_ari_acc(y[tr], lab)
    knn = knn_top1(emb[tr], y[tr], emb[va], y[va])
    print(json.dumps({
        "reference": "pytorch-simclr", "torch": torch.__version__, "data": args.data,
        "images": len(x), "train": len(tr), "val": len(va), "size": args.size,
        "epochs": epochs, "train_seconds": round(train_s, 1), "threads": args.threads,
        "seed": args.seed, "knn_top1": round(float(knn), 4), "nmi": round(float(nmi), 4),
        "ari": round(float(ari), 4), "accuracy": round(float(acc), 4),
    }))


if __name__ == "__main__":
    main()
