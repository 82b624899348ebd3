//! The parity report of `host-train export --verify`: the exported files, run by the edge
//! runtime's tract backend (after its manifest hash and shape checks), against candle.

use std::path::Path;

use candle_core::Device;
use edge_runtime::backend::{PrepareOptions, Runnable, Runtime, TractRuntime};
use edge_runtime::bundle::ModelBundle;
use models::cluster::{KMeansInit, KMeansParams};
use models::linalg::l2_normalize_rows;
use models::manifest::Precision;
use models::metrics::{clustering_accuracy, WeightedKnnParams};
use models::MatRef;
use serde::Serialize;

use crate::augment::AugmentConfig;
use crate::dataset::TrainSet;
use crate::encoders::Encoder;
use crate::features::extract;
use crate::TrainError;

/// Limits of a verification run.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyConfig {
    /// Test images embedded by every path.
    pub test_images: usize,
    /// Train images the kNN reference is built from.
    pub train_images: usize,
    pub batch: usize,
    pub seed: u64,
    /// A board adapter folded into the export: the candle reference passes through it too.
    pub adapter: Option<models::adapt::AdapterExport>,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            test_images: 10_000,
            train_images: 10_000,
            batch: 256,
            seed: 0,
            adapter: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParityReport {
    pub test_images: usize,
    pub train_images: usize,
    /// candle fp32 vs tract fp32, raw embeddings.
    pub fp32_max_abs_diff: f64,
    /// Mean cosine of int8 and fp32 embeddings (both tract).
    pub int8_mean_cosine: f64,
    /// Weighted kNN top-1 (k = 200) with fp32 and with int8 features, when labels exist.
    pub knn_fp32: Option<f64>,
    pub knn_int8: Option<f64>,
    /// Share of test images whose int8 embedding falls in the same k-means cluster (fitted
    /// on the fp32 embeddings) as its fp32 embedding, after Hungarian matching.
    pub kmeans_agreement: f64,
    pub kmeans_k: usize,
    pub fp32_bytes: u64,
    pub int8_bytes: u64,
}

/// One row of the report's table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub comparison: &'static str,
    pub measure: &'static str,
    pub value: String,
    pub target: &'static str,
    pub passed: Option<bool>,
}

impl ParityReport {
    pub fn knn_drop_points(&self) -> Option<f64> {
        Some((self.knn_fp32? - self.knn_int8?) * 100.0)
    }

    pub fn checks(&self) -> Vec<Check> {
        let drop = self.knn_drop_points();
        vec![
            Check {
                comparison: "candle fp32 vs tract fp32",
                measure: "max abs difference of the embeddings",
                value: format!("{:.2e}", self.fp32_max_abs_diff),
                target: "<= 1e-4",
                passed: Some(self.fp32_max_abs_diff <= 1e-4),
            },
            Check {
                comparison: "int8 vs fp32",
                measure: "mean cosine",
                value: format!("{:.5}", self.int8_mean_cosine),
                target: ">= 0.99",
                passed: Some(self.int8_mean_cosine >= 0.99),
            },
            Check {
                comparison: "int8 vs fp32",
                measure: "drop in weighted-kNN top-1",
                value: match (drop, self.knn_fp32, self.knn_int8) {
                    (Some(d), Some(f), Some(i)) => {
                        format!("{d:.2} points ({:.2}% -> {:.2}%)", f * 100.0, i * 100.0)
                    }
                    _ => "n/a (no labels)".into(),
                },
                target: "<= 0.5 points",
                passed: drop.map(|d| d <= 0.5),
            },
            Check {
                comparison: "int8 vs fp32",
                measure: "k-means assignment agreement (Hungarian)",
                value: format!(
                    "{:.2}% (k = {})",
                    self.kmeans_agreement * 100.0,
                    self.kmeans_k
                ),
                target: ">= 97%",
                passed: Some(self.kmeans_agreement >= 0.97),
            },
            Check {
                comparison: "fp32 vs int8",
                measure: "model size",
                value: format!(
                    "{} vs {} bytes ({:.2}x smaller)",
                    self.fp32_bytes,
                    self.int8_bytes,
                    self.fp32_bytes as f64 / self.int8_bytes.max(1) as f64
                ),
                target: "reported",
                passed: None,
            },
        ]
    }

    pub fn passed(&self) -> bool {
        self.checks().iter().all(|c| c.passed != Some(false))
    }

