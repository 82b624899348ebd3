//! host-train on the GPU, side by side with PyTorch in one run. Built by `scripts/build-cuda`
//! (target/cuda/release/bench-cuda) or `cargo bench -p host-train --features cudnn --bench
//! cuda` on a machine with CUDA; arguments pick the parts (all three by default):
//!
//! - `checks`: cuDNN convolution (forward, both gradients) against candle's own, and the GPU
//!   k-means assignment against the CPU one, before anything is timed;
//! - `kmeans`: DeepCluster's ImageNet-scale k-means, 1.2M x 256 points, k = 10,000, 20
//!   iterations, from the same points and initial centroids as a PyTorch GEMM k-means;
//! - `train`: resnet18 on Fashion-MNIST padded to 32x32: the DeepCluster training step
//!   (batch 256) against the same model in PyTorch, and one whole DeepCluster epoch, phase
//!   by phase.
//!
//! Environment: `PYTHON` (with torch; default `python3`), `BENCH_OUT` (where `cuda.json` and
//! the k-means data go; default target/bench), `KMEANS_N` (points; default 1,200,000),
//! `FASHION_MNIST_DIR`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{linear, Module, Optimizer, VarBuilder, VarMap};
use host_train::augment::AugmentConfig;
use host_train::dataset::{Normalization, TrainSet};
use host_train::device_kmeans::CandleAssign;
use host_train::encoders::{Encoder, ResNet18, ResNet18Config};
use host_train::features::extract;
use host_train::methods::deepcluster::{self, DeepClusterConfig};
use host_train::optim::{SgdMomentum, SgdParams};
use models::cluster::{AssignError, AssignStep, CpuGemmAssign, KMeansParams};
use models::rng::Rng;
use models::MatRef;
use rayon::prelude::*;
use serde_json::{json, Value};

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const BATCH: usize = 256;
const KMEANS_DIM: usize = 256;
const KMEANS_K: usize = 10_000;
const KMEANS_ITERS: usize = 20;

fn main() -> BenchResult<()> {
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--")) // `cargo bench` passes --bench
        .collect();
    let all = parts.is_empty();
    let wants = |p: &str| all || parts.iter().any(|a| a == p);
    let dev = host_train::device::cuda(0)?;
    let out_dir = std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench"));
    std::fs::create_dir_all(&out_dir)?;
    let mut report = json!({});
    let mut table = Vec::new();
    if wants("checks") {
        report["checks"] = checks(&dev, &mut table)?;
    }
    if wants("kmeans") {
        report["kmeans"] = kmeans(&dev, &out_dir, &mut table)?;
    }
    if wants("train") {
        report["train"] = train(&dev, &mut table)?;
    }
    std::fs::write(
        out_dir.join("cuda.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("\n| part | measure | ours | PyTorch | ours / PyTorch |");
    println!("|---|---|---|---|---|");
    for row in table {
        println!("{row}");
    }
    println!("wrote {}", out_dir.join("cuda.json").display());
    Ok(())
}

fn row(part: &str, measure: &str, ours: f64, theirs: Option<f64>) -> String {
    match theirs {
        Some(t) => format!(
            "| {part} | {measure} | {ours:.3} | {t:.3} | {:.2} |",
            ours / t
        ),
        None => format!("| {part} | {measure} | {ours:.3} | | |"),
    }
}

/// A reference script, next to this file in the source tree or under the working directory.
fn reference(name: &str) -> PathBuf {
    let local = Path::new("host-train/benches/reference").join(name);
    if local.exists() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/reference")
        .join(name)
}

fn pytorch(script: &str, args: &[String]) -> BenchResult<Value> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let path = reference(script);
    let out = Command::new(&python)
        .arg(&path)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().ok_or("no output from PyTorch")?;
    Ok(serde_json::from_str(last)?)
}

fn random(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n * d)
        .map(|_| r.next_f64() as f32 * 2.0 - 1.0)
        .collect()
}

