//! The domain-shift benchmark: the default model's online clustering on the Fashion-MNIST
//! test stream, clean and under each shift of `models::data::Shift` at both severities. The
//! figure is the online NMI and accuracy against the labels (the clusters start from the
//! manifest's centroids, as on a board fresh from the host), and what each shift costs
//! against the clean stream; then the same with statistics adaptation
//! (`models::adapt::StatsAdapter`, training statistics from 10,000 training images), and the
//! share of the lost NMI it recovers. Prints a table and writes `target/bench/shift.json`.
//!
//! `cargo bench -p edge-runtime --bench shift` (`SHIFT_FRAMES` caps the stream; 10,000 by
//! default).

use std::path::{Path, PathBuf};
use std::time::Instant;

use edge_runtime::backend::{embed_images, PrepareOptions, Runtime, TractRuntime};
use edge_runtime::bank::{BankConfig, CaptureMeta, MemoryBank};
use edge_runtime::bundle::ModelBundle;
use edge_runtime::pipeline::{Event, Frame, Pipeline, PipelineConfig};
use edge_runtime::preprocess::Preprocessor;
use models::adapt::{RunningStats, StatsAdapter};
use models::data::{fashion_mnist_dir, load_fashion_mnist, shifted, ImageSet, Shift, Split};
use models::manifest::Precision;
use models::metrics::{clustering_accuracy, normalized_mutual_info};
use serde::Serialize;

#[derive(Debug, Serialize)]
struct Row {
    shift: &'static str,
    severity: u8,
    frames: usize,
    nmi: f64,
    accuracy: f64,
    nmi_lost: f64,
    adapted_nmi: f64,
    adapted_accuracy: f64,
    /// (adapted - shifted) / (clean - shifted).
    recovered: f64,
    seconds: f64,
}

/// Rows of the running statistics, and rows before adapting.
const WINDOW: u64 = 2000;
const WARMUP: u64 = 200;

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fashion-mnist-small-cnn")
}

/// The online clusters of `set` streamed through a fresh pipeline: (NMI, accuracy).
fn stream(bundle: &ModelBundle, set: &ImageSet, adapter: Option<StatsAdapter>) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("a temporary bank");
    let cfg = BankConfig {
        max_entries: set.len().max(1),
        ..Default::default()
    };
    let (bank, _) = MemoryBank::open(dir.path(), cfg).expect("bank");
    let options = PrepareOptions {
        batch: 16,
        threads: 1,
    };
    let pipe_cfg = PipelineConfig {
        thumb_size: Some(0),
        ..Default::default()
    };
    let mut pipe =
        Pipeline::new(bundle, &TractRuntime, &options, bank, pipe_cfg).expect("pipeline");
    pipe.set_adapter(adapter).expect("adapter");
    let frames: Vec<Frame> = (0..set.len())
        .map(|i| Frame {
            meta: CaptureMeta {
                frame_id: i as u64,
                source: "bench".into(),
                ..Default::default()
            },
            pixels: set.image(i).to_vec(),
        })
        .collect();
    let assigned: Vec<u32> = pipe
        .process(&frames, None)
        .expect("stream")
        .iter()
        .filter_map(|e| match e {
            Event::Frame { cluster_id, .. } => Some(*cluster_id),
            _ => None,
        })
        .collect();
    let labels = set.labels.as_deref().expect("labels");
    (
        normalized_mutual_info(labels, &assigned).expect("nmi"),
        clustering_accuracy(labels, &assigned).expect("accuracy"),
    )
}

/// Per-dimension statistics of the raw embeddings of 10,000 training images: what the host
/// would ship beside the model.
fn training_stats(bundle: &ModelBundle) -> RunningStats {
    let pre = Preprocessor::new(bundle.manifest.preprocess.clone());
    let train = load_fashion_mnist(&fashion_mnist_dir(), Split::Train)
        .expect("Fashion-MNIST")
        .take(10_000);
    let options = PrepareOptions {
        batch: 16,
        threads: 1,
    };
    let run = TractRuntime.prepare(bundle, &options).expect("model");
    let emb = embed_images(run.as_ref(), &pre, &train).expect("embeddings");
    let mut stats = RunningStats::new(run.embed_dim(), 0);
    emb.chunks_exact(run.embed_dim())
        .for_each(|row| stats.observe(row));
    stats
}

fn main() {
    let n: usize = std::env::var("SHIFT_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let bundle = ModelBundle::load(&model_dir(), Precision::Int8).expect("default model");
    let set = load_fashion_mnist(&fashion_mnist_dir(), Split::Test)
        .expect("Fashion-MNIST (apt-get install dataset-fashion-mnist)")
        .take(n);
    let train = training_stats(&bundle);
    let adapter = || Some(StatsAdapter::from_training(&train, WINDOW, WARMUP));
    let t0 = Instant::now();
    let (clean_nmi, clean_acc) = stream(&bundle, &set, None);
    let (adapted_nmi, adapted_accuracy) = stream(&bundle, &set, adapter());
    let mut rows = vec![Row {
        shift: "none",
        severity: 0,
        frames: set.len(),
        nmi: clean_nmi,
        accuracy: clean_acc,
        nmi_lost: 0.0,
        adapted_nmi,
        adapted_accuracy,
        recovered: f64::NAN,
        seconds: t0.elapsed().as_secs_f64(),
    }];
    for shift in Shift::ALL {
        for severity in [1u8, 2] {
            let t = Instant::now();
            let shifted_set = shifted(&set, shift, severity, 20_261_206);
            let (nmi, accuracy) = stream(&bundle, &shifted_set, None);
            let (adapted_nmi, adapted_accuracy) = stream(&bundle, &shifted_set, adapter());
            rows.push(Row {
                shift: shift.name(),
                severity,
                frames: set.len(),
                nmi,
                accuracy,
                nmi_lost: clean_nmi - nmi,
                adapted_nmi,
                adapted_accuracy,
                recovered: (adapted_nmi - nmi) / (clean_nmi - nmi),
                seconds: t.elapsed().as_secs_f64(),
            });
        }
    }
    println!(
        "{:<11} {:>8} {:>7} {:>9} {:>9} {:>12} {:>10} {:>8}",
        "shift", "severity", "NMI", "accuracy", "NMI lost", "adapted NMI", "recovered", "seconds"
    );
    for r in &rows {
        println!(
            "{:<11} {:>8} {:>7.4} {:>9.4} {:>9.4} {:>12.4} {:>10.2} {:>8.1}",
            r.shift,
            r.severity,
            r.nmi,
            r.accuracy,
            r.nmi_lost,
            r.adapted_nmi,
            r.recovered,
            r.seconds
        );
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).expect("target/bench");
    let json = serde_json::json!({
        "model": "models/fashion-mnist-small-cnn (int8, tract, 1 thread)",
        "frames": set.len(),
        "rows": rows,
    });
    std::fs::write(
        out.join("shift.json"),
        serde_json::to_vec_pretty(&json).expect("json"),
    )
    .expect("target/bench/shift.json");
    println!("wrote target/bench/shift.json");
}
