//! The `ort` backend (onnxruntime loaded at run time) against tract on the committed model and
//! real Fashion-MNIST images. Needs `--features ort` and `ORT_DYLIB_PATH`; `./scripts/test`
//! points it at the libonnxruntime.so of the PyPI wheel it installs.
#![cfg(feature = "ort")]

use std::path::{Path, PathBuf};

use edge_runtime::backend::{embed_images, OrtRuntime, PrepareOptions, Runtime, TractRuntime};
use edge_runtime::bundle::ModelBundle;
use edge_runtime::preprocess::Preprocessor;
use models::data::fashion_mnist_dir;
use models::manifest::Precision;

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fashion-mnist-small-cnn")
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn onnxruntime_matches_tract_on_the_default_model() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        eprintln!("ORT_DYLIB_PATH is not set: skipping the ort backend check");
        return;
    }
    let ort = OrtRuntime::from_env().unwrap();
    for (precision, batch) in [(Precision::Fp32, 16), (Precision::Int8, 7)] {
        let bundle = ModelBundle::load(&model_dir(), precision).unwrap();
        let pre = Preprocessor::new(bundle.manifest.preprocess.clone());
        // 100 images: batch 7 leaves a short last batch.
        let set = pre
            .read_source(fashion_mnist_dir().to_str().unwrap(), false)
            .unwrap()
            .take(100);
        let options = PrepareOptions { batch, threads: 1 };
        let ours =
            embed_images(ort.prepare(&bundle, &options).unwrap().as_ref(), &pre, &set).unwrap();
        let tract = embed_images(
            TractRuntime.prepare(&bundle, &options).unwrap().as_ref(),
            &pre,
            &set,
        )
        .unwrap();
        assert_eq!(ours.len(), tract.len());
        let dim = bundle.manifest.embedding.dim as usize;
        let max_diff = ours
            .iter()
            .zip(&tract)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let worst_cos = ours
            .chunks(dim)
            .zip(tract.chunks(dim))
            .map(|(a, b)| cosine(a, b))
            .fold(1.0f32, f32::min);
        eprintln!("{precision:?}: max |ort - tract| {max_diff:.2e}, worst cosine {worst_cos:.6}");
        match precision {
            Precision::Fp32 => assert!(max_diff < 1e-4, "fp32 differs by {max_diff}"),
            // onnxruntime fuses QDQ into integer kernels; tract dequantises to float.
            Precision::Int8 => assert!(worst_cos > 0.999, "int8 cosine {worst_cos}"),
        }
    }
    // In the same test, after the good library: ort keeps the first library it loads, and a
    // failed first load would leave nothing for the check above.
    let e = OrtRuntime::new(Path::new("/nonexistent/libonnxruntime.so")).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("/nonexistent/libonnxruntime.so"), "{msg}");
}

#[test]
fn a_gpu_provider_the_library_lacks_is_an_error_not_a_cpu_fallback() {
    use edge_runtime::backend::{Provider, TensorRtOptions};
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        eprintln!("ORT_DYLIB_PATH is not set: skipping the ort provider check");
        return;
    }
    // The PyPI wheel that ./scripts/test loads is CPU-only.
    let bundle = ModelBundle::load(&model_dir(), Precision::Int8).unwrap();
    let options = PrepareOptions::default();
    for (provider, name) in [
        (Provider::Cuda { device: 0 }, "CUDAExecutionProvider"),
        (
            Provider::TensorRt(TensorRtOptions {
                fp16: true,
                int8: true,
                ..Default::default()
            }),
            "TensorrtExecutionProvider",
        ),
    ] {
        let ort = OrtRuntime::from_env().unwrap().with_provider(provider);
        let err = ort
            .prepare(&bundle, &options)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains(name)
                && err.contains("refusing to fall back")
                && err.contains("libonnxruntime"),
            "{err}"
        );
    }
    // The CPU provider still runs.
    let cpu = OrtRuntime::from_env().unwrap().with_provider(Provider::Cpu);
    assert!(cpu.prepare(&bundle, &options).is_ok());
}
