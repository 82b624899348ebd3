//! On-device adaptation on the committed default model and real Fashion-MNIST frames: a
//! rolled-back update changes nothing, a kept one keeps cluster ids and is saved and resumed,
//! the saved adapter belongs to one model, survives `kill -9` mid-save, and can be reset;
//! the camera's roll is found, undone, saved and reset; the CLI's adaptation flags and
//! commands, and their errors.

use std::io::{BufRead, BufReader};
use std::path::Path;

mod common;
use common::{edge_runtime, model_dir, ok};
use std::process::Stdio;

use edge_runtime::adapt::store::{self, AdapterRecord, ADAPTER_FORMAT};
use edge_runtime::adapt::{AdaptConfig, TrainConfig};
use edge_runtime::backend::{PrepareOptions, TractRuntime};
use edge_runtime::bank::{BankConfig, CaptureMeta, MemoryBank};
use edge_runtime::bundle::ModelBundle;
use edge_runtime::pipeline::{Event, Frame, Pipeline, PipelineConfig};
use edge_runtime::{AdapterProblem, EdgeError};
use models::adapt::{LinearAdapter, RecentringKind};
use models::data::{fashion_mnist_dir, load_fashion_mnist, shifted, Shift, Split};
use models::manifest::Precision;
use models::rng::Rng;

fn bundle() -> ModelBundle {
    ModelBundle::load(&model_dir(), Precision::Int8).unwrap()
}

/// The first `n` test images, inverted (a shift the adapter has something to learn from).
fn frames(n: usize) -> Vec<Frame> {
    shifted_frames(Shift::Invert, n)
}

/// The first `n` test images under `shift` at its higher severity.
fn shifted_frames(shift: Shift, n: usize) -> Vec<Frame> {
    frames_of(Some(shift), n)
}

/// The first `n` test images, under `shift` at its higher severity if any.
fn frames_of(shift: Option<Shift>, n: usize) -> Vec<Frame> {
    let set = load_fashion_mnist(&fashion_mnist_dir(), Split::Test)
        .unwrap()
        .take(n);
    let set = match shift {
        Some(s) => shifted(&set, s, 2, 7),
        None => set,
    };
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

const OPTIONS: PrepareOptions = PrepareOptions {
    batch: 8,
    threads: 1,
};

fn pipeline(bank_dir: &Path, adapt: Option<AdaptConfig>) -> Result<Pipeline, EdgeError> {
    let b = bundle();
    let (bank, _) = MemoryBank::open(bank_dir, BankConfig::default())?;
    let cfg = PipelineConfig {
        recluster_every: 0,
        ..Default::default()
    };
    let mut pipe = Pipeline::new(&b, &TractRuntime, &OPTIONS, bank, cfg)?;
    if let Some(a) = adapt {
        pipe.enable_adaptation(&b, &TractRuntime, &OPTIONS, a)?;
    }
    Ok(pipe)
}

/// Statistics adaptation plus training rounds every 200 frames, inline.
fn training(tweak: impl FnOnce(&mut TrainConfig)) -> AdaptConfig {
    let mut t = TrainConfig {
        every: 200,
        steps: 5,
        batch: 16,
        train_frames: 128,
        held_out_frames: 64,
        background: false,
        ..Default::default()
    };
    tweak(&mut t);
    AdaptConfig {
        recentring: Some(RecentringKind::Diagonal),
        train: Some(t),
        ..Default::default()
    }
}

fn frame_clusters(events: &[Event]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Frame { cluster_id, .. } => Some(*cluster_id),
            _ => None,
        })
        .collect()
}

