"""A supervised ceiling for a labeled image folder: host-train's small-cnn trained with the
labels (cross-entropy, random flips, Adam 1e-3) for a fixed wall time, scored as
`host-train eval` scores learned features: validation accuracy of the trained classifier,
weighted kNN of the validation split against the training split, and k-means (k = classes)
NMI on the training features. It says how much of a set's classes this network can pick up
at this size and budget when it is *told* them; an unsupervised method is not expected to do
better. Prints one JSON line.
"""

import argparse, json, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from simclr import SmallCnn, kmeans, knn_top1, load_folder, nmi_ari_acc, split


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--minutes", type=float, default=5.5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    x, y, classes = load_folder(args.data, args.size)
    tr, va = split(y, args.val_fraction, args.seed)
    xf = x.float() / 255
    mean, std = xf[tr].mean((0, 2, 3), keepdim=True), xf[tr].std((0, 2, 3), keepdim=True)
    xn = (xf - mean) / std
    model, head = SmallCnn(), nn.Linear(128, len(classes))
    opt = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=1e-3)
    labels = torch.from_numpy(y)
    rng = np.random.default_rng(args.seed)
    t0, epochs = time.time(), 0
    while time.time() - t0 < 60 * args.minutes:
        model.train()
        perm = tr[rng.permutation(len(tr))]
        for b in range(0, len(perm), args.batch_size):
            idx = perm[b:b + args.batch_size]
            xb = xn[idx]
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = F.cross_entropy(head(model.backbone(xb)), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        epochs += 1
    train_s = time.time() - t0
    model.eval()
    with torch.no_grad():
        feats = model.backbone(xn)
        val_acc = (head(feats[va]).argmax(1) == labels[va]).float().mean().item()
    z = F.normalize(feats, dim=1)
    nmi, ari, acc = nmi_ari_acc(y[tr], kmeans(z[tr], len(classes), 10, args.seed))
    print(json.dumps({
        "reference": "pytorch-supervised", "torch": torch.__version__, "data": args.data,
        "train": len(tr), "val": len(va), "size": args.size, "epochs": epochs,
        "train_seconds": round(train_s, 1), "threads": args.threads, "seed": args.seed,
        "val_accuracy": round(val_acc, 4), "knn_top1": round(float(knn_top1(z[tr], y[tr], z[va], y[va])), 4),
        "nmi": round(float(nmi), 4), "ari": round(float(ari), 4), "accuracy": round(float(acc), 4),
    }))


if __name__ == "__main__":
    main()
