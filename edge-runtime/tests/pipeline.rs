//! The streaming pipeline on the committed default model and real Fashion-MNIST frames:
//! stable ids through re-clustering and restarts, bad frames refused, the CLI end to end.

use std::path::{Path, PathBuf};
use std::process::Command;

use edge_runtime::backend::{PrepareOptions, TractRuntime};
use edge_runtime::bank::{BankConfig, CaptureMeta, MemoryBank};
use edge_runtime::bundle::ModelBundle;
use edge_runtime::pipeline::{Event, Frame, Pipeline, PipelineConfig};
use edge_runtime::preprocess::Preprocessor;
use edge_runtime::EdgeError;
use models::data::{fashion_mnist_dir, load_fashion_mnist, Split};
use models::manifest::Precision;

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fashion-mnist-small-cnn")
}

fn frames(n: usize) -> Vec<Frame> {
    let set = load_fashion_mnist(&fashion_mnist_dir(), Split::Test).unwrap();
    (0..n)
        .map(|i| Frame {
            meta: CaptureMeta {
                frame_id: i as u64,
                source: "test".into(),
                ..Default::default()
            },
            pixels: set.image(i).to_vec(),
        })
        .collect()
}

fn pipeline(bank_dir: &Path, recluster_every: u64) -> Pipeline {
    let bundle = ModelBundle::load(&model_dir(), Precision::Int8).unwrap();
    let (bank, _) = MemoryBank::open(bank_dir, BankConfig::default()).unwrap();
    let cfg = PipelineConfig {
        recluster_every,
        ..Default::default()
    };
    let options = PrepareOptions {
        batch: 8,
        threads: 1,
    };
    Pipeline::new(&bundle, &TractRuntime, &options, bank, cfg).unwrap()
}

fn cluster_ids(events: &[Event]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Frame { cluster_id, .. } => Some(*cluster_id),
            _ => None,
        })
        .collect()
}

#[test]
fn ids_stay_stable_through_reclustering_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let frames = frames(400);
    let mut p = pipeline(dir.path(), 200);
    let events = p.process(&frames[..300], None).unwrap();
    assert_eq!(cluster_ids(&events).len(), 300);
    assert!(events.iter().any(|e| matches!(e, Event::Recluster { .. })));
    // Seeded from the manifest's 10 centroids: ids 0..10, and every one of them used.
    let ids = cluster_ids(&events);
    assert!(ids.iter().all(|&id| id < 10), "{ids:?}");
    let before: Vec<u32> = frames[300..].iter().map(|f| predict(&p, f)).collect();
    assert_eq!(p.bank().len(), 300);
    drop(p);

    // A restart rebuilds the clusters from the bank, with the same ids.
    let p = pipeline(dir.path(), 0);
    assert_eq!(p.bank().len(), 300);
    let after: Vec<u32> = frames[300..].iter().map(|f| predict(&p, f)).collect();
    let same = before.iter().zip(&after).filter(|(a, b)| a == b).count();
    assert!(
        same >= 90,
        "only {same} of 100 frames kept their cluster id across a restart"
    );
}

fn predict(p: &Pipeline, f: &Frame) -> u32 {
    // Embed one frame the way the pipeline does, then ask the online model without learning.
    let bundle = ModelBundle::load(&model_dir(), Precision::Int8).unwrap();
    let pre = Preprocessor::new(bundle.manifest.preprocess.clone());
    let run =
        edge_runtime::backend::Runtime::prepare(&TractRuntime, &bundle, &PrepareOptions::default())
            .unwrap();
    let mut x = vec![0f32; pre.spec().image_len()];
    pre.spec().normalize_into(&f.pixels, &mut x);
    let mut e = run.run(&x, 1).unwrap();
    models::linalg::l2_normalize_rows(&mut e, run.embed_dim());
    p.online().predict(&e).unwrap().unwrap().0
}

