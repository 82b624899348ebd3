"""Real ONNX clients on an exported model directory (run by tests/tests/onnx_clients.rs).

- onnx.checker.check_model(full_check=True) on the fp32 and the int8 file;
- the files' SHA-256 against the manifest;
- preprocessing re-implemented here from the manifest alone, then onnxruntime's embeddings
  against tract's raw embeddings: max abs diff <= 1e-4 in fp32 and <= 1e-2 in int8.

For int8 two onnxruntime sessions run. With graph optimisations off, onnxruntime executes the
QDQ graph as the ONNX spec defines it, which is what tract does: the raw embeddings must agree.
With its default optimisations it fuses the pairs into integer kernels (QLinearConv) whose
fixed-point requantisation rounds differently by a step here and there; those are compared
after the L2 normalisation the manifest asks for, which is what the board uses.

Usage: onnx_clients.py MODEL_DIR IDX_IMAGES_GZ N TRACT_FP32.npy TRACT_INT8.npy
"""
import gzip
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

TOLERANCE = {"fp32": 1e-4, "int8": 1e-2}


def read_idx_images(path, n):
    with gzip.open(path, "rb") as f:
        data = f.read()
    count, rows, cols = (int.from_bytes(data[i : i + 4], "big") for i in (4, 8, 12))
    pixels = np.frombuffer(data, np.uint8, offset=16).reshape(count, 1, rows, cols)
    return pixels[:n]


def preprocess(pixels, spec):
    mean = np.array(spec["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.array(spec["std"], np.float32).reshape(1, -1, 1, 1)
    return ((pixels.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def l2(v):
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def main():
    model_dir, idx, n, tract_fp32, tract_int8 = sys.argv[1:6]
    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    x = preprocess(read_idx_images(idx, int(n)), manifest["preprocess"])
    tract = {"fp32": np.load(tract_fp32), "int8": np.load(tract_int8)}
    failed = False
    for entry in manifest["models"]:
        precision, path = entry["precision"], model_dir / entry["file"]
        raw = path.read_bytes()
        assert hashlib.sha256(raw).hexdigest() == entry["sha256"], f"{path}: hash differs"
        model = onnx.load_from_string(raw)
        onnx.checker.check_model(model, full_check=True)
        print(f"{path.name}: onnx.checker full_check ok, sha256 ok")
        levels = [("spec semantics (optimisations off)", ort.GraphOptimizationLevel.ORT_DISABLE_ALL, False)]
        if precision == "int8":
            levels.append(("fused int8 kernels (default), L2-normalised", ort.GraphOptimizationLevel.ORT_ENABLE_ALL, True))
        for what, level, normalise in levels:
            options = ort.SessionOptions()
            options.graph_optimization_level = level
            session = ort.InferenceSession(raw, options, providers=["CPUExecutionProvider"])
            got = session.run([manifest["embedding"]["name"]], {manifest["input"]["name"]: x})[0]
            want = tract[precision]
            if normalise:
                got, want = l2(got), l2(want)
            diff = float(np.abs(got - want).max())
            ok = diff <= TOLERANCE[precision]
            failed |= not ok
            print(
                f"  onnxruntime {ort.__version__} vs tract, {what}, {len(x)} images: "
                f"max abs diff {diff:.2e} (target <= {TOLERANCE[precision]:g}) {'pass' if ok else 'FAIL'}"
            )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