fn rounds(events: &[Event]) -> Vec<(bool, f64, f64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Adapt {
                kept,
                proxy_before,
                proxy_after,
                ..
            } => Some((*kept, *proxy_before, *proxy_after)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_rolled_back_update_loses_no_frame_and_moves_no_cluster() {
    let frames = frames(800);
    // Demand that a candidate beat the current layer's held-out proxy by 2, more than the
    // proxy's whole range (-1..1): every round must be rolled back. (That the proxy itself
    // ranks a collapse below a balanced clustering is a unit test of the trainer.)
    let refuse = training(|t| t.tolerance = -2.0);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut adapted = pipeline(a.path(), Some(refuse)).unwrap();
    let events = adapted.process(&frames, None).unwrap();
    let r = rounds(&events);
    assert!(r.len() >= 3, "{r:?}");
    assert!(
        r.iter()
            .all(|&(kept, before, after)| !kept && after < before + 2.0),
        "{r:?}"
    );
    // Nothing changed: the same clusters, frame by frame, as statistics adaptation alone.
    let mut stats_only = pipeline(
        b.path(),
        Some(AdaptConfig {
            recentring: Some(RecentringKind::Diagonal),
            ..Default::default()
        }),
    )
    .unwrap();
    let reference = stats_only.process(&frames, None).unwrap();
    assert_eq!(frame_clusters(&events), frame_clusters(&reference));
    assert_eq!(adapted.bank().len(), frames.len());
    assert_eq!(adapted.adaptation().unwrap().record().updates, 0);
    // The roll search saves what it found; no layer was saved.
    let on_disk = store::read(a.path()).unwrap();
    assert!(
        on_disk
            .is_none_or(|r| r.updates == 0 && r.linear == LinearAdapter::identity(r.linear.dim())),
        "a rolled-back update was saved"
    );
    // A snapshot saves the running statistics (no update), and a restart resumes them.
    adapted.snapshot().unwrap();
    let saved = store::load(a.path(), &bundle().file().sha256)
        .unwrap()
        .unwrap();
    assert_eq!((saved.updates, saved.frames), (0, frames.len() as u64));
    drop(adapted);
    let resumed = pipeline(a.path(), Some(training(|_| ()))).unwrap();
    assert_eq!(
        resumed.adaptation().unwrap().record().recentring,
        saved.recentring
    );
}

#[test]
fn a_kept_update_keeps_cluster_ids_is_saved_and_resumed() {
    let frames = frames(600);
    let dir = tempfile::tempdir().unwrap();
    // Accept whatever the round produces, so that a kept update is certain.
    let cfg = training(|t| t.tolerance = f64::INFINITY);
    let mut pipe = pipeline(dir.path(), Some(cfg.clone())).unwrap();
    let before: Vec<u32> = pipe.online().clusters().iter().map(|c| c.id).collect();
    let events = pipe.process(&frames[..400], None).unwrap();
    let kept = rounds(&events).iter().filter(|r| r.0).count() as u64;
    assert!(kept >= 1, "{:?}", rounds(&events));
    let after: Vec<u32> = pipe.online().clusters().iter().map(|c| c.id).collect();
    // Hungarian matching: the clusters present before keep their ids; none is renamed.
    let mut sorted_before = before.clone();
    sorted_before.sort_unstable();
    let mut sorted_after = after.clone();
    sorted_after.sort_unstable();
    assert_eq!(sorted_before, sorted_after, "ids changed through an update");
    let record = pipe.adaptation().unwrap().record().clone();
    assert_eq!(record.updates, kept);
    assert!(record.linear.distance_from_identity() > 0.0);
    pipe.snapshot().unwrap();
    drop(pipe);
    let saved = store::load(dir.path(), &bundle().file().sha256)
        .unwrap()
        .unwrap();
    assert_eq!(saved.linear, record.linear);
    // A restart resumes the saved adapter.
    let pipe = pipeline(dir.path(), Some(cfg)).unwrap();
    assert_eq!(pipe.adaptation().unwrap().record().linear, record.linear);
    assert_eq!(pipe.adaptation().unwrap().record().updates, kept);
}

#[test]
fn reset_returns_to_the_shipped_model_and_keeps_the_old_adapter_aside() {
    let frames = frames(400);
    let dir = tempfile::tempdir().unwrap();
    let mut pipe = pipeline(dir.path(), Some(training(|t| t.tolerance = f64::INFINITY))).unwrap();
    pipe.process(&frames, None).unwrap();
    assert!(pipe.adaptation().unwrap().record().updates >= 1);
    let aside = pipe
        .reset_adaptation()
        .unwrap()
        .expect("an adapter was saved");
    assert!(aside.exists() && !store::path(dir.path()).exists());
    let record = pipe.adaptation().unwrap().record();
    assert_eq!(record.linear, LinearAdapter::identity(record.linear.dim()));
    assert_eq!(record.updates, 0);
    assert_eq!(record.input.as_ref().expect("input statistics").count, 0);
}

/// The input's statistics follow a brightened camera, are saved with the adapter, and the
/// export hands them to the host.
#[test]
fn the_input_statistics_follow_a_brightened_stream_and_are_saved() {
    let frames = shifted_frames(Shift::Brightness, 300);
    let dir = tempfile::tempdir().unwrap();
    let mut pipe = pipeline(dir.path(), Some(AdaptConfig::default())).unwrap();
    pipe.process(&frames, None).unwrap();
    pipe.snapshot().unwrap();
    let saved = store::read(dir.path()).unwrap().expect("a saved adapter");
    let input = saved.input.clone().expect("input statistics");
    assert_eq!(input.count, 300);
    // Brighter frames: above the training mean (0 after the manifest's normalisation) and
    // flatter (clipped at white).
    let (mean, std) = input.moments();
    assert!(mean[0] > 0.5 && std[0] < 0.9, "{mean:?} {std:?}");
    let export = saved.export();
    assert_eq!((export.input_mean, export.input_std), (mean, std));
    // Without it, the record has none.
    let other = tempfile::tempdir().unwrap();
    let mut plain = pipeline(
        other.path(),
        Some(AdaptConfig {
            input: false,
            ..Default::default()
        }),
    )
    .unwrap();
    plain.process(&frames[..10], None).unwrap();
    assert!(plain.adaptation().unwrap().record().input.is_none());
}

/// What the input search answered, in `events`: the rolls (degrees), the smoothings (pixels)
/// and the deblocking grids (pixels; 0: none) found.
fn rolls(events: &[Event]) -> Vec<f32> {
    search_answers(events).0
}

fn smoothings(events: &[Event]) -> Vec<f32> {
    search_answers(events).1
}

fn deblock_grids(events: &[Event]) -> Vec<u32> {
    search_answers(events).2
}

fn search_answers(events: &[Event]) -> (Vec<f32>, Vec<f32>, Vec<u32>) {
    let (mut rolls, mut smoothings, mut grids) = (Vec::new(), Vec::new(), Vec::new());
    for e in events {
        match e {
            Event::Roll { degrees, .. } => rolls.push(*degrees),
            Event::Smoothing { sigma, .. } => smoothings.push(*sigma),
            Event::Deblock { block, .. } => grids.push(*block),
            _ => {}
        }
    }
    (rolls, smoothings, grids)
}

/// A camera turned by 20 degrees: the search at the end of the warm-up finds the angle, the
/// record keeps it (saved, resumed without a second search), and a reset forgets it. An
/// upright camera is left upright.
#[test]
fn a_tilted_camera_is_found_turned_back_saved_and_reset() {
    let turned = shifted_frames(Shift::Rotation, 260);
    let dir = tempfile::tempdir().unwrap();
    let mut pipe = pipeline(dir.path(), Some(AdaptConfig::default())).unwrap();
    // The search runs on its own thread: its answer comes with a later frame, or at the end.
    let mut events = pipe.process(&turned, None).unwrap();
    events.extend(pipe.finish_adaptation().unwrap());
    let found = rolls(&events);
    assert_eq!(found.len(), 1, "one search");
    assert!((found[0] - 20.0).abs() <= 2.5, "found {}", found[0]);
    // Every frame was clustered: the search holds none back.
    assert_eq!(frame_clusters(&events).len(), turned.len());
    pipe.snapshot().unwrap();
    let saved = store::read(dir.path()).unwrap().expect("a saved adapter");
    assert_eq!(saved.roll.as_ref().map(|r| r.degrees), Some(found[0]));
    assert_eq!(saved.export().roll_degrees, found[0]);
    drop(pipe);

    // A run with the search off keeps the record's roll but turns nothing.
    let off = pipeline(
        dir.path(),
        Some(AdaptConfig {
            roll: None,
            ..Default::default()
        }),
    )
    .unwrap();
    let a = off.adaptation().unwrap();
    assert_eq!(a.record().roll.as_ref().map(|r| r.degrees), Some(found[0]));
    assert_eq!(a.roll_degrees(), 0.0);
    drop(off);

    let mut resumed = pipeline(dir.path(), Some(AdaptConfig::default())).unwrap();
    let mut events = resumed.process(&turned[..20], None).unwrap();
    events.extend(resumed.finish_adaptation().unwrap());
    assert!(rolls(&events).is_empty(), "searched again after a resume");
    resumed.reset_adaptation().unwrap();
    assert!(resumed.adaptation().unwrap().record().roll.is_none());

    let upright = frames_of(None, 260);
    let other = tempfile::tempdir().unwrap();
    let inline = AdaptConfig {
        roll_in_background: false,
        ..Default::default()
    };
    let mut pipe = pipeline(other.path(), Some(inline)).unwrap();
    // Inline, the search answers with the frame that ends the warm-up.
    let events = pipe.process(&upright, None).unwrap();
    assert_eq!(rolls(&events), vec![0.0]);
    assert!(pipe.finish_adaptation().unwrap().is_empty());
}

/// A noisy camera: the search at the end of the warm-up (here without the roll) picks a
/// smoothing, the record keeps it, the export names it and the frames after it cluster as
/// smoothed frames; a clean camera is left sharp; a reset forgets it.
#[test]
fn a_noisy_camera_is_smoothed_and_a_clean_one_left_sharp() {
    let inline = AdaptConfig {
        roll: None,
        roll_in_background: false,
        ..Default::default()
    };
    let noisy = shifted_frames(Shift::Noise, 260);
    let dir = tempfile::tempdir().unwrap();
    let mut pipe = pipeline(dir.path(), Some(inline.clone())).unwrap();
    let events = pipe.process(&noisy, None).unwrap();
    let found = smoothings(&events);
    assert_eq!(found.len(), 1, "one search");
    assert!(found[0] > 0.0, "no smoothing found on a noisy camera");
    assert!(rolls(&events).is_empty(), "the roll was not to be searched");
    assert_eq!(frame_clusters(&events).len(), noisy.len());
    let a = pipe.adaptation().unwrap();
    assert_eq!(a.smoothing_sigma(), found[0]);
    let saved = store::read(dir.path()).unwrap().expect("a saved adapter");
    assert_eq!(saved.smoothing.as_ref().map(|s| s.sigma), Some(found[0]));
    assert_eq!(saved.export().smoothing_sigma, found[0]);
    pipe.reset_adaptation().unwrap();
    assert!(pipe.adaptation().unwrap().record().smoothing.is_none());

    let clean = frames_of(None, 260);
    let other = tempfile::tempdir().unwrap();
    let mut pipe = pipeline(other.path(), Some(inline)).unwrap();
    let events = pipe.process(&clean, None).unwrap();
    assert_eq!(smoothings(&events), vec![0.0]);
}

/// A camera that JPEG-codes its frames: the measurement at the end of the warm-up finds the
/// 8 x 8 grid, the record keeps it, the export names it and every frame is still clustered;
/// a clean camera is left alone; a reset forgets it.
#[test]
fn a_block_coded_camera_is_deblocked_and_a_clean_one_left_alone() {
    let inline = AdaptConfig {
        roll: None,
        smoothing: None,
        roll_in_background: false,
        ..Default::default()
    };
    let coded = shifted_frames(Shift::Jpeg, 260);
    let dir = tempfile::tempdir().unwrap();
    let mut pipe = pipeline(dir.path(), Some(inline.clone())).unwrap();
    let events = pipe.process(&coded, None).unwrap();
    assert_eq!(deblock_grids(&events), vec![8]);
    assert!(rolls(&events).is_empty() && smoothings(&events).is_empty());
    assert_eq!(frame_clusters(&events).len(), coded.len());
    assert_eq!(pipe.adaptation().unwrap().deblock_block(), 8);
    let saved = store::read(dir.path()).unwrap().expect("a saved adapter");
    let measured = saved.deblock.as_ref().expect("the measurement is saved");
    assert!(measured.ratio >= 1.2, "blockiness {}", measured.ratio);
    assert_eq!(saved.export().deblock_block, 8);
    pipe.reset_adaptation().unwrap();
    assert!(pipe.adaptation().unwrap().record().deblock.is_none());

    let clean = frames_of(None, 260);
    let other = tempfile::tempdir().unwrap();
    let mut pipe = pipeline(other.path(), Some(inline)).unwrap();
    let events = pipe.process(&clean, None).unwrap();
    assert_eq!(deblock_grids(&events), vec![0]);
    assert_eq!(pipe.adaptation().unwrap().deblock_block(), 0);
}

/// An adapter file from a build with another record layout is refused as another format,
/// not called damaged, and left in place.
#[test]
fn an_adapter_of_an_older_format_is_named_as_such() {
    #[derive(serde::Serialize)]
    struct OlderRecord {
        format: u32,
        model_sha256: String,
        updates: u64,
    }
    let dir = tempfile::tempdir().unwrap();
    let bytes = edge_runtime::bank::log::frame(&OlderRecord {
        format: 2,
        model_sha256: bundle().file().sha256.clone(),
        updates: 1,
    });
    std::fs::write(store::path(dir.path()), &bytes).unwrap();
    let err = pipeline(dir.path(), Some(AdaptConfig::default())).unwrap_err();
    assert!(
        matches!(
            &err,
            EdgeError::Adapter {
                problem: AdapterProblem::Format { found: 2, .. },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(std::fs::read(store::path(dir.path())).unwrap(), bytes);
}

#[test]
fn an_adapter_of_another_model_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let other = AdapterRecord {
        format: ADAPTER_FORMAT,
        model_sha256: "0123456789abcdef".into(),
        updates: 3,
        frames: 10,
        linear: LinearAdapter::identity(128),
        recentring: None,
        input: None,
        roll: None,
        smoothing: None,
        deblock: None,
    };
    store::save(dir.path(), &other).unwrap();
    let err = pipeline(dir.path(), Some(training(|_| ()))).unwrap_err();
    assert!(
        matches!(
            &err,
            EdgeError::Adapter {
                problem: AdapterProblem::OtherModel { .. },
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("adapter.bin") && msg.contains("0123456789ab"),
        "{msg}"
    );
    // An adapter made on other statistics is refused, not replaced.
    let own = AdapterRecord {
        model_sha256: bundle().file().sha256.clone(),
        ..other.clone()
    };
    store::save(dir.path(), &own).unwrap();
    let err = pipeline(dir.path(), Some(training(|_| ()))).unwrap_err();
    assert!(err.to_string().contains("made with --adapt none"), "{err}");
    assert_eq!(store::read(dir.path()).unwrap().unwrap(), own);
    store::save(dir.path(), &other).unwrap();
    // A damaged file is named too, and never silently replaced.
    let path = store::path(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = pipeline(dir.path(), Some(training(|_| ()))).unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

/// `kill -9` during saves, 60 times: the file always loads, whole, and is at least as new as
/// the last save that was reported done.
#[test]
fn kill_minus_nine_during_an_adapter_save_leaves_a_whole_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(8);
    for round in 0..60 {
        let mut child = edge_runtime()
            .args(["adapt", "save-loop", "--dim", "64", "--bank"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut last = 0u64;
        for _ in 0..1 + rng.below(40) {
            let line = lines.next().unwrap().unwrap();
            last = line.strip_prefix("saved ").unwrap().parse().unwrap();
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let r = store::read(dir.path())
            .unwrap_or_else(|e| panic!("round {round}: {e}"))
            .expect("an adapter");
        assert!(r.updates >= last, "round {round}: {} < {last}", r.updates);
        assert!(
            r.linear.bias.iter().all(|&b| b == r.updates as f32),
            "round {round}: a record mixes two saves"
        );
    }
}

fn cli(args: &[&str]) -> std::process::Output {
    edge_runtime().args(args).output().unwrap()
}

#[test]
fn the_cli_trains_shows_exports_and_resets_the_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let bank = dir.path().join("bank");
    let b = bank.to_str().unwrap();
    let events = dir.path().join("events.jsonl");
    let m = model_dir();
    let out = cli(&[
        "run",
        "--model",
        m.to_str().unwrap(),
        "--input",
        "fashion-mnist",
        "--limit",
        "700",
        "--bank",
        b,
        "--events",
        events.to_str().unwrap(),
        "--adapt",
        "stats",
        "--adapt-train",
        "--adapt-every",
        "300",
        "--adapt-steps",
        "5",
    ]);
    ok(out);
    let log = std::fs::read_to_string(&events).unwrap();
    assert_eq!(log.matches("\"event\":\"frame\"").count(), 700);
    assert!(log.matches("\"event\":\"adapt\"").count() >= 1, "{log}");
    // The roll was searched once (an upright camera: nothing turned).
    assert_eq!(log.matches("\"event\":\"roll\"").count(), 1, "{log}");

    // The graceful end saved the adapter: its statistics at least, and any kept layer.
    let show = cli(&["adapt", "show", "--bank", b]);
    let show = ok(show);
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(v["frames"], 700, "{v}");
    assert_eq!(v["statistics"], "Diagonal", "{v}");
    assert_eq!(v["roll_degrees"], 0.0, "{v}");
    // --no-adapt-roll: no search, nothing recorded.
    let plain = dir.path().join("plain");
    let plain_events = dir.path().join("plain.jsonl");
    ok(cli(&[
        "run",
        "--model",
        m.to_str().unwrap(),
        "--input",
        "fashion-mnist",
        "--limit",
        "300",
        "--bank",
        plain.to_str().unwrap(),
        "--events",
        plain_events.to_str().unwrap(),
        "--adapt",
        "stats",
        "--no-adapt-roll",
    ]));
    let plain_log = std::fs::read_to_string(&plain_events).unwrap();
    assert!(!plain_log.contains("\"event\":\"roll\""), "{plain_log}");
    let shown = ok(cli(&["adapt", "show", "--bank", plain.to_str().unwrap()]));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert!(shown["roll_degrees"].is_null(), "{shown}");
    assert!(v["memory_bytes"].as_u64().unwrap() < 1 << 20, "{v}");

    let export = dir.path().join("adapter.json");
    let out = cli(&[
        "adapt",
        "export",
        "--bank",
        b,
        "--out",
        export.to_str().unwrap(),
    ]);
    ok(out);
    let e: serde_json::Value = serde_json::from_slice(&std::fs::read(&export).unwrap()).unwrap();
    assert_eq!(e["dim"], 128);
    assert_eq!(e["matrix"].as_array().unwrap().len(), 128 * 128);
    assert_eq!(e["offset"].as_array().unwrap().len(), 128);

    let out = cli(&["adapt", "reset", "--bank", b]);
    ok(out);
    assert!(!store::path(&bank).exists());
    let out = cli(&["adapt", "show", "--bank", b]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no adapter"));
}

#[test]
fn bad_adaptation_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // A model directory without training statistics.
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for f in ["manifest.json", "encoder.int8.onnx"] {
        std::fs::copy(model_dir().join(f), model.join(f)).unwrap();
    }
    let bank = dir.path().join("bank");
    // `run` on 10 test images with `model` and `extra` flags: its stderr, after a failure.
    let run_fails = |model: &Path, extra: &[&str]| -> String {
        let mut args = vec![
            "run",
            "--model",
            model.to_str().unwrap(),
            "--input",
            "fashion-mnist",
            "--limit",
            "10",
            "--bank",
            bank.to_str().unwrap(),
        ];
        args.extend(extra);
        let out = cli(&args);
        assert!(!out.status.success(), "{extra:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run_fails(&model, &["--adapt", "whiten"]);
    assert!(
        err.contains("embedding-stats.json: not found") && err.contains("adapt stats"),
        "{err}"
    );
    // A damaged statistics file.
    std::fs::write(model.join("embedding-stats.json"), b"{\"images\": 3").unwrap();
    let err = run_fails(&model, &["--adapt", "stats"]);
    assert!(
        err.contains("embedding-stats.json: not valid embedding statistics"),
        "{err}"
    );
    // Training with no thumbnails to train on.
    let err = run_fails(&model_dir(), &["--adapt-train", "--thumb-size", "0"]);
    assert!(err.contains("--thumb-size 0 stores none"), "{err}");
    // Flags out of range, and statistics from a folder that does not exist.
    let out = cli(&["run", "--input", "x", "--bank", "b", "--adapt-steps", "0"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--adapt-steps"));
    let m = model_dir();
    let out = cli(&[
        "adapt",
        "stats",
        "--model",
        m.to_str().unwrap(),
        "--data",
        "/no/such/folder",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/folder"));
    let out = cli(&["adapt", "show", "--bank", dir.path().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no adapter"));
}