#[test]
fn a_frame_of_the_wrong_size_is_refused_and_the_bank_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = pipeline(dir.path(), 0);
    p.process(&frames(5), None).unwrap();
    let bad = Frame {
        meta: CaptureMeta {
            frame_id: 99,
            source: "cam".into(),
            ..Default::default()
        },
        pixels: vec![0; 100],
    };
    let e = p.process(&[bad], None).unwrap_err();
    assert!(matches!(e, EdgeError::InputShape { .. }), "{e}");
    assert!(e.to_string().contains("frame 99 from cam"), "{e}");
    assert_eq!(p.bank().len(), 5);
}

#[test]
fn cli_run_then_bank_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let bank = dir.path().join("bank");
    let events = dir.path().join("events.jsonl");
    let exe = env!("CARGO_BIN_EXE_edge-runtime");
    let out = Command::new(exe)
        .args([
            "run",
            "--input",
            "fashion-mnist",
            "--limit",
            "64",
            "--model",
        ])
        .arg(model_dir())
        .arg("--bank")
        .arg(&bank)
        .arg("--events")
        .arg(&events)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 64);
    assert_eq!(lines[0]["event"], "frame");
    assert!(lines[10]["cluster_id"].as_u64().unwrap() < 10);
    let out = Command::new(exe)
        .args(["bank", "inspect", "--bank"])
        .arg(&bank)
        .output()
        .unwrap();
    assert!(out.status.success());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["entries"], 64);

    // A missing model names the file.
    let out = Command::new(exe)
        .args([
            "run",
            "--input",
            "fashion-mnist",
            "--model",
            "/nonexistent/model",
            "--bank",
        ])
        .arg(&bank)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model"));
}

#[test]
fn sigterm_stops_the_stream_gracefully_with_the_bank_on_disk() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let bank = dir.path().join("bank");
    let img = dir.path().join("a.png");
    image::GrayImage::from_fn(28, 28, |x, y| image::Luma([((x * 9 + y * 3) % 256) as u8]))
        .save(&img)
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-runtime"))
        .args(["run", "--input", "-", "--model"])
        .arg(model_dir())
        .arg("--bank")
        .arg(&bank)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for _ in 0..3 {
        writeln!(stdin, "{}", img.display()).unwrap();
    }
    writeln!(stdin, "{}/missing.png", dir.path().display()).unwrap();
    stdin.flush().unwrap();
    // Wait for the three frames' events, then SIGTERM with stdin still open.
    let mut events = std::io::BufReader::new(child.stdout.take().unwrap());
    for _ in 0..3 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut events, &mut line).unwrap();
        assert!(line.contains("\"event\":\"frame\""), "{line}");
    }
    // While it runs, nobody else may open its bank.
    let e = MemoryBank::open(&bank, BankConfig::default()).unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    // The signal is seen at the next frame boundary: one more line wakes the reader.
    writeln!(stdin, "{}", img.display()).unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success());
    let snapshots = std::fs::read_dir(&bank)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "bin")
        })
        .count();
    assert!(snapshots >= 1, "a final snapshot is published on shutdown");
    let (b, _) = MemoryBank::open(&bank, BankConfig::default()).unwrap();
    assert!(b.len() >= 3);
}

/// No camera here (containers have no /dev/video*): what is checked is that a device that is
/// missing, or is no camera, gets an error naming it and the bank is left as it was.
#[test]
fn a_camera_input_that_is_no_camera_names_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let bank = dir.path().join("bank");
    let run = |input: &str| {
        Command::new(env!("CARGO_BIN_EXE_edge-runtime"))
            .args(["run", "--input", input, "--model"])
            .arg(model_dir())
            .arg("--bank")
            .arg(&bank)
            .output()
            .unwrap()
    };
    for (device, reason) in [
        ("/dev/video-missing", "cannot open the camera"),
        ("/dev/null", "VIDIOC_QUERYCAP"),
    ] {
        let out = run(&format!("v4l2:{device}"));
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(device), "{err}");
        if cfg!(feature = "v4l2") {
            assert!(err.contains(reason), "{err}");
        } else {
            assert!(err.contains("--features v4l2"), "{err}");
        }
    }
}
