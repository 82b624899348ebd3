//! SwAV, figure pairs, the cluster head and export on a small set of generated RGB scenes:
//! the loss falls, the head trains and saves, and export carries its centroids into the
//! manifest.

use candle_core::Device;
use host_train::augment::AugmentConfig;
use host_train::cluster_head::{fit_cluster_head, ClusterHead, ClusterHeadConfig};
use host_train::dataset::{DataSpec, Normalization, TrainSet};
use host_train::encoders::{Arch, EmbeddingWhitening};
use host_train::export::verify::{verify, VerifyConfig};
use host_train::export::{export, ExportConfig};
use host_train::features::extract;
use host_train::methods::figure_pairs::FigurePairsConfig;
use host_train::methods::swav::SwavConfig;
use host_train::methods::Method;
use host_train::pretrain::{
    load_encoder, load_trained_encoder, pretrain, MetricsRow, RunConfig, WHITENING_FILE,
};
use host_train::run_dir::RunDir;
use models::data::{render_scenes, ImageSet, SceneParams};
use models::manifest::Centroids;

/// 6 classes x 24 scenes of 16x16 RGB.
fn scenes() -> TrainSet {
    let params = SceneParams {
        size: 16,
        ..Default::default()
    };
    let (pixels, labels) = render_scenes(&params, 24, 3);
    let set = ImageSet {
        pixels,
        channels: 3,
        height: 16,
        width: 16,
        labels: Some(labels),
        class_names: (0..6).map(|c| format!("c{c}")).collect(),
        ..Default::default()
    };
    let norm = Normalization::measure(&set);
    TrainSet::new(set, norm).unwrap()
}

fn swav_config(train: &TrainSet, epochs: usize) -> RunConfig {
    RunConfig {
        method: Method::Swav,
        arch: Arch::SmallCnn,
        // Not read: the images are handed to `pretrain` directly.
        data: DataSpec::new("generated", 16),
        epochs,
        batch_size: 48,
        embed_dim: 16,
        sobel: false,
        seed: 5,
        normalization: train.norm.clone(),
        input: (3, 16, 16),
        augment: AugmentConfig::strong(),
        deepcluster: Default::default(),
        npid: Default::default(),
        la: Default::default(),
        swav: SwavConfig {
            prototypes: 12,
            small_crops: 1,
            queue_length: SwavConfig::queue_for(48, 12, train.len()),
            lr: 0.1,
            ..Default::default()
        },
        figure_pairs: Default::default(),
        eval_every: 100,
    }
}

/// A SwAV run of `epochs` epochs in `run` (continued from its checkpoint with `resume`).
fn swav_epochs(train: &TrainSet, run: &RunDir, epochs: usize, resume: bool) {
    let cfg = swav_config(train, epochs);
    pretrain(&cfg, train, None, run, &Device::Cpu, resume, &mut |_| {}).unwrap();
}

/// Parity checks sized for the tiny scene set.
fn small_verify() -> VerifyConfig {
    VerifyConfig {
        test_images: 64,
        train_images: 80,
        batch: 32,
        seed: 1,
        adapter: None,
    }
}

/// (epoch, loss) of each training row.
fn train_rows(rows: &[MetricsRow]) -> Vec<(usize, f64)> {
    rows.iter()
        .filter_map(|r| match r {
            MetricsRow::Train { epoch, loss, .. } => Some((*epoch, *loss)),
            _ => None,
        })
        .collect()
}

#[test]
fn swav_trains_on_rgb_scenes_and_its_head_reaches_the_manifest() {
    let train = scenes();
    let cfg = swav_config(&train, 8);
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    pretrain(&cfg, &train, None, &run, &Device::Cpu, false, &mut |_| {}).unwrap();
    let rows: Vec<MetricsRow> = run.read_metrics().unwrap();
    let losses: Vec<f64> = train_rows(&rows).iter().map(|r| r.1).collect();
    assert_eq!(losses.len(), 8);
    assert!(losses.iter().all(|l| l.is_finite()));
    // The swapped prediction starts near log K (uniform predictions) and must fall, below
    // log K: a run that collapses to uniform predictions sits at log K.
    assert!(
        losses[7] < losses[0] - 0.02 && losses[7] < (12f64).ln() - 0.02,
        "SwAV loss did not fall below log K = {:.3}: {losses:?}",
        (12f64).ln()
    );
    // Without labels the run reports label-free figures.
    assert!(rows
        .iter()
        .any(|r| matches!(r, MetricsRow::LabelFree { k, .. } if *k > 1)));

    let (cfg, encoder) = load_encoder(&run, &Device::Cpu).unwrap();
    let hcfg = ClusterHeadConfig {
        clusters: 6,
        neighbours: 5,
        heads: 2,
        steps: 50,
        batch_size: 48,
        ..Default::default()
    };
    let (head, clean, _) = fit_cluster_head(
        encoder.as_ref(),
        &train,
        &cfg.augment,
        2,
        &hcfg,
        &Device::Cpu,
    )
    .unwrap();
    assert!(head.loss.is_finite());
    assert_eq!(head.centroids.len(), 6 * 16);
    assert_eq!(head.assign(&clean).len(), train.len());
    head.save(&run).unwrap();
    let head = ClusterHead::load(&run).unwrap().expect("saved head");

    let out = dir.path().join("model");
    let ecfg = ExportConfig {
        calibration_images: 32,
        head_centroids: Some(Centroids {
            k: 6,
            dim: 16,
            values: head.centroids.clone(),
        }),
        ..Default::default()
    };
    let manifest = export(encoder.as_ref(), &cfg, "test", &train, &out, &ecfg).unwrap();
    let c = manifest.centroids.expect("centroids in the manifest");
    assert_eq!((c.k, c.dim), (6, 16));
    assert_eq!(c.values, head.centroids);
}

