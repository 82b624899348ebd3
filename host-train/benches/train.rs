//! `cargo bench -p host-train --bench train`: images/s of one DeepCluster training step of
//! `small-cnn` (forward, backward, SGD with momentum) at batch 256 on 1x28x28 inputs, side by
//! side with the same network in PyTorch on the CPU with the same number of threads.
//!
//! Also: strong SimCLR/SwAV views of 3x32x32 images per second, and a SwAV step (small-cnn, two
//! large + two small crops, batch 128) with the share of it spent making the views, which must
//! not become the bottleneck. Likewise a figure-pairs step (small-cnn-in, batch 128 pairs of
//! generated 3x32x32 figures) and its share spent rendering the pairs.
//!
//! Environment: `THREADS` (default 2), `PYTHON` (needs torch; default `python3`).
//! Writes `target/bench/train.json`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{linear, Module, Optimizer, VarBuilder, VarMap};
use host_train::augment::AugmentConfig;
use host_train::dataset::{Normalization, TrainSet};
use host_train::encoders::{Encoder, SmallCnn, SmallCnnConfig, SmallCnnNorm};
use host_train::methods::figure_pairs::{nt_xent, pair_batch, projection_head};
use host_train::methods::npid::l2_normalize;
use host_train::methods::swav::{sinkhorn, swapped_prediction_loss};
use host_train::ops::{instance_norm, instance_norm_relu};
use host_train::optim::{SgdMomentum, SgdParams};
use models::data::{render_scenes, ImageSet, SceneParams};
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
    let step = || -> BenchResult<()> {
        let logits = head.forward(&net.forward_t(&x, true)?)?;
        opt.backward_step(&host_train::ops::cross_entropy(&logits, &y)?)?;
        Ok(())
    };
    Ok(BATCH as f64 * best_rate(step)?)
}

/// Best of `WINDOWS` windows of `STEPS` calls of `f`, in calls per second.
fn best_rate(mut f: impl FnMut() -> BenchResult<()>) -> BenchResult<f64> {
    for _ in 0..WARMUP {
        f()?;
    }
    let mut best = 0f64;
    for _ in 0..WINDOWS {
        let t0 = Instant::now();
        for _ in 0..STEPS {
            f()?;
        }
        best = best.max(STEPS as f64 / t0.elapsed().as_secs_f64());
    }
    Ok(best)
}

const SWAV_BATCH: usize = 128;

/// `images` with their own normalisation.
fn normalized(images: ImageSet) -> BenchResult<TrainSet> {
    let norm = Normalization::measure(&images);
    Ok(TrainSet::new(images, norm)?)
}

