//! Export: BatchNorm folding is exact, the ONNX files round-trip through tract (the edge
//! runtime's backend) with the parity targets, and bad model files get clear errors.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use edge_runtime::backend::{PrepareOptions, Runtime, TractRuntime};
use edge_runtime::bundle::{read_manifest, ModelBundle};
use edge_runtime::EdgeError;
use host_train::augment::AugmentConfig;
use host_train::dataset::{load_images, DataSpec, Normalization, TrainSet};
use host_train::encoders::{Arch, Encoder};
use host_train::export::verify::{verify, VerifyConfig};
use host_train::export::{export, ExportConfig, FP32_FILE, INT8_FILE};
use host_train::pretrain::RunConfig;
use models::manifest::{EncoderManifest, ManifestError, Precision};

/// An untrained encoder whose BatchNorm running statistics moved away from (0, 1), so
/// folding has something to fold.
fn encoder(c: usize, sobel: bool, size: usize) -> (VarMap, Box<dyn Encoder>) {
    encoder_of(Arch::SmallCnn, c, sobel, size)
}

fn encoder_of(arch: Arch, c: usize, sobel: bool, size: usize) -> (VarMap, Box<dyn Encoder>) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let enc = arch.build((c, size, size), 16, sobel, vb).unwrap();
    for step in 0..5 {
        let x =
            Tensor::randn(0.5f32 * step as f32, 2.0, (16, c, size, size), &Device::Cpu).unwrap();
        enc.embed(&x, true).unwrap();
    }
    (vm, enc)
}