fn checks(dev: &Device, table: &mut Vec<String>) -> BenchResult<Value> {
    let mut out = json!({});
    #[cfg(feature = "cudnn")]
    {
        use host_train::ops::cudnn_conv::{parity_check, set_allow_tf32};
        set_allow_tf32(false);
        let exact = parity_check(dev)?;
        set_allow_tf32(true);
        println!("cuDNN conv in f32 (TF32 off) vs candle conv, relative error: {exact:?}");
        if exact.iter().any(|v| v.is_nan() || *v >= 1e-5) {
            return Err(format!("cuDNN f32 conv differs from candle's: {exact:?}").into());
        }
        out["cudnn_conv_f32_rel_error"] = json!(exact);
        let [y, dx, dw] = parity_check(dev)?;
        println!("cuDNN conv (TF32 allowed) vs candle conv, relative error: y {y:.2e}, dx {dx:.2e}, dw {dw:.2e}");
        for (name, v) in [("y", y), ("dx", dx), ("dw", dw)] {
            // TF32 tensor cores round operands to 10 mantissa bits: ~1e-3 relative.
            if v.is_nan() || v >= 5e-3 {
                return Err(format!("cuDNN conv {name} differs from candle's by {v}").into());
            }
            table.push(row(
                "checks",
                &format!("cuDNN conv {name} rel. error"),
                v as f64,
                None,
            ));
        }
        out["cudnn_conv_rel_error"] = json!({"y": y, "dx": dx, "dw": dw});
        let bn = host_train::ops::cudnn_batch_norm::parity_check(dev)?;
        println!("cuDNN batch norm vs candle ops, relative error (y, dx, dgamma, dbeta): {bn:?}");
        for (name, v) in ["y", "dx", "dgamma", "dbeta"].iter().zip(bn) {
            if v.is_nan() || v >= 1e-4 {
                return Err(format!("cuDNN batch norm {name} differs by {v}").into());
            }
            table.push(row(
                "checks",
                &format!("cuDNN batch norm {name} rel. error"),
                v as f64,
                None,
            ));
        }
        out["cudnn_batch_norm_rel_error"] = json!(bn);
    }
    // The fused SGD kernels against the candle-op update on the CPU, three steps.
    let start: Vec<f32> = random(1000, 1, 5);
    let c: Vec<f32> = random(1000, 1, 6);
    let mut after = Vec::new();
    for device in [&Device::Cpu, dev] {
        let p = candle_core::Var::from_slice(&start, 1000, device)?;
        let ct = Tensor::from_slice(&c, 1000, device)?;
        let mut opt = SgdMomentum::new(vec![p.clone()], SgdParams::default())?;
        for _ in 0..3 {
            opt.backward_step(&(p.as_tensor() * p.as_tensor().sqr()? * &ct)?.sum_all()?)?;
        }
        after.push(p.as_tensor().to_vec1::<f32>()?);
    }
    let sgd_diff = after[0]
        .iter()
        .zip(&after[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!(
        "fused SGD on the GPU vs candle ops on the CPU, 3 steps: max difference {sgd_diff:.2e}"
    );
    if sgd_diff.is_nan() || sgd_diff >= 1e-5 {
        return Err(format!("fused SGD differs by {sgd_diff}").into());
    }
    table.push(row(
        "checks",
        "fused SGD max abs difference",
        sgd_diff as f64,
        None,
    ));
    out["sgd_max_abs_diff"] = json!(sgd_diff);

    let (n, k, d) = (20_000, 100, 64);
    let (x, c) = (random(n, d, 1), random(k, d, 2));
    let (xm, cm) = (MatRef::new(&x, d)?, MatRef::new(&c, d)?);
    let (mut l0, mut d0) = (vec![0; n], vec![0.0; n]);
    let cpu = CpuGemmAssign::default();
    cpu.assign(&cpu.prepare(xm)?, xm, cm, &mut l0, &mut d0)?;
    let gpu = CandleAssign::new(dev);
    let (mut l1, mut d1) = (vec![u32::MAX; n], vec![f32::NAN; n]);
    gpu.assign(&gpu.prepare(xm)?, xm, cm, &mut l1, &mut d1)?;
    let agree = l0.iter().zip(&l1).filter(|(a, b)| a == b).count() as f64 / n as f64;
    let worst = d0
        .iter()
        .zip(&d1)
        .map(|(a, b)| ((a - b).abs() / a.max(1e-6)) as f64)
        .fold(0.0, f64::max);
    println!(
        "GPU vs CPU k-means assignment: {agree:.5} of labels agree, distances within {worst:.2e}"
    );
    if agree < 0.999 || worst.is_nan() || worst >= 1e-3 {
        return Err(format!("GPU assignment disagrees: {agree} labels, {worst} distance").into());
    }
    table.push(row(
        "checks",
        "GPU/CPU assignment label agreement",
        agree,
        None,
    ));
    out["assign_label_agreement"] = json!(agree);
    out["assign_worst_rel_distance"] = json!(worst);
    Ok(out)
}

/// An assignment step that adds up the time spent in it.
struct Timed<'a, A> {
    inner: &'a A,
    dev: &'a Device,
    seconds: Mutex<f64>,
}

impl<A: AssignStep> AssignStep for Timed<'_, A> {
    type Prepared = A::Prepared;

    fn prepare(&self, points: MatRef<'_>) -> Result<A::Prepared, AssignError> {
        self.inner.prepare(points)
    }

    fn assign(
        &self,
        prepared: &A::Prepared,
        points: MatRef<'_>,
        centroids: MatRef<'_>,
        labels: &mut [u32],
        dists: &mut [f32],
    ) -> Result<(), AssignError> {
        let t0 = Instant::now();
        self.inner
            .assign(prepared, points, centroids, labels, dists)?;
        self.dev
            .synchronize()
            .map_err(|e| AssignError::Backend(Box::new(e)))?;
        *self.seconds.lock().expect("not poisoned") += t0.elapsed().as_secs_f64();
        Ok(())
    }
}

