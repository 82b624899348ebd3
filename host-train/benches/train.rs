//! `cargo bench -p host-train --bench train`: images/s of one DeepCluster training step of
//! `small-cnn` (forward, backward, SGD with momentum) at batch 256 on 1x28x28 inputs, side by
//! side with the same network in PyTorch on the CPU with the same number of threads.
//!
//! Environment: `THREADS` (default 2), `PYTHON` (needs torch; default `python3`).
//! Writes `target/bench/train.json`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{linear, Module, Optimizer, VarBuilder, VarMap};
use host_train::encoders::{SmallCnn, SmallCnnConfig};
use host_train::optim::{SgdMomentum, SgdParams};
use serde_json::{json, Value};

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const BATCH: usize = 256;
const WARMUP: usize = 3;
/// Steps per timed window; the best of `WINDOWS` windows is reported on both sides, since
/// single runs of either moved by up to 20% on this machine.
const STEPS: usize = 5;
const WINDOWS: usize = 3;

fn ours() -> BenchResult<f64> {
    // As the host-train binary does: training reuses freed activation buffers.
    host_train::malloc::keep_freed_memory();
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let net = SmallCnn::new(SmallCnnConfig::default(), vb.pp("encoder"))?;
    let head = linear(128, 100, vb.pp("head"))?;
    let mut opt = SgdMomentum::new(vm.all_vars(), SgdParams::default())?;
    let x = Tensor::randn(0f32, 1.0, (BATCH, 1, 28, 28), &dev)?;
    let labels: Vec<u32> = (0..BATCH as u32).map(|i| (i * 37) % 100).collect();
    let y = Tensor::from_vec(labels, BATCH, &dev)?;
    let mut step = || -> BenchResult<()> {
        let logits = head.forward(&net.forward_t(&x, true)?)?;
        opt.backward_step(&host_train::ops::cross_entropy(&logits, &y)?)?;
        Ok(())
    };
    for _ in 0..WARMUP {
        step()?;
    }
    let mut best = 0f64;
    for _ in 0..WINDOWS {
        let t0 = Instant::now();
        for _ in 0..STEPS {
            step()?;
        }
        best = best.max((BATCH * STEPS) as f64 / t0.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn pytorch(threads: usize, root: &Path) -> BenchResult<Value> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = root.join("host-train/benches/reference/train_pytorch.py");
    let out = Command::new(&python)
        .arg(&script)
        .args([
            "--threads",
            &threads.to_string(),
            "--batch",
            &BATCH.to_string(),
        ])
        .args([
            "--steps",
            &STEPS.to_string(),
            "--warmup",
            &WARMUP.to_string(),
        ])
        .env("OMP_NUM_THREADS", threads.to_string())
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}; it needs torch: ./scripts/bench-train sets it up",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn main() -> BenchResult<()> {
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let ours = pool.install(ours)?;
    let torch = pytorch(threads, &root)?;
    let theirs = torch["img_per_s"]
        .as_f64()
        .ok_or("no img_per_s from PyTorch")?;
    println!("small-cnn DeepCluster step, batch {BATCH}, 1x28x28, {threads} threads");
    println!("| implementation | images/s |");
    println!("|---|---|");
    println!("| ours (candle + im2col/GEMM conv ops) | {ours:.0} |");
    println!(
        "| PyTorch {} CPU | {theirs:.0} |",
        torch["torch"].as_str().unwrap_or("?")
    );
    println!("ratio ours/PyTorch: {:.2}", ours / theirs);
    let report = json!({
        "ours_img_per_s": ours, "pytorch_img_per_s": theirs, "threads": threads, "batch": BATCH,
        "ratio": ours / theirs, "pytorch_version": torch["torch"],
        "steps_per_window": STEPS, "windows": WINDOWS,
    });
    std::fs::write(
        out_dir.join("train.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    Ok(())
}