/// A figure-pairs run of small-cnn-in trains on generated pairs alone and checkpoints; the
/// exported model, with its InstanceNorm layers, runs in the edge runtime with candle's
/// embeddings. (That the loss falls is `figure_pairs::tests`; learning shapes takes
/// thousands of steps, measured in docs/RESULTS.md.)
#[test]
fn figure_pairs_train_an_instance_norm_encoder_that_exports() {
    let train = scenes();
    let cfg = RunConfig {
        method: Method::FigurePairs,
        arch: Arch::SmallCnnIn,
        batch_size: 32,
        augment: AugmentConfig::none(),
        figure_pairs: FigurePairsConfig {
            pairs_per_epoch: 64,
            ..Default::default()
        },
        ..swav_config(&train, 2)
    };
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    let done = pretrain(&cfg, &train, None, &run, &Device::Cpu, false, &mut |_| {}).unwrap();
    let losses: Vec<f64> = train_rows(&run.read_metrics().unwrap())
        .iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(losses.len(), 2);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");

    let out = dir.path().join("model");
    let ecfg = ExportConfig {
        calibration_images: 32,
        ..Default::default()
    };
    export(done.encoder.as_ref(), &cfg, "test", &train, &out, &ecfg).unwrap();
    let onnx = std::fs::read(out.join(host_train::export::FP32_FILE)).unwrap();
    assert!(
        onnx.windows(21).any(|w| w == b"InstanceNormalization"),
        "the export writes ONNX InstanceNormalization"
    );
    let vcfg = small_verify();
    let r = verify(done.encoder.as_ref(), &out, &train, &train, &vcfg).unwrap();
    assert!(r.fp32_max_abs_diff <= 1e-4, "{r:?}");
    assert!(r.int8_mean_cosine >= 0.98, "{r:?}");
}

#[test]
fn a_swav_run_resumes_with_its_prototypes() {
    let train = scenes();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    swav_epochs(&train, &run, 1, false);
    let saved =
        candle_core::safetensors::load(run.path("model.safetensors"), &Device::Cpu).unwrap();
    let protos = saved.get("swav.prototypes").expect("prototypes saved");
    assert_eq!(protos.dims(), &[12, 16]);
    // Rows stay on the unit sphere.
    let norms: Vec<f32> = protos.sqr().unwrap().sum(1).unwrap().to_vec1().unwrap();
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-4), "{norms:?}");
    swav_epochs(&train, &run, 2, true);
    let rows: Vec<MetricsRow> = run.read_metrics().unwrap();
    let epochs: Vec<usize> = train_rows(&rows).iter().map(|r| r.0).collect();
    assert_eq!(epochs, vec![1, 2]);
}

/// A run with a whitening loads as the whitened encoder; its export ends in the whitening,
/// runs in tract with candle's embeddings, and a whitening of the wrong width is a clear
/// error naming the file.
#[test]
fn a_runs_whitening_travels_into_the_exported_model() {
    let train = scenes();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    swav_epochs(&train, &run, 1, false);
    let (cfg, trained) = load_trained_encoder(&run, &Device::Cpu).unwrap();
    let raw = extract(trained.as_ref(), &train, 64, &Device::Cpu, "test").unwrap();
    let whitening = EmbeddingWhitening::fit(&raw, 16, 6).unwrap();
    run.write_json(WHITENING_FILE, &whitening).unwrap();
    let (_, encoder) = load_encoder(&run, &Device::Cpu).unwrap();
    assert_eq!(encoder.embed_dim(), 6);
    let white = extract(encoder.as_ref(), &train, 64, &Device::Cpu, "test").unwrap();
    let expected = whitening.apply(&raw);
    assert!(white
        .iter()
        .zip(&expected)
        .all(|(a, b)| (a - b).abs() < 1e-3));

    let out = dir.path().join("model");
    let ecfg = ExportConfig {
        calibration_images: 32,
        centroids_k: 6,
        ..Default::default()
    };
    let manifest = export(encoder.as_ref(), &cfg, "test", &train, &out, &ecfg).unwrap();
    assert_eq!(manifest.embedding.dim, 6);
    assert_eq!(manifest.centroids.expect("k-means centroids").dim, 6);
    let vcfg = small_verify();
    let r = verify(encoder.as_ref(), &out, &train, &train, &vcfg).unwrap();
    assert!(r.fp32_max_abs_diff <= 1e-4, "{r:?}");

    let wrong = EmbeddingWhitening::fit(&raw[..16 * 40], 8, 4);
    assert!(wrong.is_ok());
    run.write_json(WHITENING_FILE, &wrong.unwrap()).unwrap();
    let e = load_encoder(&run, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains(WHITENING_FILE) && e.contains("8-d"), "{e}");
}