/// Unit vectors around `k` random unit centres, with per-dimension noise as large as the
/// centres themselves: clusters that overlap, like whitened CNN features.
fn mixture(n: usize, d: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut centres = random(k, d, seed);
    models::linalg::l2_normalize_rows(&mut centres, d);
    let mut x = vec![0f32; n * d];
    x.par_chunks_mut(d * 4096)
        .enumerate()
        .for_each(|(chunk, rows)| {
            let mut r = Rng::new(seed ^ (chunk as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for row in rows.chunks_mut(d) {
                let c = &centres[r.below(k) * d..][..d];
                for (v, &m) in row.iter_mut().zip(c) {
                    *v = m + (r.next_f64() as f32 - 0.5) * 0.12;
                }
            }
            models::linalg::l2_normalize_rows(rows, d);
        });
    x
}

fn write_f32(path: &Path, v: &[f32]) -> BenchResult<()> {
    let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
    std::fs::write(path, bytes)?;
    Ok(())
}

fn kmeans(dev: &Device, out_dir: &Path, table: &mut Vec<String>) -> BenchResult<Value> {
    let n: usize = std::env::var("KMEANS_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_200_000);
    let (d, k) = (KMEANS_DIM, KMEANS_K.min(n));
    let t0 = Instant::now();
    let x = mixture(n, d, k, 7);
    let mut rng = Rng::new(11);
    let init: Vec<f32> = rng
        .sample_indices(n, k)
        .into_iter()
        .flat_map(|i| x[i * d..(i + 1) * d].to_vec())
        .collect();
    let (points_file, init_file) = (
        out_dir.join("kmeans_points.f32"),
        out_dir.join("kmeans_init.f32"),
    );
    write_f32(&points_file, &x)?;
    write_f32(&init_file, &init)?;
    println!(
        "k-means data: {n} x {d}, k = {k}, made in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let params = KMeansParams::new(k)
        .max_iter(KMEANS_ITERS)
        .max_points_per_centroid(None)
        .check()?;
    let gpu = CandleAssign::new(dev);
    // Warm-up: load the kernels and cuBLAS on a small problem.
    let small = MatRef::new(&x[..20_000 * d], d)?;
    KMeansParams::new(100)
        .max_iter(2)
        .check()?
        .fit_with(&gpu, small)?;
    let timed = Timed {
        inner: &gpu,
        dev,
        seconds: Mutex::new(0.0),
    };
    let t0 = Instant::now();
    let (_, stats, _) = params.train(&timed, MatRef::new(&x, d)?, Some(MatRef::new(&init, d)?))?;
    let seconds = t0.elapsed().as_secs_f64();
    let assign_s = *timed.seconds.lock().expect("not poisoned");
    let (first, last) = (stats[0].objective, stats[stats.len() - 1].objective);
    let splits: usize = stats.iter().map(|s| s.n_splits).sum();
    println!(
        "ours: {seconds:.2} s ({assign_s:.2} s assigning on the GPU), objective {first:.1} -> {last:.1}, {splits} splits"
    );

    let torch = pytorch(
        "cuda_kmeans_pytorch.py",
        &[
            "--points".into(),
            points_file.display().to_string(),
            "--init".into(),
            init_file.display().to_string(),
            "--dim".into(),
            d.to_string(),
            "--iters".into(),
            KMEANS_ITERS.to_string(),
        ],
    )?;
    std::fs::remove_file(&points_file)?;
    let theirs = torch["seconds"].as_f64().ok_or("no seconds from PyTorch")?;
    println!("PyTorch: {torch}");
    table.push(row(
        "kmeans 1.2M x 256, k 10k, 20 it",
        "seconds",
        seconds,
        Some(theirs),
    ));
    table.push(row(
        "kmeans",
        "final objective",
        last,
        torch["objective_last"].as_f64(),
    ));
    Ok(json!({
        "n": n, "dim": d, "k": k, "iters": KMEANS_ITERS,
        "ours": {"seconds": seconds, "assign_seconds": assign_s, "objective_first": first,
                 "objective_last": last, "splits": splits},
        "pytorch": torch,
    }))
}

/// Free and total GPU memory in GiB, for the log.
fn gpu_memory() -> String {
    match candle_core::cuda::cudarc::driver::result::mem_get_info() {
        Ok((free, total)) => format!(
            "{:.1} of {:.1} GiB free",
            free as f64 / (1u64 << 30) as f64,
            total as f64 / (1u64 << 30) as f64
        ),
        Err(e) => format!("memory unknown: {e}"),
    }
}

/// Images/s of the DeepCluster training step on a device-resident batch, best of 3 windows.
fn train_step_throughput(dev: &Device) -> BenchResult<f64> {
    println!("train step: {}", gpu_memory());
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, dev);
    let net = ResNet18::new(ResNet18Config::default(), vb.pp("encoder"))?;
    let head = linear(128, 100, vb.pp("head"))?;
    let mut opt = SgdMomentum::new(vm.all_vars(), SgdParams::default())?;
    let x = Tensor::randn(0f32, 1.0, (BATCH, 1, 32, 32), dev)?;
    let labels: Vec<u32> = (0..BATCH as u32).map(|i| (i * 37) % 100).collect();
    let y = Tensor::from_vec(labels, BATCH, dev)?;
    let mut step = || -> BenchResult<Tensor> {
        let logits = head.forward(&net.forward_t(&x, true)?)?;
        let loss = host_train::ops::cross_entropy(&logits, &y)?;
        opt.backward_step(&loss)?;
        Ok(loss)
    };
    for _ in 0..5 {
        step()?;
    }
    dev.synchronize()?;
    println!("after 5 warm-up steps: {}", gpu_memory());
    let mut best = 0f64;
    for _ in 0..3 {
        let t0 = Instant::now();
        let mut loss = None;
        for _ in 0..20 {
            loss = Some(step()?);
        }
        // Reading the loss waits for the window's work, as PyTorch's .item() does.
        let l: f32 = loss.ok_or("no steps")?.to_scalar()?;
        if !l.is_finite() {
            return Err(format!("loss became {l}").into());
        }
        best = best.max((BATCH * 20) as f64 / t0.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Images/s of eval-mode embedding of a device-resident batch of 512, copied back to the host
/// as `extract` does (PyTorch's side does the same).
fn eval_throughput(dev: &Device) -> BenchResult<f64> {
    let vm = VarMap::new();
    let net = ResNet18::new(
        ResNet18Config::default(),
        VarBuilder::from_varmap(&vm, DType::F32, dev),
    )?;
    let x = Tensor::randn(0f32, 1.0, (512, 1, 32, 32), dev)?;
    net.forward_t(&x, false)?.to_vec2::<f32>()?;
    let t0 = Instant::now();
    let mut done = 0;
    while done < 60_000 {
        net.forward_t(&x, false)?.to_vec2::<f32>()?;
        done += 512;
    }
    Ok(done as f64 / t0.elapsed().as_secs_f64())
}

fn train(dev: &Device, table: &mut Vec<String>) -> BenchResult<Value> {
    let step = train_step_throughput(dev)?;
    let eval = eval_throughput(dev)?;
    #[cfg(feature = "cudnn")]
    let step_f32 = {
        use host_train::ops::cudnn_conv::set_allow_tf32;
        set_allow_tf32(false);
        let s = train_step_throughput(dev)?;
        set_allow_tf32(true);
        table.push(row(
            "the same step, convolutions in exact f32 (TF32 off)",
            "images/s",
            s,
            None,
        ));
        s
    };
    #[cfg(not(feature = "cudnn"))]
    let step_f32 = step;
    let torch = pytorch(
        "cuda_train_pytorch.py",
        &["--batch".into(), BATCH.to_string()],
    )?;
    println!("PyTorch: {torch}");
    table.push(row(
        "resnet18 DeepCluster step, batch 256",
        "images/s",
        step,
        torch["step_img_per_s"].as_f64(),
    ));

    // One DeepCluster epoch on the real data, phase by phase.
    let dir = models::data::fashion_mnist_dir();
    let images = models::data::load_fashion_mnist(&dir, models::data::Split::Train)?
        .pad_to(32)
        .ok_or("cannot pad")?;
    let set = TrainSet::new(images.clone(), Normalization::measure(&images))?;
    let vm = VarMap::new();
    let net = ResNet18::new(
        ResNet18Config::default(),
        VarBuilder::from_varmap(&vm, DType::F32, dev).pp("encoder"),
    )?;
    let mut opt = SgdMomentum::new(vm.all_vars(), SgdParams::default())?;
    let cfg = DeepClusterConfig::default();
    let t0 = Instant::now();
    let feats = extract(&net, &set, 512, dev, "features")?;
    let extract_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let clustering = deepcluster::cluster(&feats, net.embed_dim(), &cfg, 1, dev)?;
    let cluster_s = t1.elapsed().as_secs_f64();
    let order = deepcluster::sample_uniform_over_clusters(
        &clustering.labels,
        cfg.k,
        set.len(),
        &mut Rng::new(1),
    );
    let stats = deepcluster::train_epoch(
        &net,
        &mut opt,
        &set,
        &clustering.labels,
        &order,
        &cfg,
        BATCH,
        &AugmentConfig::default(),
        1,
        dev,
    )?;
    let epoch_s = t0.elapsed().as_secs_f64();
    let extract_rate = set.len() as f64 / extract_s;
    println!(
        "epoch: extract {extract_s:.2} s, PCA + k-means {cluster_s:.2} s, train {:.2} s ({:.0} images/s, loss {:.3} -> {:.3}), total {epoch_s:.2} s",
        stats.seconds,
        stats.images as f64 / stats.seconds,
        stats.loss_start,
        stats.loss_end
    );
    table.push(row(
        "resnet18 eval embedding, batch 512, on the GPU",
        "images/s",
        eval,
        torch["extract_img_per_s"].as_f64(),
    ));
    table.push(row(
        "resnet18 features of 60k images from host memory",
        "images/s",
        extract_rate,
        None,
    ));
    table.push(row(
        "DeepCluster epoch (60k, k 100)",
        "seconds",
        epoch_s,
        None,
    ));
    Ok(json!({
        "step_img_per_s": step,
        "step_f32_convolutions_img_per_s": step_f32,
        "eval_img_per_s": eval,
        "pytorch": torch,
        "epoch": {"images": set.len(), "extract_s": extract_s, "cluster_s": cluster_s,
                  "train_s": stats.seconds, "train_img_per_s": stats.images as f64 / stats.seconds,
                  "total_s": epoch_s, "loss_start": stats.loss_start, "loss_end": stats.loss_end,
                  "non_empty_clusters": clustering.non_empty},
    }))
}
