//! The `host-train` binary on folders of generated images, good and bad.

use std::path::Path;
use std::process::{Command, Output};

use image::{GrayImage, Luma};

/// Three classes in sub-folders that differ where pixels differ: the top half lit, the left
/// half lit, a centred blob; each image with its own small jitter.
fn make_dataset(root: &Path, per_class: u32) {
    for (class, draw) in [("top", 0u32), ("left", 1), ("blob", 2)] {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let img = GrayImage::from_fn(32, 32, |x, y| {
                let jitter = ((x * 7 + y * 13 + i * 31) % 17) as u8;
                let on = match draw {
                    0 => y < 16,
                    1 => x < 16,
                    _ => (x as i32 - 16).pow(2) + (y as i32 - 16).pow(2) < 80 + i as i32,
                };
                Luma([if on { 200 + jitter } else { 20 + jitter }])
            });
            img.save(dir.join(format!("{i:03}.png"))).unwrap();
        }
    }
}

fn host_train() -> Command {
    Command::new(env!("CARGO_BIN_EXE_host-train"))
}

/// Runs `cmd` and asserts that it succeeded, showing its stderr otherwise.
fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn baseline_clusters_a_labeled_image_folder() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(dir.path(), 30);
    let json = dir.path().join("out.json");
    run_ok(
        host_train()
            .args([
                "--threads",
                "2",
                "baseline",
                "--pca-dim",
                "2",
                "--size",
                "28",
                "--data",
            ])
            .arg(dir.path())
            .arg("--json")
            .arg(&json),
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // A fifth of each class is held out for the kNN queries.
    assert_eq!(report["n"], 72);
    assert_eq!(report["k"], 3, "k defaults to the number of class folders");
    let nmi = report["nmi"].as_f64().unwrap();
    assert!(
        nmi > 0.8,
        "three distinct patterns should separate, NMI {nmi}"
    );
}