    /// The report as a Markdown table.
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| comparison | measure | value | target | result |\n|---|---|---|---|---|\n",
        );
        for c in self.checks() {
            let result = match c.passed {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "-",
            };
            s += &format!(
                "| {} | {} | {} | {} | {} |\n",
                c.comparison, c.measure, c.value, c.target, result
            );
        }
        s
    }
}

/// Runs the exported models in `dir` against `encoder` on `test` (and `train` for kNN).
pub fn verify(
    encoder: &dyn Encoder,
    dir: &Path,
    train: &TrainSet,
    test: &TrainSet,
    cfg: &VerifyConfig,
) -> Result<ParityReport, TrainError> {
    let fp32 = ModelBundle::load(dir, Precision::Fp32)?;
    let int8 = ModelBundle::load(dir, Precision::Int8)?;
    let options = PrepareOptions {
        batch: cfg.batch,
        threads: 1,
    };
    let run32 = TractRuntime.prepare(&fp32, &options)?;
    let run8 = TractRuntime.prepare(&int8, &options)?;
    let dim = run32.embed_dim();

    let test = subset(test, cfg.test_images);
    let mut candle = extract(encoder, &test, cfg.batch, &Device::Cpu, "candle fp32")?;
    if let Some(a) = &cfg.adapter {
        a.apply_rows(&mut candle);
    }
    let t32 = embed(run32.as_ref(), &test, cfg.batch)?;
    let t8 = embed(run8.as_ref(), &test, cfg.batch)?;
    let fp32_max_abs_diff = candle
        .iter()
        .zip(&t32)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));

    let (mut n32, mut n8) = (t32.clone(), t8.clone());
    l2_normalize_rows(&mut n32, dim);
    l2_normalize_rows(&mut n8, dim);
    let int8_mean_cosine = n32
        .chunks(dim)
        .zip(n8.chunks(dim))
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum::<f64>())
        .sum::<f64>()
        / test.len() as f64;

    let (mut knn_fp32, mut knn_int8) = (None, None);
    let train = subset(train, cfg.train_images);
    if let (Some(tl), Some(ql)) = (&train.images.labels, &test.images.labels) {
        let knn = WeightedKnnParams::default().check()?;
        for (run, out) in [(&run32, &mut knn_fp32), (&run8, &mut knn_int8)] {
            let mut reference = embed(run.as_ref(), &train, cfg.batch)?;
            let mut queries = embed(run.as_ref(), &test, cfg.batch)?;
            l2_normalize_rows(&mut reference, dim);
            l2_normalize_rows(&mut queries, dim);
            *out = Some(knn.top1(
                MatRef::new(&reference, dim)?,
                tl,
                MatRef::new(&queries, dim)?,
                ql,
            )?);
        }
    }

    let kmeans_k = fp32.manifest.centroid_count_or(10);
    // k-means on the fp32 embeddings; the int8 embeddings are assigned to the same
    // centroids. The two assignments then differ only by what quantisation moved across a
    // boundary, not by which local optimum a second k-means run fell into (short-trained
    // models have many, a few points of agreement apart).
    let params = KMeansParams::new(kmeans_k)
        .seed(cfg.seed)
        .init(KMeansInit::Random)
        .n_redo(3)
        .check()?;
    let fit32 = params.fit(MatRef::new(&n32, dim)?)?;
    let a8 = fit32.model.predict(MatRef::new(&n8, dim)?)?.0;
    let a32 = fit32.labels;
    Ok(ParityReport {
        test_images: test.len(),
        train_images: train.len(),
        fp32_max_abs_diff,
        int8_mean_cosine,
        knn_fp32,
        knn_int8,
        kmeans_agreement: clustering_accuracy(&a32, &a8)?,
        kmeans_k,
        fp32_bytes: fp32.bytes.len() as u64,
        int8_bytes: int8.bytes.len() as u64,
    })
}

fn subset(set: &TrainSet, n: usize) -> TrainSet {
    TrainSet {
        images: set.images.take(n.min(set.len())),
        norm: set.norm.clone(),
    }
}

/// Embeddings of every image of `set` through a backend, rows of `embed_dim`.
pub fn embed(run: &dyn Runnable, set: &TrainSet, batch: usize) -> Result<Vec<f32>, TrainError> {
    let idx: Vec<usize> = (0..set.len()).collect();
    let mut out = Vec::with_capacity(set.len() * run.embed_dim());
    for chunk in idx.chunks(batch.min(run.batch()).max(1)) {
        let x = set.batch(chunk, &AugmentConfig::none(), 0, &Device::Cpu)?;
        let data = x.flatten_all()?.to_vec1::<f32>()?;
        out.extend(run.run(&data, chunk.len())?);
    }
    Ok(out)
}
