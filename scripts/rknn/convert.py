"""Converts an exported encoder's fp32 ONNX to .rknn files with rknn-toolkit2, writes the
cards that tie them to the manifest, and checks them in the toolkit's simulator against
tract's fp32 embeddings of the same preprocessed test images.

Called by scripts/export-rknn, which prepares the tensors with `edge-runtime preprocess`
so preprocessing is the manifest's, done once in Rust, never again here.
"""

import argparse
import hashlib
import json
import os
import tempfile

import numpy as np
import onnx
from rknn.api import RKNN


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def l2(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def convert(args, manifest, quantized, calib_file, out_path):
    source = next(m for m in manifest["models"] if m["precision"] == "fp32")
    onnx_path = os.path.join(args.model_dir, source["file"])
    if sha256(onnx_path) != source["sha256"]:
        raise SystemExit(f"{onnx_path}: SHA-256 does not match {args.model_dir}/manifest.json")
    inp = manifest["input"]
    shape = [1, inp["channels"], inp["height"], inp["width"]]
    name = onnx.load(onnx_path).graph.input[0].name
    rknn = RKNN(verbose=False)
    # Mean 0, std 1: the tensors arrive preprocessed by edge-runtime, as on the board.
    rknn.config(
        mean_values=[[0.0] * shape[1]],
        std_values=[[1.0] * shape[1]],
        target_platform=args.platform,
    )
    if rknn.load_onnx(model=onnx_path, inputs=[name], input_size_list=[shape]) != 0:
        raise SystemExit(f"{onnx_path}: rknn-toolkit2 cannot load it")
    if rknn.build(do_quantization=quantized, dataset=calib_file if quantized else None) != 0:
        raise SystemExit(f"{onnx_path}: rknn-toolkit2 build failed")
    if rknn.export_rknn(out_path) != 0:
        raise SystemExit(f"{out_path}: export failed")
    card = {
        "source_file": source["file"],
        "source_sha256": source["sha256"],
        "file": os.path.basename(out_path),
        "bytes": os.path.getsize(out_path),
        "sha256": sha256(out_path),
        "target_platform": args.platform,
        "quantized": quantized,
        "calibration_images": args.calibration_images if quantized else 0,
        "batch": 1,
        "toolkit": f"rknn-toolkit2 {rknn_version()}",
    }
    with open(out_path + ".json", "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    return rknn, card


def rknn_version():
    from importlib.metadata import version

    return version("rknn-toolkit2")


def simulate(rknn, test):
    if rknn.init_runtime() != 0:  # no target: the toolkit's simulator
        raise SystemExit("rknn-toolkit2 simulator failed to start")
    out = [rknn.inference(inputs=[test[i : i + 1]], data_format="nchw")[0] for i in range(len(test))]
    return np.concatenate(out).reshape(len(test), -1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--platform", default="rk3588")
    p.add_argument("--calib", required=True, help="N x C x H x W .npy, training images")
    p.add_argument("--test", required=True, help="N x C x H x W .npy, test images")
    p.add_argument("--reference", required=True, help="tract's fp32 raw embeddings of --test")
    p.add_argument("--calibration-images", type=int, default=512)
    a = p.parse_args()
    a.model_dir = os.path.abspath(a.model_dir)
    with open(os.path.join(a.model_dir, "manifest.json")) as f:
        manifest = json.load(f)

    work = tempfile.mkdtemp()
    calib = np.load(a.calib)
    # Evenly spaced, so that a folder read class after class calibrates on every class.
    pick = np.linspace(0, len(calib) - 1, min(a.calibration_images, len(calib))).astype(int)
    calib = calib[pick]
    a.calibration_images = len(calib)
    calib_file = os.path.join(work, "dataset.txt")
    with open(calib_file, "w") as f:
        for i, x in enumerate(calib):
            path = os.path.join(work, f"{i}.npy")
            np.save(path, x[None])
            f.write(path + "\n")

    test = np.load(a.test)
    ref = l2(np.load(a.reference))
    cents = manifest["centroids"]
    centroids = np.asarray(cents["values"], dtype=np.float32).reshape(cents["k"], cents["dim"])
    nearest = lambda e: np.argmax(e @ centroids.T, axis=1)  # centroids of L2 rows

    report = {"platform": a.platform, "test_images": len(test), "toolkit": rknn_version()}
    for precision, quantized in (("fp32", False), ("int8", True)):
        out = os.path.join(a.model_dir, f"encoder.{precision}.rknn")
        rknn, card = convert(a, manifest, quantized, calib_file, out)
        emb = l2(simulate(rknn, test))
        rknn.release()
        cos = (emb * ref).sum(axis=1)
        agree = float((nearest(emb) == nearest(ref)).mean())
        report[precision] = {
            "npu_dtype": "int8" if quantized else "fp16",
            "bytes": card["bytes"],
            "mean_cosine_vs_tract_fp32": float(cos.mean()),
            "min_cosine_vs_tract_fp32": float(cos.min()),
            "nearest_centroid_agreement": agree,
        }
        print(f"{out}: {card['bytes']} bytes, cosine {cos.mean():.5f} (min {cos.min():.5f}), "
              f"same nearest centroid {100 * agree:.2f}%")
    with open(os.path.join(a.model_dir, "rknn_parity.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