#[test]
fn corrupt_images_are_named_or_skipped() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(dir.path(), 10);
    std::fs::write(
        dir.path().join("blob/zz-corrupt.png"),
        b"\x89PNG\r\n\x1a\n truncated",
    )
    .unwrap();
    let out = host_train()
        .args(["baseline", "--pca-dim", "8", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("zz-corrupt.png"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = run_ok(
        host_train()
            .args(["baseline", "--pca-dim", "8", "--skip-bad", "--data"])
            .arg(dir.path()),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("24 images") && stdout.contains("1 skipped"),
        "{stdout}"
    );
}

#[test]
fn missing_or_empty_data_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    for (arg, want) in [
        (dir.path().join("missing"), "missing"),
        (dir.path().to_path_buf(), "no JPEG or PNG images"),
    ] {
        let out = host_train()
            .args(["baseline", "--data"])
            .arg(&arg)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn pretrain_flags_reach_the_run_config() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(&dir.path().join("data"), 10);
    let config = |out: &str, extra: &[&str]| -> serde_json::Value {
        let run = dir.path().join(out);
        run_ok(
            host_train()
                .args(["pretrain", "--size", "28", "--epochs", "0"])
                .args(extra)
                .arg("--data")
                .arg(dir.path().join("data"))
                .arg("--out")
                .arg(&run),
        );
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap()
    };
    let defaults = config("defaults", &["--method", "la"]);
    assert_eq!(defaults["npid"]["lr_steps"], serde_json::json!([0.6, 0.8]));
    // Fewer than 10 classes count as 10: LA's k-means gets 10x, SwAV's prototypes 3x.
    assert_eq!(defaults["la"]["kmeans_k"], 100);
    let swav = config("swav", &["--method", "swav"]);
    assert_eq!(swav["swav"]["prototypes"], 30);
    assert_eq!(swav["swav"]["temperature"], 0.3);
    assert_eq!(defaults["la"]["kmeans_runs"], 10);
    assert_eq!(defaults["la"]["background_k"], serde_json::Value::Null);
    assert_eq!(defaults["eval_every"], 1);
    assert_eq!(defaults["deepcluster"]["isotropy"], 0.0);
    let dc = config("dc", &["--isotropy", "0.3"]);
    assert_eq!(dc["deepcluster"]["isotropy"], 0.3);
    let set = config(
        "set",
        &[
            "--method",
            "la",
            "--constant-lr",
            "--la-runs",
            "4",
            "--la-background",
            "7",
            "--la-warmup",
            "2",
            "--eval-every",
            "3",
        ],
    );
    assert_eq!(set["npid"]["lr_steps"], serde_json::json!([]));
    assert_eq!(set["la"]["kmeans_runs"], 4);
    assert_eq!(set["la"]["background_k"], 7);
    assert_eq!(set["la"]["warmup_epochs"], 2);
    assert_eq!(set["eval_every"], 3);
}

/// The README's quick start on a generated RGB folder: make-scenes, pretrain (SwAV, with the
/// labeled folder split for validation), eval, cluster-head, export with the head's centroids.
#[test]
fn quick_start_on_a_generated_scene_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (data, run, model) = (
        dir.path().join("scenes"),
        dir.path().join("run"),
        dir.path().join("model"),
    );
    run_ok(
        host_train()
            .args([
                "make-scenes",
                "--per-class",
                "8",
                "--classes",
                "3",
                "--size",
                "16",
                "--out",
            ])
            .arg(&data),
    );
    let out = run_ok(
        host_train()
            .args([
                "--threads",
                "2",
                "pretrain",
                "--method",
                "swav",
                "--rgb",
                "--size",
                "16",
                "--arch",
                "small-cnn",
                "--embed-dim",
                "16",
                "--k",
                "6",
                "--batch-size",
                "12",
                "--epochs",
                "2",
                "--val-fraction",
                "0.25",
                "--data",
            ])
            .arg(&data)
            .arg("--out")
            .arg(&run),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("18 images") && stdout.contains("after 2 epochs: kNN"),
        "{stdout}"
    );
    let out = run_ok(host_train().args(["eval", "--checkpoint"]).arg(&run));
    assert!(String::from_utf8_lossy(&out.stdout).contains("NMI"));
    let out = run_ok(
        host_train()
            .args([
                "cluster-head",
                "--k",
                "3",
                "--neighbours",
                "3",
                "--steps",
                "20",
                "--heads",
                "1",
                "--whiten",
                "8",
                "--checkpoint",
            ])
            .arg(&run),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("validation: 6 images")
            && stdout.contains("head: NMI")
            && stdout.contains("nearest k-means centroid: NMI")
            && stdout.contains("`export --centroids-from best` ships the")
            && stdout.contains("whitened the 16-d embedding to 8 directions"),
        "{stdout}"
    );
    run_ok(
        host_train()
            .args(["export", "--calibration-images", "8", "--checkpoint"])
            .arg(&run)
            .arg("--out")
            .arg(&model),
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("manifest.json")).unwrap()).unwrap();
    let head: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("cluster_head.json")).unwrap()).unwrap();
    assert_eq!(manifest["centroids"]["k"], 3);
    assert_eq!(
        manifest["embedding"]["dim"], 8,
        "the whitening is in the model"
    );
    assert_eq!(manifest["centroids"]["dim"], 8);
    assert_eq!(manifest["centroids"]["values"], head["centroids"]);
    // `best` ships the head's centroids or k-means centroids, as many, in the same space.
    let best = dir.path().join("best");
    let out = run_ok(
        host_train()
            .args([
                "export",
                "--calibration-images",
                "8",
                "--centroids-from",
                "best",
            ])
            .arg("--checkpoint")
            .arg(&run)
            .arg("--out")
            .arg(&best),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("by silhouette"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(best.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["centroids"]["k"], 3);
    assert_eq!(manifest["centroids"]["dim"], 8);
    // A board's adapter that found its camera tilted: the layer folds, the turn cannot, and
    // the export says so.
    let mut adapter = models::adapt::AdapterExport::compose(
        3,
        "board",
        1,
        500,
        &models::adapt::LinearAdapter::identity(8),
        None,
        None,
    );
    adapter.roll_degrees = 20.0;
    let adapter_file = dir.path().join("adapter.json");
    std::fs::write(&adapter_file, serde_json::to_vec(&adapter).unwrap()).unwrap();
    let out = run_ok(
        host_train()
            .args(["export", "--calibration-images", "8", "--fold-adapter"])
            .arg(&adapter_file)
            .arg("--checkpoint")
            .arg(&run)
            .arg("--out")
            .arg(dir.path().join("folded")),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("folding the adapter") && stdout.contains("back by 20.0 degrees"),
        "{stdout}"
    );
}

/// `cluster-head --finetune-steps`: the encoder trains with the head and is saved beside the
/// pretrained one, which stays as it was; eval loads the fine-tuned one; a head without
/// fine-tuning drops it again.
#[test]
fn cluster_head_finetunes_the_encoder_beside_the_pretrained_one() {
    use candle_core::{Device, Tensor};
    use host_train::pretrain::{load_pretrained_encoder, load_trained_encoder, FINETUNED_FILE};
    use host_train::run_dir::RunDir;

    let dir = tempfile::tempdir().unwrap();
    let (data, run) = (dir.path().join("data"), dir.path().join("run"));
    make_dataset(&data, 8);
    run_ok(
        host_train()
            .args([
                "pretrain",
                "--size",
                "16",
                "--embed-dim",
                "16",
                "--k",
                "6",
                "--batch-size",
                "8",
                "--epochs",
                "1",
                "--data",
            ])
            .arg(&data)
            .arg("--out")
            .arg(&run),
    );
    let pretrained = std::fs::read(run.join("model.safetensors")).unwrap();
    let head_args = [
        "cluster-head",
        "--k",
        "3",
        "--neighbours",
        "3",
        "--steps",
        "20",
        "--heads",
        "2",
    ];
    let out = run_ok(
        host_train()
            .args(head_args)
            .args([
                "--finetune-steps",
                "6",
                "--finetune-lr",
                "0.01",
                "--checkpoint",
            ])
            .arg(&run),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("fine-tuned the encoder with the head: 6 steps")
            && stdout.contains("head: NMI"),
        "{stdout}"
    );
    assert!(run.join(FINETUNED_FILE).exists());
    assert_eq!(
        std::fs::read(run.join("model.safetensors")).unwrap(),
        pretrained,
        "the pretrained weights stay as they were"
    );
    // The trained encoder is the fine-tuned one: it embeds an image differently.
    let dir_run = RunDir::open(&run).unwrap();
    let x = Tensor::rand(0f32, 1.0, (2, 1, 16, 16), &Device::Cpu).unwrap();
    let embed = |e: &dyn host_train::encoders::Encoder| -> Vec<f32> {
        e.embed(&x, false)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (_, _, before) = load_pretrained_encoder(&dir_run, &Device::Cpu).unwrap();
    let (_, after) = load_trained_encoder(&dir_run, &Device::Cpu).unwrap();
    let (a, b) = (embed(before.as_ref()), embed(after.as_ref()));
    let moved = a
        .iter()
        .zip(&b)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max);
    assert!(
        moved > 1e-4,
        "fine-tuning left the embedding where it was ({moved})"
    );
    run_ok(host_train().args(["eval", "--checkpoint"]).arg(&run));
    // A head on the frozen encoder belongs to the pretrained one.
    let out = run_ok(host_train().args(head_args).arg("--checkpoint").arg(&run));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!run.join(FINETUNED_FILE).exists());
    let err = run_err(
        &[
            "cluster-head",
            "--finetune-steps",
            "5",
            "--whiten",
            "8",
            "--checkpoint",
        ],
        &[&run],
    );
    assert!(err.contains("cannot be combined with --whiten"), "{err}");
    let err = run_err(
        &[
            "cluster-head",
            "--finetune-steps",
            "5",
            "--finetune-lr",
            "0",
            "--checkpoint",
        ],
        &[&run],
    );
    assert!(
        err.contains("--finetune-lr must be a positive number"),
        "{err}"
    );
}

