//! `cargo bench -p edge-runtime --bench edge` (or `./scripts/bench-edge`, which also runs the
//! Python onnxruntime reference side by side): inference latency and throughput of the default
//! model, online clustering update time, and the peak RSS of a 100k-entry int8 bank.
//! Prints a table and writes `target/bench/edge.json`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use edge_runtime::backend::{PrepareOptions, Runtime, TractRuntime};
use edge_runtime::bank::{BankConfig, CaptureMeta, EmbeddingFormat, MemoryBank};
use edge_runtime::bundle::ModelBundle;
use edge_runtime::preprocess::Preprocessor;
use models::cluster::{OnlineKMeans, OnlineKMeansParams};
use models::manifest::Precision;
use models::rng::Rng;
use serde_json::{json, Value};

const RSS_CHILD: &str = "EDGE_BENCH_RSS_CHILD";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

fn main() {
    if std::env::var_os(RSS_CHILD).is_some() {
        return rss_child();
    }
    let model = workspace().join("models/fashion-mnist-small-cnn");
    let mut rows = Vec::new();
    println!("| backend | precision | batch | threads | p50 ms | p99 ms | frames/s |");
    println!("|---|---|---|---|---|---|---|");
    for precision in [Precision::Fp32, Precision::Int8] {
        for batch in [1, 16] {
            for threads in [1, 2] {
                rows.push(backend_row(
                    &TractRuntime,
                    "tract",
                    &model,
                    precision,
                    batch,
                    threads,
                ));
            }
        }
    }
    // The same loop through the Rust `ort` backend (feature `ort`, ORT_DYLIB_PATH): onnxruntime
    // without Python in between.
    #[cfg(feature = "ort")]
    match edge_runtime::backend::OrtRuntime::from_env() {
        Ok(ort) => {
            for precision in [Precision::Fp32, Precision::Int8] {
                for batch in [1, 16] {
                    for threads in [1, 2] {
                        rows.push(backend_row(
                            &ort,
                            "ort (Rust)",
                            &model,
                            precision,
                            batch,
                            threads,
                        ));
                    }
                }
            }
        }
        Err(e) => println!("(no Rust ort rows: {e})"),
    }
    if let Some(python) = std::env::var_os("PYTHON") {
        let out = Command::new(python)
            .arg(workspace().join("edge-runtime/benches/reference/ort_bench.py"))
            .arg(&model)
            .arg(models::data::fashion_mnist_dir())
            .output()
            .expect("run the onnxruntime reference");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ort: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        for r in ort {
            print_row(&r);
            rows.push(r);
        }
    } else {
        println!("(PYTHON not set: no onnxruntime reference; ./scripts/bench-edge sets it)");
    }

    let mut updates = serde_json::Map::new();
    println!("\n| online k-means update, d = 128 | us per frame |\n|---|---|");
    for k in [10, 100, 1000] {
        let us = cluster_update_us(k, 128);
        println!("| k = {k} | {us:.2} |");
        updates.insert(k.to_string(), json!(us));
    }

    println!(
        "\n| per-frame pipeline latency (int8, tract, 1 thread, batch 1, 4,000 frames) | p50 ms | p99 ms | max ms | rounds kept | adapter step ms | roll + smoothing search s |\n|---|---|---|---|---|---|---|"
    );
    let mut adaptation = Vec::new();
    for mode in ["off", "stats", "stats+train", "stats+train (inline)"] {
        let r = pipeline_latency(&model, mode);
        println!(
            "| {mode} | {:.3} | {:.3} | {:.3} | {} | {:.3} | {:.2} |",
            r["p50_ms"].as_f64().unwrap(),
            r["p99_ms"].as_f64().unwrap(),
            r["max_ms"].as_f64().unwrap(),
            r["rounds"].as_str().unwrap_or_default(),
            r["step_ms"].as_f64().unwrap_or(f64::NAN),
            r["input_search_s"].as_f64().unwrap_or(f64::NAN),
        );
        adaptation.push(r);
    }

    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe).env(RSS_CHILD, "1").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rss: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    println!("\npeak RSS with a bank of 100,000 int8 entries (d = 128): {rss:.1} MB");

    let report = json!({
        "inference": rows,
        "cluster_update_us": updates,
        "rss_mb_100k": rss,
        "pipeline_latency": adaptation,
        "threads_available": std::thread::available_parallelism().map_or(1, |n| n.get()),
    });
    let dir = workspace().join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("edge.json"),
        serde_json::to_vec_pretty(&report).unwrap(),
    )
    .unwrap();
    println!("wrote target/bench/edge.json");
}

