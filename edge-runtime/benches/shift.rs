//! The domain-shift benchmark: the default model's online clustering on the Fashion-MNIST
//! test stream, clean and under each shift of `models::data::Shift` at both severities. The
//! figure is the online NMI and accuracy against the labels (the clusters start from the
//! manifest's centroids, as on a board fresh from the host), and what each shift costs
//! against the clean stream; then the same streams under each adaptation mode
//! (`edge_runtime::adapt`: statistics per dimension or whitened, with or without the trained
//! layer; training statistics from the model's `embedding-stats.json`), and the share of the
//! lost NMI each recovers. Prints a table and writes `target/bench/shift.json`.
//!
//! `cargo bench -p edge-runtime --bench shift`. `SHIFT_FRAMES` caps the stream (10,000 by
//! default); `SHIFT_MODES` picks modes (comma-separated: stats, whiten, stats+train,
//! whiten+train, train; `+roll` in any of them adds the camera-roll search, `+smooth` the
//! input-smoothing search, `+deblock` the blockiness measurement; `DEBLOCK_MIN_RATIO`
//! overrides its threshold); `SHIFT_ONLY`
//! picks shifts by name; `SHIFT_ORDER_SEED` streams the frames in another (seeded) order;
//! `SHIFT_MODEL` runs another exported Fashion-MNIST model.

use std::path::{Path, PathBuf};
use std::time::Instant;

use edge_runtime::adapt::{AdaptConfig, TrainConfig};
use edge_runtime::backend::{PrepareOptions, TractRuntime};
use edge_runtime::bank::{BankConfig, CaptureMeta, MemoryBank};
use edge_runtime::bundle::ModelBundle;
use edge_runtime::pipeline::{Event, Frame, Pipeline, PipelineConfig};
use models::adapt::deblock::DeblockParams;
use models::adapt::roll::RollParams;
use models::adapt::smoothing::SmoothingParams;
use models::adapt::RecentringKind;
use models::data::{fashion_mnist_dir, load_fashion_mnist, shifted, ImageSet, Shift, Split};
use models::manifest::Precision;
use models::metrics::{clustering_accuracy, normalized_mutual_info};
use serde::Serialize;

#[derive(Debug, Serialize)]
struct Row {
    shift: &'static str,
    severity: u8,
    mode: String,
    frames: usize,
    nmi: f64,
    accuracy: f64,
    /// NMI lost against the clean stream without adaptation.
    nmi_lost: f64,
    /// (NMI - unadapted NMI of this stream) / (clean NMI - unadapted NMI of this stream).
    recovered: f64,
    /// Training rounds whose layer was kept, and all rounds.
    kept: u64,
    rounds: u64,
    /// The camera roll the search found (degrees), in `+roll` modes.
    roll_degrees: Option<f32>,
    /// The input smoothing the search found (pixels), in `+smooth` modes.
    smoothing_sigma: Option<f32>,
    /// The blockiness measured and the grid deblocked (0: none), in `+deblock` modes.
    blockiness: Option<f64>,
    deblock_block: Option<u32>,
    seconds: f64,
}

/// The committed default model, or the exported model directory `SHIFT_MODEL` names (one
/// trained on Fashion-MNIST, with its `embedding-stats.json`).
fn model_dir() -> PathBuf {
    match std::env::var_os("SHIFT_MODEL") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fashion-mnist-small-cnn"),
    }
}

