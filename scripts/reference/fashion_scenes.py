"""A labeled RGB set whose object shapes no generator of this project drew: Fashion-MNIST
test items (six classes: trouser, sandal, sneaker, bag, ankle boot, t-shirt) as silhouettes in
a random colour, scaled 1.3-2.1x, turned up to 30 degrees and mirrored at random, on random
backgrounds (smoothed colour noise, sine stripes or blocky noise, in two random colours),
under a random light level and sensor noise. Class = the item; colour, background, lighting
and place are nuisances. Used to check that what figure-pairs learns from generated figures
transfers to other objects.

    python fashion_scenes.py --out runs/fashion-scenes [--per-class 300] [--size 64] [--seed 7]
"""

import argparse, colorsys, gzip, os

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, rotate, zoom

CLASSES = {1: "trouser", 5: "sandal", 7: "sneaker", 8: "bag", 9: "boot", 0: "tshirt"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--fashion-mnist", default="/usr/share/datasets/fashion-mnist")
    a = ap.parse_args()
    if os.path.exists(a.out):
        raise SystemExit(f"{a.out} already exists: choose a new --out")
    rng = np.random.default_rng(a.seed)
    d, s = a.fashion_mnist, a.size
    items = np.frombuffer(gzip.open(f"{d}/t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.frombuffer(gzip.open(f"{d}/t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)

    def colour():
        return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.2, 1), rng.uniform(0.15, 1)))

    def background():
        kind = rng.integers(3)
        if kind == 0:
            w = gaussian_filter(rng.random((s, s)), rng.uniform(1.5, 6))
        elif kind == 1:
            yy, xx = np.mgrid[:s, :s]
            t = rng.uniform(0, np.pi)
            w = np.sin((xx * np.cos(t) + yy * np.sin(t)) / rng.uniform(1.5, 5))
        else:
            w = np.kron(gaussian_filter(rng.random((s // 4, s // 4)), 1), np.ones((4, 4)))
        w = (w - w.min()) / (np.ptp(w) + 1e-6)
        return colour()[:, None, None] * (1 - w) + colour()[:, None, None] * w

    for c, name in CLASSES.items():
        os.makedirs(f"{a.out}/{name}")
        for j, i in enumerate(np.flatnonzero(labels == c)[: a.per_class]):
            img = background()
            item = zoom(items[i].astype(float) / 255, rng.uniform(1.3, 2.1) * s / 64, order=1)
            item = rotate(item, rng.uniform(-30, 30), reshape=False, order=1)
            if rng.random() < 0.5:
                item = item[:, ::-1]
            h = item.shape[0]
            oy, ox = rng.integers(0, max(1, s - h + 1), 2)
            m = np.zeros((s, s))
            m[oy:oy + h, ox:ox + h] = item[: s - oy, : s - ox]
            alpha = np.clip(m * 4, 0, 1)
            img = img * (1 - alpha) + colour()[:, None, None] * (0.6 + 0.4 * m) * alpha
            img = img * rng.uniform(0.6, 1.2) + rng.uniform(0, 0.04) * rng.standard_normal((3, s, s))
            pixels = (np.clip(img, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(f"{a.out}/{name}/{j:05}.jpg", quality=90)
    print(f"{len(CLASSES) * a.per_class} images of {len(CLASSES)} classes, {s}x{s} RGB, in {a.out}")


if __name__ == "__main__":
    main()
