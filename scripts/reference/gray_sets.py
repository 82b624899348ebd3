"""Two small labeled grayscale sets of kinds this project never trains on, for checking that
learned features beat raw-pixel k-means on little data (issue: small grayscale sets):

- digits: the 1,797 handwritten digits bundled with scikit-learn (8x8, 17 gray levels),
  scaled to 28 px; 10 classes.
- letters: the capitals A-J drawn in every TrueType font fontconfig lists, at a random size,
  slant, turn, place and stroke weight, lightly blurred with sensor noise; 10 classes,
  `--letters-per-class` each.

White on black, as Fashion-MNIST. Nothing is downloaded.

    python gray_sets.py --out runs/gray [--letters-per-class 70] [--seed 11]
"""

import argparse, os, subprocess

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from sklearn.datasets import load_digits

SIZE = 28


def write_digits(out):
    digits = load_digits()
    for k in range(10):
        os.makedirs(f"{out}/digits/{k}")
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        small = Image.fromarray((img * (255 / 16)).astype(np.uint8))
        small.resize((SIZE, SIZE), Image.BILINEAR).save(f"{out}/digits/{label}/{i:04}.png")
    return len(digits.target)


def fonts():
    listed = subprocess.run(["fc-list", "--format", "%{file}\n"], capture_output=True, text=True).stdout
    files = sorted({f for f in listed.split("\n") if f.endswith(".ttf")})
    if not files:
        raise SystemExit("no TrueType fonts found by fc-list (apt-get install fonts-dejavu-core)")
    return files


def letter(rng, char, font_file):
    canvas = Image.new("L", (2 * SIZE, 2 * SIZE), 0)
    font = ImageFont.truetype(font_file, int(rng.integers(26, 40)))
    ImageDraw.Draw(canvas).text((SIZE, SIZE), char, fill=255, font=font, anchor="mm")
    if rng.random() < 0.4:
        canvas = canvas.filter(ImageFilter.MaxFilter(3))
    slant = rng.uniform(-0.3, 0.3)
    canvas = canvas.transform(canvas.size, Image.AFFINE, (1, slant, -slant * SIZE, 0, 1, 0), Image.BILINEAR)
    canvas = canvas.rotate(rng.uniform(-15, 15), Image.BILINEAR)
    box = canvas.getbbox() or (0, 0, 2 * SIZE, 2 * SIZE)
    side = max(box[2] - box[0], box[3] - box[1]) * rng.uniform(1.1, 1.4)
    cx = (box[0] + box[2]) / 2 + rng.uniform(-0.1, 0.1) * side
    cy = (box[1] + box[3]) / 2 + rng.uniform(-0.1, 0.1) * side
    crop = canvas.crop((int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2)))
    crop = crop.resize((SIZE, SIZE), Image.BILINEAR).filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.7)))
    pixels = np.asarray(crop, float) + rng.normal(0, 8, (SIZE, SIZE))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_letters(out, per_class, rng):
    files = fonts()
    for char in "ABCDEFGHIJ":
        os.makedirs(f"{out}/letters/{char}")
        for j in range(per_class):
            letter(rng, char, files[rng.integers(len(files))]).save(f"{out}/letters/{char}/{j:03}.png")
    return 10 * per_class, len(files)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--letters-per-class", type=int, default=70)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args()
    if os.path.exists(a.out):
        raise SystemExit(f"{a.out} already exists: choose a new --out")
    n_digits = write_digits(a.out)
    n_letters, n_fonts = write_letters(a.out, a.letters_per_class, np.random.default_rng(a.seed))
    print(f"wrote {n_digits} digits to {a.out}/digits and {n_letters} letters ({n_fonts} fonts) to {a.out}/letters")


if __name__ == "__main__":
    main()