/// (strong views per second, SwAV images per second, the step's share spent on views).
fn ours_swav() -> BenchResult<(f64, f64, f64)> {
    let dev = Device::Cpu;
    let params = SceneParams {
        size: 32,
        ..Default::default()
    };
    let (pixels, labels) = render_scenes(&params, SWAV_BATCH / 6 + 1, 1);
    let images = ImageSet {
        pixels,
        channels: 3,
        height: 32,
        width: 32,
        labels: Some(labels),
        ..Default::default()
    };
    let set = normalized(images)?;
    let idx: Vec<usize> = (0..SWAV_BATCH).collect();
    let (strong, small) = (AugmentConfig::strong(), AugmentConfig::small_crop());
    let mut seed = 0u64;
    let views_per_s = SWAV_BATCH as f64
        * best_rate(|| {
            seed += 1;
            set.batch(&idx, &strong, seed, &dev)?;
            Ok(())
        })?;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let cfg = SmallCnnConfig {
        in_channels: 3,
        ..Default::default()
    };
    let net = SmallCnn::new(cfg, vb.pp("encoder"))?;
    let protos = vb.get_with_hints(
        (60, net.embed_dim()),
        "prototypes",
        candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        },
    )?;
    let mut opt = SgdMomentum::new(vm.all_vars(), SgdParams::default())?;
    let mut view_seconds = 0f64;
    let mut step_seconds = 0f64;
    let steps_per_s = best_rate(|| {
        let t0 = Instant::now();
        seed += 1;
        let views = (0..4)
            .map(|v| {
                set.batch(
                    &idx,
                    if v < 2 { &strong } else { &small },
                    seed ^ (v << 40),
                    &dev,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        view_seconds += t0.elapsed().as_secs_f64();
        let z = l2_normalize(&net.forward_t(&Tensor::cat(&views, 0)?, true)?)?;
        let c = l2_normalize(&protos)?;
        let codes = [0, 1].map(|v| -> BenchResult<Tensor> {
            let s: Vec<f32> = z
                .narrow(0, v * SWAV_BATCH, SWAV_BATCH)?
                .matmul(&c.t()?)?
                .flatten_all()?
                .to_vec1()?;
            Ok(Tensor::from_vec(
                sinkhorn(&s, 60, 0.05, 3),
                (SWAV_BATCH, 60),
                &dev,
            )?)
        });
        let [a, b] = codes;
        opt.backward_step(&swapped_prediction_loss(&z, &c, &[a?, b?], 4, 0.1)?)?;
        step_seconds += t0.elapsed().as_secs_f64();
        Ok(())
    })?;
    Ok((
        views_per_s,
        steps_per_s * SWAV_BATCH as f64,
        view_seconds / step_seconds,
    ))
}

/// (figure pairs rendered per second, pairs trained per second, the step's share spent
/// rendering).
fn ours_figure_pairs() -> BenchResult<(f64, f64, f64)> {
    let dev = Device::Cpu;
    // Only the size, channels and normalisation of this set are used.
    let images = ImageSet {
        pixels: vec![128; 3 * 32 * 32],
        channels: 3,
        height: 32,
        width: 32,
        ..Default::default()
    };
    let set = normalized(images)?;
    let mut seed = 0u64;
    let pairs_per_s = SWAV_BATCH as f64
        * best_rate(|| {
            seed += 1;
            pair_batch(&set, SWAV_BATCH, seed, &dev)?;
            Ok(())
        })?;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let cfg = SmallCnnConfig {
        in_channels: 3,
        norm: SmallCnnNorm::Instance,
        ..Default::default()
    };
    let net = SmallCnn::new(cfg, vb.pp("encoder"))?;
    let head = projection_head(&vm, net.embed_dim(), 1, &dev)?;
    let mut opt = SgdMomentum::new(vm.all_vars(), SgdParams::default())?;
    let (mut render_seconds, mut step_seconds) = (0f64, 0f64);
    let steps_per_s = best_rate(|| {
        let t0 = Instant::now();
        seed += 1;
        let x = pair_batch(&set, SWAV_BATCH, seed, &dev)?;
        render_seconds += t0.elapsed().as_secs_f64();
        let z = l2_normalize(&head.forward_t(&net.forward_t(&x, true)?, true)?)?;
        opt.backward_step(&nt_xent(&z, 0.2)?)?;
        step_seconds += t0.elapsed().as_secs_f64();
        Ok(())
    })?;
    Ok((
        pairs_per_s,
        steps_per_s * SWAV_BATCH as f64,
        render_seconds / step_seconds,
    ))
}

/// InstanceNorm + ReLU forward and backward on (256, 32, 16, 16), the first block of
/// small-cnn-in on a batch of 128 pairs: (fused op, candle ops) passes per second.
fn instance_norm_layer() -> BenchResult<(f64, f64)> {
    let dev = Device::Cpu;
    let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (256, 32, 16, 16), &dev)?)?;
    let gamma = candle_core::Var::from_tensor(&Tensor::ones(32, DType::F32, &dev)?)?;
    let beta = candle_core::Var::from_tensor(&Tensor::zeros(32, DType::F32, &dev)?)?;
    let (x, g, b) = (x.as_tensor(), gamma.as_tensor(), beta.as_tensor());
    let fused = best_rate(|| {
        instance_norm_relu(x, g, b, 1e-5)?.sum_all()?.backward()?;
        Ok(())
    })?;
    let ops = best_rate(|| {
        instance_norm(x, g, b, 1e-5)?
            .relu()?
            .sum_all()?
            .backward()?;
        Ok(())
    })?;
    Ok((fused, ops))
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
    let (views_per_s, swav_img_per_s, view_share) = pool.install(ours_swav)?;
    println!(
        "\nSwAV on 3x32x32 scenes, small-cnn, 2 + 2 crops, batch {SWAV_BATCH}, {threads} threads"
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!("| strong views made | {views_per_s:.0} views/s |");
    println!(
        "| SwAV training step | {swav_img_per_s:.0} images/s ({:.0} crops/s) |",
        4.0 * swav_img_per_s
    );
    println!(
        "| share of the step spent making views | {:.1}% |",
        100.0 * view_share
    );
    let (pairs_per_s, pair_steps_per_s, render_share) = pool.install(ours_figure_pairs)?;
    println!(
        "\nfigure pairs, small-cnn-in, batch {SWAV_BATCH} pairs of 3x32x32, {threads} threads"
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!("| pairs rendered | {pairs_per_s:.0} pairs/s |");
    println!("| figure-pairs training step | {pair_steps_per_s:.0} pairs/s |");
    println!(
        "| share of the step spent rendering | {:.1}% |",
        100.0 * render_share
    );
    let (in_fused, in_ops) = pool.install(instance_norm_layer)?;
    println!(
        "| InstanceNorm + ReLU, forward and backward, (256, 32, 16, 16) | fused {in_fused:.0}/s, candle ops {in_ops:.0}/s: {:.1}x |",
        in_fused / in_ops
    );
    let report = json!({
        "figure_pairs_rendered_per_s": pairs_per_s,
        "figure_pairs_trained_per_s": pair_steps_per_s,
        "figure_pairs_render_share": render_share,
        "instance_norm_fused_per_s": in_fused, "instance_norm_candle_ops_per_s": in_ops,
        "ours_img_per_s": ours, "pytorch_img_per_s": theirs, "threads": threads, "batch": BATCH,
        "strong_views_per_s": views_per_s, "swav_img_per_s": swav_img_per_s,
        "swav_view_share": view_share,
        "ratio": ours / theirs, "pytorch_version": torch["torch"],
        "steps_per_window": STEPS, "windows": WINDOWS,
    });
    std::fs::write(
        out_dir.join("train.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    Ok(())
}
