//! `edge-runtime run` and `embed` on a folder: bad files skipped and counted with
//! `--skip-bad` (named, and fatal, without it), `--threads 2` embedding as one thread does,
//! a bank bound to its model (refused, or rebound with `--rebind`), frame ids that never
//! repeat.

mod common;

use std::path::Path;
use std::process::Output;

use common::{edge_runtime, model_dir, ok};

/// `n` 28x28 grayscale PNGs (the default model's input), each its own pattern.
fn write_images(dir: &Path, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = image::GrayImage::from_fn(28, 28, |x, y| {
            image::Luma([((x * (i + 1) + y * 7 + i * 13) % 256) as u8])
        });
        img.save(dir.join(format!("{i:03}.png"))).unwrap();
    }
}

#[test]
fn a_folder_with_corrupt_files_stops_by_name_or_skips_and_counts_with_skip_bad() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("captures");
    write_images(&input, 20);
    std::fs::write(input.join("010-torn.jpg"), b"\xff\xd8\xff\xe0 not really").unwrap();
    std::fs::write(input.join("zz-empty.png"), b"").unwrap();
    let run = |bank: &str, extra: &[&str]| {
        edge_runtime()
            .args(["run", "--precision", "fp32", "--batch", "4", "--model"])
            .arg(model_dir())
            .arg("--input")
            .arg(&input)
            .arg("--bank")
            .arg(dir.path().join(bank))
            .arg("--events")
            .arg(dir.path().join(format!("{bank}.jsonl")))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run("strict", &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("010-torn.jpg"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = ok(run("lenient", &["--skip-bad"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("skipped") && err.contains("010-torn.jpg") && err.contains("zz-empty.png"),
        "{err}"
    );
    assert!(
        err.contains("2 unreadable images skipped, 20 read"),
        "{err}"
    );
    // Every good frame reached the events and the bank.
    let events = std::fs::read_to_string(dir.path().join("lenient.jsonl")).unwrap();
    let frames = events.lines().filter(|l| l.contains("\"frame\"")).count();
    assert_eq!(frames, 20, "{events}");
    let out = ok(edge_runtime()
        .args(["bank", "inspect", "--bank"])
        .arg(dir.path().join("lenient"))
        .output()
        .unwrap());
    let inspect = String::from_utf8_lossy(&out.stdout);
    assert!(inspect.contains("20"), "{inspect}");
}

#[test]
fn two_threads_embed_as_one_thread_does() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("images");
    write_images(&input, 9);
    let embed = |threads: &str, batch: &str| -> Vec<u8> {
        let out = dir.path().join(format!("t{threads}-b{batch}.npy"));
        ok(edge_runtime()
            .args(["embed", "--threads", threads, "--batch", batch, "--model"])
            .arg(model_dir())
            .arg("--input")
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap());
        std::fs::read(out).unwrap()
    };
    let one = embed("1", "1");
    assert!(one.len() > 9 * 32 * 4, "{} bytes", one.len());
    for (threads, batch) in [("2", "1"), ("2", "4")] {
        let other = embed(threads, batch);
        assert_eq!(one.len(), other.len());
        // An .npy v1 file: magic, version, a little-endian u16 header length, the header,
        // then the f32s. Equal up to float reassociation across the split.
        let floats = |b: &[u8]| -> Vec<f32> {
            let start = 10 + u16::from_le_bytes([b[8], b[9]]) as usize;
            b[start..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let (a, b) = (floats(&one), floats(&other));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-5,
            "--threads {threads} --batch {batch}: differs by {worst}"
        );
    }
    let out = edge_runtime()
        .args(["embed", "--threads", "0", "--input", "x", "--out", "y"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threads"));
}

#[test]
fn a_gpu_provider_without_the_ort_backend_is_refused() {
    let out = edge_runtime()
        .args([
            "embed",
            "--ep",
            "cuda",
            "--input",
            "fashion-mnist",
            "--out",
            "/dev/null",
            "--model",
        ])
        .arg(model_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--backend ort"), "{err}");
}

fn run_into(bank: &Path, input: &str, precision: &str, limit: &str, events: &Path) -> Output {
    edge_runtime()
        .args([
            "run",
            "--batch",
            "1",
            "--precision",
            precision,
            "--limit",
            limit,
            "--model",
        ])
        .arg(model_dir())
        .args(["--input", input, "--bank"])
        .arg(bank)
        .arg("--events")
        .arg(events)
        .output()
        .unwrap()
}

fn frame_ids(events: &Path) -> Vec<u64> {
    std::fs::read_to_string(events)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "frame")
        .map(|v| v["frame_id"].as_u64().expect("frame_id"))
        .collect()
}

#[test]
fn a_bank_refuses_another_model_and_frame_ids_go_on_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("images");
    write_images(&input, 12);
    let input = input.to_str().unwrap();
    let bank = dir.path().join("bank");
    let (e1, e2, e3) = (
        dir.path().join("1.jsonl"),
        dir.path().join("2.jsonl"),
        dir.path().join("3.jsonl"),
    );
    ok(run_into(&bank, input, "fp32", "12", &e1));
    ok(run_into(&bank, input, "fp32", "12", &e2));
    let (first, second) = (frame_ids(&e1), frame_ids(&e2));
    assert_eq!(first, (0..12).collect::<Vec<u64>>());
    assert_eq!(
        second,
        (12..24).collect::<Vec<u64>>(),
        "ids continue after a restart"
    );

    // The int8 file is another model: refused before anything is stored, naming both.
    let out = run_into(&bank, input, "int8", "12", &e3);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("encoder.fp32.onnx") && err.contains("encoder.int8.onnx"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let inspect = ok(edge_runtime()
        .args(["bank", "inspect", "--bank"])
        .arg(&bank)
        .output()
        .unwrap());
    assert!(
        String::from_utf8_lossy(&inspect.stdout).contains("24"),
        "nothing was added"
    );
}

fn inspect(bank: &Path) -> serde_json::Value {
    let out = ok(edge_runtime()
        .args(["bank", "inspect", "--bank"])
        .arg(bank)
        .output()
        .unwrap());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The bank's embeddings by frame id, through `bank export`.
fn export(bank: &Path, scratch: &Path) -> std::collections::HashMap<u64, Vec<f64>> {
    let out = scratch.join("export.jsonl");
    ok(edge_runtime()
        .args(["bank", "export", "--bank"])
        .arg(bank)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap());
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let emb = v["embedding"].as_array().unwrap();
            (
                v["meta"]["frame_id"].as_u64().unwrap(),
                emb.iter().map(|x| x.as_f64().unwrap()).collect(),
            )
        })
        .collect()
}

#[test]
fn rebind_embeds_the_stored_thumbnails_again_and_keeps_the_old_bank() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("images");
    write_images(&input, 30);
    let input = input.to_str().unwrap();
    let bank = dir.path().join("bank");
    ok(run_into(
        &bank,
        input,
        "fp32",
        "30",
        &dir.path().join("1.jsonl"),
    ));

    let events = dir.path().join("2.jsonl");
    let mut cmd = edge_runtime();
    cmd.args([
        "run",
        "--rebind",
        "--precision",
        "int8",
        "--limit",
        "10",
        "--model",
    ])
    .arg(model_dir())
    .args(["--input", input, "--bank"])
    .arg(&bank)
    .arg("--events")
    .arg(&events);
    let out = ok(cmd.output().unwrap());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rebound") && err.contains("30 entries"),
        "{err}"
    );
    // The old entries, embedded by the int8 model, and the new frames, whose ids go on.
    let now = inspect(&bank);
    assert_eq!(
        (now["entries"].as_u64(), now["seen"].as_u64()),
        (Some(40), Some(40))
    );
    assert_eq!(frame_ids(&events), (30..40).collect::<Vec<u64>>());
    let identity = std::fs::read_to_string(bank.join("identity.json")).unwrap();
    assert!(identity.contains("encoder.int8.onnx"), "{identity}");
    // The fp32 bank is kept whole beside it.
    let kept: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("bank.before-rebind-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(inspect(&kept[0])["entries"].as_u64(), Some(30));
    let old_identity = std::fs::read_to_string(kept[0].join("identity.json")).unwrap();
    assert!(old_identity.contains("encoder.fp32.onnx"), "{old_identity}");
    // The rebound embeddings are what the int8 model gives those images directly (the
    // thumbnails are the model's input, so only the bank's int8 storage differs).
    let direct = dir.path().join("direct");
    ok(run_into(
        &direct,
        input,
        "int8",
        "30",
        &dir.path().join("3.jsonl"),
    ));
    let (rebound, fresh) = (export(&bank, dir.path()), export(&direct, dir.path()));
    for frame in 0..30 {
        let (a, b) = (&rebound[&frame], &fresh[&frame]);
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f64, f64::max);
        assert!(diff < 0.02, "frame {frame}: {diff}");
    }
    // The same model again needs no rebind: nothing moves.
    ok(cmd.output().unwrap());
    assert_eq!(inspect(&bank)["entries"].as_u64(), Some(50));
}

#[test]
fn a_bank_without_thumbnails_is_not_rebound_and_stays_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("images");
    write_images(&input, 8);
    let bank = dir.path().join("bank");
    let run = |precision: &str, extra: &[&str]| {
        edge_runtime()
            .args(["run", "--precision", precision, "--model"])
            .arg(model_dir())
            .arg("--input")
            .arg(&input)
            .arg("--bank")
            .arg(&bank)
            .args(["--events", "/dev/null"])
            .args(extra)
            .output()
            .unwrap()
    };
    ok(run("fp32", &["--thumb-size", "0"]));
    let out = run("int8", &["--rebind"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("8 of the bank's 8 entries have no thumbnail"),
        "{err}"
    );
    assert_eq!(inspect(&bank)["entries"].as_u64(), Some(8));
    let siblings = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(siblings, 2, "only the images and the bank");
}

#[test]
fn frame_ids_never_repeat_over_a_kill_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let bank = dir.path().join("bank");
    let (e1, e2) = (dir.path().join("1.jsonl"), dir.path().join("2.jsonl"));
    let mut child = edge_runtime()
        .args([
            "run",
            "--batch",
            "1",
            "--precision",
            "fp32",
            "--input",
            "fashion-mnist",
            "--model",
        ])
        .arg(model_dir())
        .arg("--bank")
        .arg(&bank)
        .arg("--events")
        .arg(&e1)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Let it store a few hundred frames, then kill -9 mid-stream.
    let t0 = std::time::Instant::now();
    while std::fs::metadata(&e1).map_or(0, |m| m.len()) < 40_000 {
        assert!(t0.elapsed().as_secs() < 60, "the run produced no events");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    ok(run_into(&bank, "fashion-mnist", "fp32", "100", &e2));
    let mut ids = frame_ids(&e1);
    let before = ids.len();
    assert!(before > 50, "{before} frames before the kill");
    ids.extend(frame_ids(&e2));
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        n,
        "a frame id repeated over the kill and the restart"
    );
}
