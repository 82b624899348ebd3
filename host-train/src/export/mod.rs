//! `host-train export`: fold BatchNorm, write ONNX in fp32 and QDQ int8 (calibrated on
//! training images), and a manifest that fixes the preprocessing, in JSON and postcard.
//!
//! - [`graph`]: the folded inference graph.
//! - [`onnx`]: the ONNX writer (prost types from `tract_onnx::pb`).
//! - [`quantize`]: calibration and per-channel weight quantisation.
//! - [`verify`]: the parity report (candle vs tract, int8 vs fp32).

pub mod fold;
pub mod onnx;
pub mod quantize;
pub mod verify;

pub use crate::graph::{BatchNormParams, Conv, FoldedGraph, Layer, Linear, Residual};

use std::path::Path;

use candle_core::Device;
use models::adapt::{EmbeddingStats, EMBEDDING_STATS_FILE};
use models::manifest::{
    sha256_hex, Centroids, EmbeddingSpec, EncoderManifest, InputSpec, Layout, ModelFile, Precision,
    Quantization, TensorQuant, WeightQuant, MANIFEST_VERSION,
};
use models::preprocess::{ColorMode, PreprocessSpec, ResizeMode};
use models::quant::Calibrator;
use models::rng::Rng;

use crate::augment::AugmentConfig;
use crate::dataset::TrainSet;
use crate::encoders::Encoder;
use crate::eval::{centroid_silhouette, cosine_kmeans};
use crate::features::extract;
use crate::pretrain::RunConfig;
use crate::run_dir::write_atomic;
use crate::TrainError;

pub const FP32_FILE: &str = "encoder.fp32.onnx";
pub const INT8_FILE: &str = "encoder.int8.onnx";

/// What `export` does beyond the fp32 graph.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportConfig {
    /// Training images the activation ranges are calibrated on (512, as TensorRT suggests).
    pub calibration_images: usize,
    pub calibrator: Calibrator,
    /// k of the k-means centroids stored in the manifest (0: none).
    pub centroids_k: usize,
    /// Centroids fixed by a cluster head (`host-train cluster-head`); when set they are
    /// stored instead of k-means centroids.
    pub head_centroids: Option<Centroids>,
    /// With head centroids: store whichever of them and k-means centroids (as many) cluster
    /// the training embeddings with the higher silhouette. Neither wins everywhere: SwAV's
    /// embeddings cluster better by k-means, NPID's by the head (docs/RESULTS.md).
    pub centroids_by_silhouette: bool,
    pub seed: u64,
    /// A board's adapter (`edge-runtime adapt export`) to fold into the last linear layer.
    pub adapter: Option<models::adapt::AdapterExport>,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            calibration_images: 512,
            calibrator: Calibrator::default(),
            centroids_k: 10,
            head_centroids: None,
            centroids_by_silhouette: false,
            seed: 0,
            adapter: None,
        }
    }
}

