//! The domain-shift benchmark: the default model's online clustering on the Fashion-MNIST
//! test stream, clean and under each shift of `models::data::Shift` at both severities. The
//! figure is the online NMI and accuracy against the labels (the clusters start from the
//! manifest's centroids, as on a board fresh from the host), and what each shift costs
//! against the clean stream. Prints a table and writes `target/bench/shift.json`.
//!
//! `cargo bench -p edge-runtime --bench shift` (`SHIFT_FRAMES` caps the stream; 10,000 by
//! default).

use std::path::{Path, PathBuf};
use std::time::Instant;

use edge_runtime::backend::{PrepareOptions, TractRuntime};
use edge_runtime::bank::{BankConfig, CaptureMeta, MemoryBank};
use edge_runtime::bundle::ModelBundle;
use edge_runtime::pipeline::{Event, Frame, Pipeline, PipelineConfig};
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
    seconds: f64,
}

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fashion-mnist-small-cnn")
}

/// The online clusters of `set` streamed through a fresh pipeline: (NMI, accuracy).
fn stream(bundle: &ModelBundle, set: &ImageSet) -> (f64, f64) {
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

fn main() {
    let n: usize = std::env::var("SHIFT_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let bundle = ModelBundle::load(&model_dir(), Precision::Int8).expect("default model");
    let set = load_fashion_mnist(&fashion_mnist_dir(), Split::Test)
        .expect("Fashion-MNIST (apt-get install dataset-fashion-mnist)")
        .take(n);
    let t0 = Instant::now();
    let (clean_nmi, clean_acc) = stream(&bundle, &set);
    let mut rows = vec![Row {
        shift: "none",
        severity: 0,
        frames: set.len(),
        nmi: clean_nmi,
        accuracy: clean_acc,
        nmi_lost: 0.0,
        seconds: t0.elapsed().as_secs_f64(),
    }];
    for shift in Shift::ALL {
        for severity in [1u8, 2] {
            let t = Instant::now();
            let shifted_set = shifted(&set, shift, severity, 20_261_206);
            let (nmi, accuracy) = stream(&bundle, &shifted_set);
            rows.push(Row {
                shift: shift.name(),
                severity,
                frames: set.len(),
                nmi,
                accuracy,
                nmi_lost: clean_nmi - nmi,
                seconds: t.elapsed().as_secs_f64(),
            });
        }
    }
    println!(
        "{:<11} {:>8} {:>7} {:>9} {:>9} {:>8}",
        "shift", "severity", "NMI", "accuracy", "NMI lost", "seconds"
    );
    for r in &rows {
        println!(
            "{:<11} {:>8} {:>7.4} {:>9.4} {:>9.4} {:>8.1}",
            r.shift, r.severity, r.nmi, r.accuracy, r.nmi_lost, r.seconds
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