/// Per-frame latency of `Pipeline::process` on single frames, under an adaptation mode:
/// `off`, `stats`, `stats+train` (rounds on the low-priority thread) or `stats+train (inline)`
/// (rounds inside the frame that triggers them, for comparison).
fn pipeline_latency(model: &Path, mode: &str) -> Value {
    use edge_runtime::adapt::{AdaptConfig, TrainConfig};
    use edge_runtime::pipeline::{Event, Frame, Pipeline, PipelineConfig};
    let bundle = ModelBundle::load(model, Precision::Int8).unwrap();
    let set = models::data::load_fashion_mnist(
        &models::data::fashion_mnist_dir(),
        models::data::Split::Test,
    )
    .unwrap()
    .take(4000);
    let dir = tempfile::tempdir().unwrap();
    let (bank, _) = MemoryBank::open(dir.path(), BankConfig::default()).unwrap();
    let options = PrepareOptions {
        batch: 1,
        threads: 1,
    };
    let cfg = PipelineConfig {
        recluster_every: 0,
        ..Default::default()
    };
    let mut pipe = Pipeline::new(&bundle, &TractRuntime, &options, bank, cfg).unwrap();
    if mode != "off" {
        let train = mode.contains("train").then(|| TrainConfig {
            background: !mode.contains("inline"),
            ..Default::default()
        });
        let adapt = AdaptConfig {
            train,
            roll_in_background: !mode.contains("inline"),
            ..Default::default()
        };
        pipe.enable_adaptation(&bundle, &TractRuntime, &options, adapt)
            .unwrap();
    }
    let mut times = Vec::with_capacity(set.len());
    let mut steps = Vec::new();
    let mut kept = 0;
    let mut search_s = None;
    let mut on_event = |e: &Event| match e {
        Event::Adapt {
            step_ms, kept: k, ..
        } => {
            steps.push(*step_ms);
            kept += *k as u32;
        }
        Event::Roll { seconds, .. } => search_s = Some(*seconds),
        _ => {}
    };
    for i in 0..set.len() {
        let frame = Frame {
            meta: CaptureMeta {
                frame_id: i as u64,
                source: "bench".into(),
                ..Default::default()
            },
            pixels: set.image(i).to_vec(),
        };
        let t = Instant::now();
        let events = pipe.process(std::slice::from_ref(&frame), None).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
        events.iter().for_each(&mut on_event);
    }
    pipe.finish_adaptation()
        .unwrap()
        .iter()
        .for_each(&mut on_event);
    times.sort_by(f64::total_cmp);
    let step_ms = (!steps.is_empty()).then(|| steps.iter().sum::<f64>() / steps.len() as f64);
    json!({
        "mode": mode,
        "frames": times.len(),
        "p50_ms": times[times.len() / 2],
        "p99_ms": times[times.len() * 99 / 100],
        "max_ms": times[times.len() - 1],
        "rounds": format!("{kept}/{}", steps.len()),
        "step_ms": step_ms,
        "input_search_s": search_s,
    })
}

fn print_row(r: &Value) {
    println!(
        "| {} | {} | {} | {} | {:.3} | {:.3} | {:.0} |",
        r["backend"].as_str().unwrap(),
        r["precision"].as_str().unwrap(),
        r["batch"],
        r["threads"],
        r["p50_ms"].as_f64().unwrap(),
        r["p99_ms"].as_f64().unwrap(),
        r["fps"].as_f64().unwrap()
    );
}

/// Latency of one run (a batch), over at least 2 s or 200 runs after a warm-up.
fn backend_row(
    runtime: &dyn Runtime,
    label: &str,
    model: &Path,
    precision: Precision,
    batch: usize,
    threads: usize,
) -> Value {
    let bundle = ModelBundle::load(model, precision).unwrap();
    let pre = Preprocessor::new(bundle.manifest.preprocess.clone());
    let set = pre
        .read_source(models::data::fashion_mnist_dir().to_str().unwrap(), false)
        .unwrap()
        .take(1024);
    let options = PrepareOptions { batch, threads };
    let run = runtime.prepare(&bundle, &options).unwrap();
    let inputs: Vec<Vec<f32>> = (0..set.len() / batch)
        .map(|i| pre.tensor(&set, i * batch..(i + 1) * batch).unwrap())
        .collect();
    for x in inputs.iter().take(20) {
        run.run(x, batch).unwrap();
    }
    let mut times = Vec::new();
    let t0 = Instant::now();
    while times.len() < 200 || t0.elapsed().as_secs_f64() < 2.0 {
        let x = &inputs[times.len() % inputs.len()];
        let t = Instant::now();
        run.run(x, batch).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if times.len() >= 20_000 {
            break;
        }
    }
    let total: f64 = times.iter().sum();
    times.sort_by(f64::total_cmp);
    let row = json!({
        "backend": label,
        "precision": format!("{precision:?}").to_lowercase(),
        "batch": batch,
        "threads": threads,
        "p50_ms": times[times.len() / 2],
        "p99_ms": times[times.len() * 99 / 100],
        "fps": (times.len() * batch) as f64 / (total / 1e3),
    });
    print_row(&row);
    row
}

fn unit(rng: &mut Rng, d: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..d).map(|_| rng.next_f64() as f32 - 0.5).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// Mean time of `OnlineKMeans::update` with k clusters, on random unit vectors.
fn cluster_update_us(k: usize, d: usize) -> f64 {
    let mut rng = Rng::new(k as u64);
    let centroids: Vec<f32> = (0..k).flat_map(|_| unit(&mut rng, d)).collect();
    let params = OnlineKMeansParams {
        max_clusters: k,
        ..Default::default()
    };
    let mut m = OnlineKMeans::with_centroids(d, params, &centroids).unwrap();
    let frames: Vec<Vec<f32>> = (0..4096).map(|_| unit(&mut rng, d)).collect();
    let n = 50_000;
    for f in frames.iter().take(1000) {
        m.update(f).unwrap();
    }
    let t = Instant::now();
    for i in 0..n {
        std::hint::black_box(m.update(&frames[i % frames.len()]).unwrap());
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// In a fresh process: fill a bank with 100k int8 entries, print the peak RSS in MB.
fn rss_child() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BankConfig {
        max_entries: 100_000,
        format: EmbeddingFormat::I8,
        ..Default::default()
    };
    let (mut bank, _) = MemoryBank::open(dir.path(), cfg).unwrap();
    let mut rng = Rng::new(3);
    for i in 0..100_000u64 {
        let e = unit(&mut rng, 128);
        let meta = CaptureMeta {
            timestamp_ms: i,
            source: "cam0".into(),
            frame_id: i,
            detail: None,
        };
        bank.insert(&e, meta, (i % 100) as u32).unwrap();
    }
    assert_eq!(bank.len(), 100_000);
    let mb = edge_runtime::memory::proc_status_mb("VmHWM").expect("Linux /proc");
    println!("{mb}");
}