/// Exports `encoder` (trained with `run`) into the directory `out`; returns its manifest.
pub fn export(
    encoder: &dyn Encoder,
    run: &RunConfig,
    source_checkpoint: &str,
    train: &TrainSet,
    out: &Path,
    cfg: &ExportConfig,
) -> Result<EncoderManifest, TrainError> {
    let (c, h, w) = run.input;
    if matches!(
        models::data::DataSource::resolve(&run.data.source),
        Ok(models::data::DataSource::FashionMnist(_))
    ) && (h, w) != (28, 28)
    {
        // The manifest's resize modes cannot say "zero-pad": the board would stretch instead.
        return Err(TrainError::Config(format!(
            "the run was trained on Fashion-MNIST zero-padded to {h}x{w}; \
             the manifest can only describe 28x28 Fashion-MNIST inputs"
        )));
    }
    let mut graph = encoder.folded_graph([c, h, w])?;
    if let Some(a) = &cfg.adapter {
        fold::fold_adapter(&mut graph, a)?;
    }
    let doc = format!("{:?} encoder from {source_checkpoint}", run.arch);
    let fp32 = onnx::write_onnx(&graph, None, &doc);

    let batches = calibration_batches(train, cfg)?;
    let amax = quantize::calibrate(&graph, &batches, cfg.calibrator)?;
    let quant = quantize::quantize_graph(&graph, &amax);
    let int8 = onnx::write_onnx(&graph, Some(&quant), &doc);

    // The raw training embeddings, as the exported model computes them (adapter folded in):
    // their statistics go beside the manifest, for the board's statistics adaptation.
    let dim = encoder.embed_dim();
    let mut raw = extract(encoder, train, 512, &Device::Cpu, "training embeddings")?;
    if let Some(a) = &cfg.adapter {
        a.apply_rows(&mut raw);
    }
    let stats = EmbeddingStats::of_rows(&raw, dim);
    let centroids = match (&cfg.head_centroids, cfg.centroids_k) {
        (Some(head), _) if cfg.centroids_by_silhouette => {
            Some(head_or_kmeans(head, &raw, dim, cfg.seed)?)
        }
        (Some(head), _) => Some(head.clone()),
        (None, 0) => None,
        (None, k) => Some(train_centroids(raw, dim, k, cfg.seed)?),
    };
    // The device's input statistics, when the adapter has them, move into the preprocessing.
    let normalization = match &cfg.adapter {
        Some(a) => a.fold_normalization(&run.normalization.mean, &run.normalization.std),
        None => (
            run.normalization.mean.clone(),
            run.normalization.std.clone(),
        ),
    };
    let arch = serde_json::to_value(run.arch)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let manifest = EncoderManifest {
        version: MANIFEST_VERSION,
        arch,
        source_checkpoint: source_checkpoint.into(),
        input: InputSpec {
            name: onnx::INPUT_NAME.into(),
            layout: Layout::Nchw,
            channels: c as u32,
            height: h as u32,
            width: w as u32,
        },
        preprocess: PreprocessSpec {
            width: w as u32,
            height: h as u32,
            color: if c == 3 {
                ColorMode::Rgb
            } else {
                ColorMode::Gray
            },
            resize: ResizeMode::ShorterSideCenterCrop,
            mean: normalization.0,
            std: normalization.1,
            sobel_in_graph: run.sobel,
        },
        embedding: EmbeddingSpec {
            name: onnx::OUTPUT_NAME.into(),
            dim: graph.embed_dim as u32,
            l2_normalize: true,
        },
        models: vec![
            model_file(Precision::Fp32, FP32_FILE, &fp32, None),
            model_file(
                Precision::Int8,
                INT8_FILE,
                &int8,
                Some(quantization_record(
                    &graph,
                    &quant,
                    cfg,
                    batches_len(&batches),
                )),
            ),
        ],
        centroids,
    };
    manifest.validate()?;
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    write_atomic(&out.join(FP32_FILE), &fp32)?;
    write_atomic(&out.join(INT8_FILE), &int8)?;
    let stats_json = serde_json::to_vec(&stats).expect("statistics serialise");
    write_atomic(&out.join(EMBEDDING_STATS_FILE), &stats_json)?;
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    write_atomic(&out.join("manifest.postcard"), &manifest.to_postcard())?;
    // The JSON manifest last: a directory with it is complete.
    write_atomic(&out.join("manifest.json"), &json)?;
    Ok(manifest)
}

fn batches_len(batches: &[candle_core::Tensor]) -> usize {
    batches.iter().map(|b| b.dims()[0]).sum()
}

/// Un-augmented training images, drawn at random (seeded), in batches of 128.
fn calibration_batches(
    train: &TrainSet,
    cfg: &ExportConfig,
) -> Result<Vec<candle_core::Tensor>, TrainError> {
    let n = cfg.calibration_images.clamp(1, train.len());
    let mut rng = Rng::new(cfg.seed ^ 0xCA11_B8A7E);
    let idx = rng.sample_indices(train.len(), n);
    idx.chunks(128)
        .map(|chunk| train.batch(chunk, &AugmentConfig::none(), 0, &Device::Cpu))
        .collect()
}

/// A head's centroids against k-means centroids (as many) of the same training embeddings,
/// by the silhouette of the clusters each gives them (no labels).
#[derive(Debug, Clone, PartialEq)]
pub struct CentroidChoice {
    pub head_silhouette: f64,
    pub kmeans: Centroids,
    pub kmeans_silhouette: f64,
}

impl CentroidChoice {
    /// `emb`: the training embeddings (rows of `dim`) as the exported model computes them.
    pub fn measure(
        head: &Centroids,
        emb: &[f32],
        dim: usize,
        seed: u64,
    ) -> Result<Self, TrainError> {
        let kmeans = train_centroids(emb.to_vec(), dim, head.k as usize, seed)?;
        Ok(Self {
            head_silhouette: centroid_silhouette(emb, dim, &head.values, seed)?,
            kmeans_silhouette: centroid_silhouette(emb, dim, &kmeans.values, seed)?,
            kmeans,
        })
    }