/// Runs `args` and returns its stderr, asserting that it failed without a panic.
fn run_err(args: &[&str], paths: &[&Path]) -> String {
    let mut cmd = host_train();
    cmd.args(args);
    for p in paths {
        cmd.arg(p);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn bad_values_of_the_new_flags_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_dataset(&data, 4);
    let err = run_err(&["baseline", "--val-fraction", "1.5", "--data"], &[&data]);
    assert!(
        err.contains("--val-fraction must be at least 0 and below 1"),
        "{err}"
    );
    let val = dir.path().join("val");
    std::fs::create_dir_all(val.join("nowhere")).unwrap();
    std::fs::copy(data.join("top/000.png"), val.join("nowhere/a.png")).unwrap();
    let err = run_err(&["baseline", "--data"], &[&data, Path::new("--val"), &val]);
    assert!(
        err.contains("class folder `nowhere`") && err.contains("blob"),
        "{err}"
    );
    let err = run_err(
        &["make-scenes", "--classes", "9", "--out"],
        &[&dir.path().join("s")],
    );
    assert!(err.contains("--classes must be 2-8"), "{err}");
    let err = run_err(&["make-scenes", "--out"], &[&data]);
    assert!(err.contains("already exists"), "{err}");
    let run = dir.path().join("run");
    run_ok(
        host_train()
            .args(["pretrain", "--size", "28", "--epochs", "1", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&run),
    );
    let err = run_err(&["cluster-head", "--k", "100", "--checkpoint"], &[&run]);
    assert!(
        err.contains("--k must be between 2 and half the images"),
        "{err}"
    );
    let err = run_err(
        &["cluster-head", "--whiten", "500", "--checkpoint"],
        &[&run],
    );
    assert!(
        err.contains("--whiten must be at most the embedding's 128 dimensions"),
        "{err}"
    );
    let err = run_err(
        &["export", "--centroids-from", "head", "--checkpoint"],
        &[&run, Path::new("--out"), &dir.path().join("m")],
    );
    assert!(err.contains("has no cluster_head.json"), "{err}");
    let err = run_err(
        &["export", "--calibrator", "percentile-0", "--checkpoint"],
        &[&run, Path::new("--out"), &dir.path().join("m")],
    );
    assert!(
        err.contains("percentile-0") && err.contains("or auto"),
        "{err}"
    );
    let err = run_err(
        &[
            "pretrain",
            "--method",
            "swav",
            "--augment",
            "wild",
            "--data",
        ],
        &[&data],
    );
    assert!(err.contains("wild"), "{err}");
    for (extra, says) in [
        (
            &["--isotropy=-1"][..],
            "--isotropy must be a finite weight of 0 or more",
        ),
        (
            &["--isotropy", "NaN"][..],
            "--isotropy must be a finite weight of 0 or more",
        ),
        (
            &["--isotropy", "0.3", "--method", "npid"][..],
            "--isotropy is a DeepCluster option",
        ),
    ] {
        let mut args = vec!["pretrain"];
        args.extend_from_slice(extra);
        args.extend(["--out", "unused", "--data"]);
        let err = run_err(&args, &[&data]);
        assert!(err.contains(says), "{extra:?}: {err}");
    }
}