/// An adaptation mode by name; `None` for no adaptation.
fn mode_config(mode: &str) -> Option<AdaptConfig> {
    // `+roll`, `+smooth` or `+deblock` anywhere: the camera roll, the input smoothing or the
    // blockiness searched as well.
    let roll = mode.split('+').any(|t| t == "roll");
    let smoothing = mode.split('+').any(|t| t == "smooth");
    let deblock = mode.split('+').any(|t| t == "deblock");
    let mode = mode
        .replace("+roll", "")
        .replace("+smooth", "")
        .replace("+deblock", "");
    let mode = mode.as_str();
    // `input` alone: the input's statistics only; `embedding-` before a mode: that mode
    // without them (the embedding adapted alone).
    if mode == "input" {
        return Some(AdaptConfig {
            recentring: None,
            deblock: None,
            roll: None,
            smoothing: None,
            ..Default::default()
        });
    }
    let (input, mode) = match mode.strip_prefix("embedding-") {
        Some(rest) => (false, rest),
        None => (true, mode),
    };
    let recentring = match mode.split('+').next() {
        Some("stats") => Some(RecentringKind::Diagonal),
        Some("whiten") => Some(RecentringKind::Full),
        Some("train") => None,
        _ => return None,
    };
    let train = mode.ends_with("train").then(|| {
        let mut t = TrainConfig {
            background: false,
            ..Default::default()
        };
        // Overrides for exploring the settings.
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = var("ADAPT_LR") {
            t.objective.learning_rate = v as f32;
        }
        if let Some(v) = var("ADAPT_IDENTITY") {
            t.objective.identity_weight = v as f32;
        }
        if let Some(v) = var("ADAPT_STEPS") {
            t.steps = v as usize;
        }
        if let Some(v) = var("ADAPT_EVERY") {
            t.every = v as u64;
        }
        if let Some(v) = var("ADAPT_TOLERANCE") {
            t.tolerance = v;
        }
        t
    });
    Some(AdaptConfig {
        recentring,
        input,
        train,
        roll: roll.then(RollParams::default),
        smoothing: smoothing.then(SmoothingParams::default),
        deblock: deblock.then(|| DeblockParams {
            min_ratio: std::env::var("DEBLOCK_MIN_RATIO")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(DeblockParams::default().min_ratio),
            ..Default::default()
        }),
        // Inline, so that the stream's figures repeat.
        roll_in_background: false,
        ..Default::default()
    })
}

struct Streamed {
    nmi: f64,
    accuracy: f64,
    kept: u64,
    rounds: u64,
    roll: Option<f32>,
    smoothing: Option<f32>,
    deblock: Option<(f64, u32)>,
}

/// The online clusters of `set` streamed through a fresh pipeline.
fn stream(bundle: &ModelBundle, set: &ImageSet, adapt: Option<AdaptConfig>) -> Streamed {
    let dir = tempfile::tempdir().expect("a temporary bank");
    let cfg = BankConfig {
        max_entries: set.len().max(1),
        max_bytes: 256 << 20,
        ..Default::default()
    };
    let (bank, _) = MemoryBank::open(dir.path(), cfg).expect("bank");
    let options = PrepareOptions {
        batch: 16,
        threads: 1,
    };
    let training = adapt.as_ref().is_some_and(|a| a.train.is_some());
    let pipe_cfg = PipelineConfig {
        // Thumbnails only where the adapter trains on them.
        thumb_size: if training { None } else { Some(0) },
        ..Default::default()
    };
    let mut pipe =
        Pipeline::new(bundle, &TractRuntime, &options, bank, pipe_cfg).expect("pipeline");
    if let Some(a) = adapt {
        pipe.enable_adaptation(bundle, &TractRuntime, &options, a)
            .expect("adaptation");
    }
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
    let events = pipe.process(&frames, None).expect("stream");
    let assigned: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::Frame { cluster_id, .. } => Some(*cluster_id),
            _ => None,
        })
        .collect();
    let (mut kept, mut rounds, mut roll, mut smoothing, mut deblock) = (0, 0, None, None, None);
    for e in &events {
        match e {
            Event::Adapt { kept: k, .. } => {
                rounds += 1;
                kept += *k as u64;
            }
            Event::Roll { degrees, .. } => roll = Some(*degrees),
            Event::Smoothing { sigma, .. } => smoothing = Some(*sigma),
            Event::Deblock {
                block, blockiness, ..
            } => deblock = Some((*blockiness, *block)),
            _ => {}
        }
    }
    let labels = set.labels.as_deref().expect("labels");
    Streamed {
        nmi: normalized_mutual_info(labels, &assigned).expect("nmi"),
        accuracy: clustering_accuracy(labels, &assigned).expect("accuracy"),
        kept,
        rounds,
        roll,
        smoothing,
        deblock,
    }
}

fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
}

fn main() {
    let n: usize = std::env::var("SHIFT_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let modes = env_list("SHIFT_MODES").unwrap_or_else(|| {
        [
            "input",
            "embedding-stats",
            "stats",
            "whiten",
            "stats+roll",
            "stats+roll+smooth",
            "stats+deblock+roll+smooth",
            "stats+deblock+roll+smooth+train",
        ]
        .map(String::from)
        .to_vec()
    });
    let only = env_list("SHIFT_ONLY");
    let bundle = ModelBundle::load(&model_dir(), Precision::Int8)
        .unwrap_or_else(|e| panic!("{}: {e}", model_dir().display()));
    let set = load_fashion_mnist(&fashion_mnist_dir(), Split::Test)
        .expect("Fashion-MNIST (apt-get install dataset-fashion-mnist)")
        .take(n);
    // Another order of the same frames: how much of a figure is the stream's order.
    let set = match std::env::var("SHIFT_ORDER_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(seed) => set.select(&models::rng::Rng::new(seed).sample_indices(set.len(), set.len())),
        None => set,
    };
    let mut cases: Vec<(&'static str, u8, ImageSet)> = vec![("none", 0, set.clone())];
    for shift in Shift::ALL {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|s| s == shift.name()))
        {
            continue;
        }
        for severity in [1u8, 2] {
            cases.push((
                shift.name(),
                severity,
                shifted(&set, shift, severity, 20_261_206),
            ));
        }
    }
    let mut rows = Vec::new();
    let mut clean_nmi = f64::NAN;
    for (name, severity, case) in &cases {
        let t = Instant::now();
        let base = stream(&bundle, case, None);
        if *name == "none" {
            clean_nmi = base.nmi;
        }
        let row = |mode: &str, s: &Streamed, t: Instant| Row {
            shift: name,
            severity: *severity,
            mode: mode.to_string(),
            frames: case.len(),
            nmi: s.nmi,
            accuracy: s.accuracy,
            nmi_lost: clean_nmi - s.nmi,
            recovered: (s.nmi - base.nmi) / (clean_nmi - base.nmi),
            kept: s.kept,
            rounds: s.rounds,
            roll_degrees: s.roll,
            smoothing_sigma: s.smoothing,
            blockiness: s.deblock.map(|d| d.0),
            deblock_block: s.deblock.map(|d| d.1),
            seconds: t.elapsed().as_secs_f64(),
        };
        rows.push(row("off", &base, t));
        for mode in &modes {
            let t = Instant::now();
            let s = stream(&bundle, case, mode_config(mode));
            rows.push(row(mode, &s, t));
        }
    }
    println!(
        "{:<11} {:>3} {:<24} {:>7} {:>9} {:>9} {:>10} {:>7} {:>6} {:>6} {:>10} {:>8}",
        "shift",
        "sev",
        "adaptation",
        "NMI",
        "accuracy",
        "NMI lost",
        "recovered",
        "kept",
        "roll",
        "smooth",
        "deblock",
        "seconds"
    );
    for r in &rows {
        println!(
            "{:<11} {:>3} {:<24} {:>7.4} {:>9.4} {:>9.4} {:>10.2} {:>3}/{:<3} {:>6} {:>6} {:>10} {:>8.1}",
            r.shift,
            r.severity,
            r.mode,
            r.nmi,
            r.accuracy,
            r.nmi_lost,
            r.recovered,
            r.kept,
            r.rounds,
            r.roll_degrees.map_or(String::new(), |d| format!("{d:.1}")),
            r.smoothing_sigma
                .map_or(String::new(), |d| format!("{d:.1}")),
            r.blockiness.zip(r.deblock_block).map_or(String::new(), |(b, k)| format!("{b:.2}/{k}")),
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