    /// The head keeps a tie.
    pub fn kmeans_wins(&self) -> bool {
        self.kmeans_silhouette > self.head_silhouette
    }
}

/// `head` or k-means centroids of `emb`, whichever [`CentroidChoice`] prefers.
fn head_or_kmeans(
    head: &Centroids,
    emb: &[f32],
    dim: usize,
    seed: u64,
) -> Result<Centroids, TrainError> {
    let choice = CentroidChoice::measure(head, emb, dim, seed)?;
    tracing::info!(
        head = choice.head_silhouette,
        kmeans = choice.kmeans_silhouette,
        chosen = if choice.kmeans_wins() {
            "k-means"
        } else {
            "head"
        },
        "silhouette of the training embeddings' clusters"
    );
    Ok(if choice.kmeans_wins() {
        choice.kmeans
    } else {
        head.clone()
    })
}

/// k-means centroids of the L2-normalised `emb` (raw training embeddings, rows of `dim`).
fn train_centroids(
    emb: Vec<f32>,
    dim: usize,
    k: usize,
    seed: u64,
) -> Result<Centroids, TrainError> {
    // k-means optima differ by several NMI points on this data; the board starts from the
    // best of ten.
    let fit = cosine_kmeans(emb, dim, k, seed, 10)?;
    Ok(Centroids {
        k: k as u32,
        dim: dim as u32,
        values: fit.model.centroids().as_slice().to_vec(),
    })
}

fn model_file(
    precision: Precision,
    file: &str,
    bytes: &[u8],
    quantization: Option<Quantization>,
) -> ModelFile {
    ModelFile {
        precision,
        file: file.into(),
        bytes: bytes.len() as u64,
        sha256: sha256_hex(bytes),
        quantization,
    }
}

fn quantization_record(
    graph: &FoldedGraph,
    quant: &[quantize::LayerQuant],
    cfg: &ExportConfig,
    images: usize,
) -> Quantization {
    let mut activations = Vec::new();
    let mut weights = Vec::new();
    let inputs = onnx::quantized_inputs(graph);
    for ((layer, q), input) in graph.quantized().into_iter().zip(quant).zip(inputs) {
        if let Some(name) = layer.quantized_name() {
            activations.push(TensorQuant {
                tensor: input,
                scale: q.input_scale,
                zero_point: 0,
            });
            weights.push(WeightQuant {
                tensor: format!("{name}.weight"),
                axis: 0,
                scales: q.weight_scales.clone(),
            });
        }
    }
    Quantization {
        calibrator: cfg.calibrator,
        calibration_images: images as u32,
        activations,
        weights,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three tight groups of unit rows around the first three axes of 8-d space.
    fn three_groups() -> Vec<f32> {
        let mut rng = Rng::new(3);
        let mut rows = Vec::new();
        for i in 0..150 {
            let mut row = [0f32; 8];
            row[i % 3] = 1.0;
            row.iter_mut()
                .for_each(|v| *v += 0.1 * (rng.next_f64() as f32 - 0.5));
            rows.extend_from_slice(&row);
        }
        rows
    }

    fn centroids(rows: &[[f32; 8]]) -> Centroids {
        let mut values: Vec<f32> = rows.iter().flatten().copied().collect();
        models::linalg::l2_normalize_rows(&mut values, 8);
        Centroids {
            k: rows.len() as u32,
            dim: 8,
            values,
        }
    }

    fn axis(i: usize) -> [f32; 8] {
        let mut a = [0f32; 8];
        a[i] = 1.0;
        a
    }

    #[test]
    fn best_centroids_keep_a_head_that_separates_the_groups() {
        let emb = three_groups();
        let head = centroids(&[axis(0), axis(1), axis(2)]);
        let picked = head_or_kmeans(&head, &emb, 8, 1).unwrap();
        assert_eq!(picked, head);
    }

    #[test]
    fn best_centroids_replace_a_head_that_merges_two_groups() {
        let emb = three_groups();
        // The first centroid sits between two groups and takes both; the third is empty.
        let mut between = axis(0);
        between[1] = 1.0;
        let head = centroids(&[between, axis(2), axis(5)]);
        let choice = CentroidChoice::measure(&head, &emb, 8, 1).unwrap();
        assert!(
            choice.kmeans_wins() && choice.kmeans_silhouette > choice.head_silhouette + 0.1,
            "{choice:?}"
        );
        let picked = head_or_kmeans(&head, &emb, 8, 1).unwrap();
        assert_eq!(picked, choice.kmeans);
        assert_eq!((picked.k, picked.dim), (3, 8));
    }
}
