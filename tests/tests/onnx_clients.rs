//! The exported default model against real ONNX clients from PyPI (onnx's full checker and
//! onnxruntime), through `tests/clients/onnx_clients.py`.
//!
//! `ONNX_PYTHON` names a Python with onnx, onnxruntime and numpy; `./scripts/test` makes one.
//! Without it the test says so and passes vacuously (a plain `cargo test` stays offline).

use std::path::{Path, PathBuf};
use std::process::Command;

use edge_runtime::backend::{embed_images, PrepareOptions, Runtime, TractRuntime};
use edge_runtime::bundle::ModelBundle;
use edge_runtime::npy::npy_f32;
use edge_runtime::preprocess::Preprocessor;
use models::manifest::Precision;

const IMAGES: usize = 512;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn onnx_checker_and_onnxruntime_agree_with_tract() {
    let Some(python) = std::env::var_os("ONNX_PYTHON") else {
        eprintln!("ONNX_PYTHON is not set: skipping the onnx/onnxruntime client check");
        return;
    };
    let model = std::env::var_os("MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("models/fashion-mnist-small-cnn"));
    let data = integration_tests::fashion_mnist_dir();
    let out = tempfile::tempdir().unwrap();
    let mut npys = Vec::new();
    for precision in [Precision::Fp32, Precision::Int8] {
        let bundle = ModelBundle::load(&model, precision).unwrap();
        let pre = Preprocessor::new(bundle.manifest.preprocess.clone());
        let set = pre
            .read_source(data.to_str().unwrap(), false)
            .unwrap()
            .take(IMAGES);
        let options = PrepareOptions {
            batch: 64,
            threads: 1,
        };
        let run = TractRuntime.prepare(&bundle, &options).unwrap();
        let emb = embed_images(run.as_ref(), &pre, &set).unwrap();
        let path = out.path().join(format!("{precision:?}.npy"));
        std::fs::write(&path, npy_f32(&emb, set.len(), run.embed_dim())).unwrap();
        npys.push(path);
    }
    let idx = data.join("t10k-images-idx3-ubyte.gz");
    let status = Command::new(python)
        .arg(workspace().join("tests/clients/onnx_clients.py"))
        .arg(&model)
        .arg(&idx)
        .arg(IMAGES.to_string())
        .args(&npys)
        .status()
        .expect("run the Python client check");
    assert!(status.success(), "onnx/onnxruntime client check failed");
}