#[test]
fn batch_norm_folding_is_exact() {
    for (c, sobel, size) in [(1, false, 28), (1, true, 28), (3, true, 32)] {
        let (_vm, enc) = encoder(c, sobel, size);
        let x = Tensor::randn(0f32, 1.0, (8, c, size, size), &Device::Cpu).unwrap();
        let want = enc.embed(&x, false).unwrap();
        let graph = enc.folded_graph([c, size, size]).unwrap();
        let got = graph.forward(&x, |_, _| Ok(())).unwrap();
        let d = max_abs_diff(&want, &got);
        assert!(d <= 1e-5, "c {c} sobel {sobel}: folded differs by {d}");
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn fashion_mnist_slice(n: usize) -> (RunConfig, TrainSet, TrainSet) {
    let dir = models::data::fashion_mnist_dir();
    assert!(
        models::data::looks_like_fashion_mnist(&dir),
        "Fashion-MNIST not in {}: run ./scripts/test",
        dir.display()
    );
    let spec = DataSpec {
        limit: Some(n),
        ..DataSpec::new(dir.to_string_lossy().into_owned(), 28)
    };
    let (train, test) = load_images(&spec).unwrap();
    let norm = Normalization::measure(&train);
    let cfg = RunConfig {
        method: host_train::methods::Method::Deepcluster,
        arch: Arch::SmallCnn,
        data: spec,
        epochs: 0,
        batch_size: 64,
        embed_dim: 16,
        sobel: false,
        seed: 3,
        normalization: norm.clone(),
        input: (1, 28, 28),
        augment: AugmentConfig::default(),
        deepcluster: Default::default(),
        npid: Default::default(),
        la: Default::default(),
        swav: Default::default(),
        figure_pairs: Default::default(),
        eval_every: 1,
    };
    (
        cfg,
        TrainSet::new(train, norm.clone()).unwrap(),
        TrainSet::new(test.unwrap(), norm).unwrap(),
    )
}

fn exported() -> (tempfile::TempDir, Box<dyn Encoder>, TrainSet, TrainSet) {
    let (cfg, train, test) = fashion_mnist_slice(1200);
    let (_vm, enc) = encoder(1, false, 28);
    let dir = tempfile::tempdir().unwrap();
    let ecfg = ExportConfig {
        calibration_images: 256,
        centroids_k: 5,
        ..Default::default()
    };
    export(enc.as_ref(), &cfg, "runs/test", &train, dir.path(), &ecfg).unwrap();
    (dir, enc, train, test)
}

#[test]
fn export_round_trips_through_tract_within_the_parity_targets() {
    let (dir, enc, train, test) = exported();
    let manifest = read_manifest(dir.path()).unwrap();
    // JSON and postcard carry the same manifest; the files match their hashes.
    let postcard = std::fs::read(dir.path().join("manifest.postcard")).unwrap();
    assert_eq!(EncoderManifest::from_postcard(&postcard).unwrap(), manifest);
    for p in [Precision::Fp32, Precision::Int8] {
        ModelBundle::load(dir.path(), p).unwrap();
    }
    let q = manifest.model(Precision::Int8).unwrap();
    let quant = q.quantization.as_ref().unwrap();
    // Three convs and the projection, each with an input scale and per-channel weight scales.
    assert_eq!(quant.activations.len(), 4);
    assert_eq!(quant.weights[0].scales.len(), 32);
    assert_eq!(manifest.centroids.as_ref().unwrap().k, 5);
    assert!(q.bytes * 3 < manifest.model(Precision::Fp32).unwrap().bytes);

    let cfg = VerifyConfig {
        test_images: 200,
        train_images: 1200,
        batch: 64,
        seed: 1,
        adapter: None,
    };
    let r = verify(enc.as_ref(), dir.path(), &train, &test, &cfg).unwrap();
    assert!(r.fp32_max_abs_diff <= 1e-4, "{r:?}");
    assert!(r.int8_mean_cosine >= 0.99, "{r:?}");
    assert!(r.knn_fp32.is_some() && r.knn_int8.is_some());
    assert!(r.table().contains("| candle fp32 vs tract fp32 |"));
}

/// A board's adapter folded into the export: the ONNX model embeds as the adapted board did
/// (parity against the candle encoder followed by the adapter), and the training statistics
/// beside the manifest are those of the folded model.
#[test]
fn a_folded_adapter_reaches_the_exported_model() {
    let (cfg, train, test) = fashion_mnist_slice(600);
    let (_vm, enc) = encoder(1, false, 28);
    let mut rng = models::rng::Rng::new(5);
    let mut layer = models::adapt::LinearAdapter::identity(16);
    layer
        .weight
        .iter_mut()
        .for_each(|w| *w += 0.2 * rng.next_gaussian() as f32);
    layer.bias.iter_mut().for_each(|b| *b = 0.5);
    let adapter = models::adapt::AdapterExport::compose(1, "board", 3, 900, &layer, None, None);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&adapter).unwrap()).unwrap();
    let adapter = host_train::export::fold::read_adapter(file.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ecfg = ExportConfig {
        calibration_images: 64,
        centroids_k: 5,
        adapter: Some(adapter.clone()),
        ..Default::default()
    };
    export(enc.as_ref(), &cfg, "runs/test", &train, dir.path(), &ecfg).unwrap();
    let vcfg = |adapter| VerifyConfig {
        test_images: 100,
        train_images: 300,
        batch: 50,
        seed: 1,
        adapter,
    };
    let r = verify(
        enc.as_ref(),
        dir.path(),
        &train,
        &test,
        &vcfg(Some(adapter)),
    )
    .unwrap();
    assert!(r.fp32_max_abs_diff <= 1e-4, "{r:?}");
    // Against the encoder without the adapter, the export differs: the fold took.
    let r = verify(enc.as_ref(), dir.path(), &train, &test, &vcfg(None)).unwrap();
    assert!(r.fp32_max_abs_diff > 0.1, "{r:?}");
    let stats: models::adapt::EmbeddingStats = serde_json::from_slice(
        &std::fs::read(dir.path().join(models::adapt::EMBEDDING_STATS_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!((stats.dim, stats.images), (16, train.len() as u64));
    // The board's input statistics move into the manifest's normalisation.
    let mut input = models::adapt::InputStats::new(1, 0, 1);
    input.observe(&[1.0, 2.0, 3.0, 4.0]);
    let with_input =
        models::adapt::AdapterExport::compose(2, "board", 3, 900, &layer, None, Some(&input));
    let out = tempfile::tempdir().unwrap();
    let ecfg = ExportConfig {
        calibration_images: 16,
        centroids_k: 0,
        adapter: Some(with_input),
        ..Default::default()
    };
    let manifest = export(enc.as_ref(), &cfg, "runs/test", &train, out.path(), &ecfg).unwrap();
    let (mean, std) = (cfg.normalization.mean[0], cfg.normalization.std[0]);
    let seen_std = 1.25f32.sqrt();
    assert!((manifest.preprocess.mean[0] - (mean + std * 2.5)).abs() < 1e-5);
    assert!((manifest.preprocess.std[0] - std * seen_std).abs() < 1e-5);
    // A file that is not an adapter is refused by name.
    std::fs::write(file.path(), b"{}").unwrap();
    let err = host_train::export::fold::read_adapter(file.path()).unwrap_err();
    assert!(
        err.to_string().contains("edge-runtime adapt export"),
        "{err}"
    );
}

/// resnet18's residual sums go through folding, ONNX (Add nodes), calibration and QDQ.
#[test]
fn resnet18_exports_with_its_residual_sums() {
    let (_vm, enc) = encoder_of(Arch::Resnet18, 1, false, 28);
    let x = Tensor::randn(0f32, 1.0, (4, 1, 28, 28), &Device::Cpu).unwrap();
    let want = enc.embed(&x, false).unwrap();
    let graph = enc.folded_graph([1, 28, 28]).unwrap();
    // The stem, 16 block convs, 3 shortcut projections and the projection.
    assert_eq!(graph.quantized().len(), 21);
    let got = graph.forward(&x, |_, _| Ok(())).unwrap();
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let d = max_abs_diff(&want, &got);
    assert!(
        d <= 1e-5 * scale.max(1.0),
        "folded differs by {d} (scale {scale})"
    );

    let (mut cfg, train, test) = fashion_mnist_slice(240);
    cfg.arch = Arch::Resnet18;
    let dir = tempfile::tempdir().unwrap();
    let ecfg = ExportConfig {
        calibration_images: 64,
        centroids_k: 5,
        ..Default::default()
    };
    let manifest = export(enc.as_ref(), &cfg, "runs/test", &train, dir.path(), &ecfg).unwrap();
    assert_eq!(manifest.arch, "resnet18");
    let quant = manifest
        .model(Precision::Int8)
        .unwrap()
        .quantization
        .as_ref()
        .unwrap();
    assert_eq!(quant.activations.len(), 21);
    // Activation names are tensors of the int8 graph: a block's second conv reads its body.
    assert!(
        quant.activations.iter().any(|a| a.tensor.contains(".body")),
        "{quant:?}"
    );
    let vcfg = VerifyConfig {
        test_images: 40,
        train_images: 240,
        batch: 40,
        seed: 1,
        adapter: None,
    };
    let r = verify(enc.as_ref(), dir.path(), &train, &test, &vcfg).unwrap();
    assert!(r.fp32_max_abs_diff <= 1e-4, "{r:?}");
    assert!(r.int8_mean_cosine >= 0.99, "{r:?}");
}

fn expect_manifest_error(dir: &std::path::Path, precision: Precision) -> ManifestError {
    match ModelBundle::load(dir, precision) {
        Err(EdgeError::Manifest { source, .. }) => source,
        other => panic!("expected a manifest error, got {other:?}"),
    }
}

#[test]
fn bad_model_files_get_clear_errors() {
    let (dir, _enc, _train, _test) = exported();
    let path = dir.path().join(INT8_FILE);
    let good = std::fs::read(&path).unwrap();

    // Truncated: the size check names the file.
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let e = expect_manifest_error(dir.path(), Precision::Int8);
    assert!(matches!(e, ManifestError::Size { .. }) && e.to_string().contains(INT8_FILE));

    // One byte changed: the hash check refuses it.
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    std::fs::write(&path, &flipped).unwrap();
    assert!(matches!(
        expect_manifest_error(dir.path(), Precision::Int8),
        ManifestError::Hash { .. }
    ));

    // Truncated, with a manifest rewritten to match it: tract's parse error names the file.
    let mut manifest = read_manifest(dir.path()).unwrap();
    let half = &good[..good.len() / 2];
    std::fs::write(&path, half).unwrap();
    let entry = manifest
        .models
        .iter_mut()
        .find(|m| m.file == INT8_FILE)
        .unwrap();
    entry.bytes = half.len() as u64;
    entry.sha256 = models::manifest::sha256_hex(half);
    let write_manifest = |m: &EncoderManifest| {
        std::fs::write(
            dir.path().join("manifest.json"),
            serde_json::to_vec(m).unwrap(),
        )
        .unwrap()
    };
    write_manifest(&manifest);
    let bundle = ModelBundle::load(dir.path(), Precision::Int8).unwrap();
    let e = TractRuntime
        .prepare(&bundle, &PrepareOptions::default())
        .err()
        .expect("a truncated model must not load");
    assert!(matches!(e, EdgeError::Model { .. }), "{e}");
    assert!(e.to_string().contains(INT8_FILE), "{e}");

    // A manifest that promises another input size than the graph declares.
    let mut wrong = read_manifest(dir.path()).unwrap();
    (wrong.input.height, wrong.input.width) = (32, 32);
    (wrong.preprocess.height, wrong.preprocess.width) = (32, 32);
    write_manifest(&wrong);
    let bundle = ModelBundle::load(dir.path(), Precision::Fp32).unwrap();
    let e = TractRuntime
        .prepare(&bundle, &PrepareOptions::default())
        .err()
        .expect("a shape mismatch must not load");
    assert!(
        matches!(
            e,
            EdgeError::Manifest {
                source: ManifestError::Shape { .. },
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains(FP32_FILE), "{e}");

    // The right model, fed the wrong number of values.
    wrong.input = manifest.input.clone();
    wrong.preprocess = manifest.preprocess.clone();
    write_manifest(&wrong);
    let bundle = ModelBundle::load(dir.path(), Precision::Fp32).unwrap();
    let run = TractRuntime
        .prepare(&bundle, &PrepareOptions::default())
        .unwrap();
    assert!(matches!(
        run.run(&[0.0; 10], 1),
        Err(EdgeError::InputShape { .. })
    ));
    assert_eq!(run.run(&vec![0.0; 784], 1).unwrap().len(), 16);

    // A garbled manifest names the manifest.
    std::fs::write(dir.path().join("manifest.json"), b"{ not json").unwrap();
    let e = read_manifest(dir.path()).unwrap_err();
    assert!(e.to_string().contains("manifest.json"), "{e}");
}

/// alexnet-bn's overlapping 3x3/2 pools, Flatten and linear chain, written as ONNX and run by
/// tract as the edge runtime prepares it: the same embeddings as candle.
#[test]
fn alexnet_bn_onnx_runs_in_tract() {
    use host_train::encoders::{AlexNetBn, AlexNetBnConfig};
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let cfg = AlexNetBnConfig {
        in_channels: 3,
        input_hw: (67, 67),
        widths: [8, 16, 16, 16, 8],
        hidden: 32,
        embed_dim: 8,
        sobel: true,
    };
    let net = AlexNetBn::new(cfg, vb).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 3, 67, 67), &Device::Cpu).unwrap();
    assert_tract_matches(&net.folded_graph([3, 67, 67]).unwrap(), &x);
}

/// small-cnn-flat: the flattened map feeds the projection, in candle and in tract.
#[test]
fn small_cnn_flat_onnx_runs_in_tract() {
    let (_vm, enc) = encoder_of(Arch::SmallCnnFlat, 1, false, 28);
    assert_eq!(enc.feature_dim(), 128 * 7 * 7);
    let x = Tensor::randn(0f32, 1.0, (3, 1, 28, 28), &Device::Cpu).unwrap();
    let graph = enc.folded_graph([1, 28, 28]).unwrap();
    let want = enc.embed(&x, false).unwrap();
    let folded = graph.forward(&x, |_, _| Ok(())).unwrap();
    let d = max_abs_diff(&want, &folded);
    assert!(d <= 1e-4, "folded differs by {d}");
    assert_tract_matches(&graph, &x);
}

/// small-cnn-in: the InstanceNorm layers, unfolded, give candle's embeddings in the graph
/// and in tract, whatever the light level of the input.
#[test]
fn small_cnn_in_onnx_runs_in_tract() {
    let (_vm, enc) = encoder_of(Arch::SmallCnnIn, 3, false, 32);
    let x = Tensor::randn(0.3f32, 2.0, (3, 3, 32, 32), &Device::Cpu).unwrap();
    let graph = enc.folded_graph([3, 32, 32]).unwrap();
    let want = enc.embed(&x, false).unwrap();
    let d = max_abs_diff(&want, &graph.forward(&x, |_, _| Ok(())).unwrap());
    assert!(d <= 1e-4, "graph differs by {d}");
    assert_tract_matches(&graph, &x);
}

/// The graph's ONNX, optimised as the edge runtime does, gives the folded graph's outputs.
fn assert_tract_matches(graph: &host_train::export::FoldedGraph, x: &Tensor) {
    use tract_onnx::prelude::*;
    let want: Vec<f32> = graph
        .forward(x, |_, _| Ok(()))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let shape: [usize; 4] = x.dims4().unwrap().into();
    let onnx = host_train::export::onnx::write_onnx(graph, None, "test");
    let (model, _) = edge_runtime::backend::optimized_model(&onnx, shape, true).unwrap();
    let input = tract_onnx::prelude::Tensor::from_shape(
        &shape,
        &x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    )
    .unwrap();
    let out = model
        .into_runnable()
        .unwrap()
        .run(tvec!(input.into_tvalue()))
        .unwrap();
    let got: Vec<f32> = out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    assert_eq!(got.len(), want.len());
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
    assert!(
        worst <= 1e-5 * scale.max(1.0),
        "tract differs by {worst} (scale {scale})"
    );
}
