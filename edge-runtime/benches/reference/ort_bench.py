"""onnxruntime (PyPI) on the same model and inputs as the tract rows of benches/edge.rs.

Usage: ort_bench.py MODEL_DIR FASHION_MNIST_DIR; prints a JSON list of rows.
"""
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def main():
    model_dir, data = Path(sys.argv[1]), Path(sys.argv[2])
    manifest = json.loads((model_dir / "manifest.json").read_text())
    raw = gzip.open(data / "t10k-images-idx3-ubyte.gz").read()
    px = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)[:1024]
    p = manifest["preprocess"]
    x = ((px.astype(np.float32) / 255.0 - p["mean"][0]) / p["std"][0]).astype(np.float32)
    rows = []
    for entry in manifest["models"]:
        for batch in (1, 16):
            for threads in (1, 2):
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
                s = ort.InferenceSession(str(model_dir / entry["file"]), opts, providers=["CPUExecutionProvider"])
                batches = [x[i : i + batch] for i in range(0, len(x) - batch + 1, batch)]
                for b in batches[:20]:
                    s.run(None, {"images": b})
                times = []
                t0 = time.perf_counter()
                while (len(times) < 200 or time.perf_counter() - t0 < 2.0) and len(times) < 20000:
                    b = batches[len(times) % len(batches)]
                    t = time.perf_counter()
                    s.run(None, {"images": b})
                    times.append((time.perf_counter() - t) * 1e3)
                total = sum(times)
                times.sort()
                rows.append({
                    "backend": f"onnxruntime {ort.__version__} (Python)",
                    "precision": entry["precision"],
                    "batch": batch,
                    "threads": threads,
                    "p50_ms": times[len(times) // 2],
                    "p99_ms": times[len(times) * 99 // 100],
                    "fps": len(times) * batch / (total / 1e3),
                })
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
