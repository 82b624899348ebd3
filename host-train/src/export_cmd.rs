//! `host-train export`: a run directory in, an exported model directory out.

use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::Device;
use clap::Args;
use host_train::dataset::{load_images, TrainSet};
use host_train::export::verify::{verify, VerifyConfig};
use host_train::export::{export as run_export, ExportConfig};
use host_train::pretrain::load_encoder;
use host_train::run_dir::RunDir;
use models::quant::Calibrator;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A run directory written by `host-train pretrain`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The model directory to write (ONNX fp32 + int8, manifest.json, manifest.postcard).
    #[arg(long)]
    out: PathBuf,
    /// Activation calibrator: min-max, percentile (99.99), percentile-P, or entropy.
    #[arg(long, default_value = "percentile")]
    calibrator: Calibrator,
    /// Training images to calibrate on.
    #[arg(long, default_value_t = 512)]
    calibration_images: usize,
    /// k of the training-set centroids stored in the manifest (0: none).
    #[arg(long, default_value_t = 10)]
    centroids: usize,
    /// Run the exported files with tract and print the parity report; fail if a target is missed.
    #[arg(long)]
    verify: bool,
    /// Test images (and train images for the kNN reference) the report uses.
    #[arg(long, default_value_t = 10_000)]
    verify_images: usize,
}

pub fn export(args: &ExportArgs) -> Result<()> {
    let run = RunDir::open(&args.checkpoint)?;
    let (cfg, encoder) = load_encoder(&run, &Device::Cpu)?;
    let (train, test) = load_images(&cfg.data)?;
    let train = TrainSet::new(train, cfg.normalization.clone())?;
    let ecfg = ExportConfig {
        calibration_images: args.calibration_images,
        calibrator: args.calibrator,
        centroids_k: args.centroids,
        seed: cfg.seed,
    };
    let source = args.checkpoint.display().to_string();
    let manifest = run_export(encoder.as_ref(), &cfg, &source, &train, &args.out, &ecfg)?;
    for m in &manifest.models {
        println!(
            "wrote {} ({:?}, {} bytes, sha256 {})",
            args.out.join(&m.file).display(),
            m.precision,
            m.bytes,
            m.sha256
        );
    }
    println!("wrote {}", args.out.join("manifest.json").display());
    if !args.verify {
        return Ok(());
    }
    // Without a held-out split (a plain image folder), the training images stand in.
    let test = match test {
        Some(t) => TrainSet::new(t, cfg.normalization.clone())?,
        None => train.clone(),
    };
    let vcfg = VerifyConfig {
        test_images: args.verify_images,
        train_images: args.verify_images,
        seed: cfg.seed,
        ..Default::default()
    };
    let report = verify(encoder.as_ref(), &args.out, &train, &test, &vcfg)?;
    println!(
        "\nparity on {} test images ({} train images for kNN), calibrator {}:\n",
        report.test_images, report.train_images, args.calibrator
    );
    print!("{}", report.table());
    let json = serde_json::to_vec_pretty(&report)?;
    std::fs::write(args.out.join("parity.json"), json)?;
    if !report.passed() {
        bail!("the exported model misses a parity target (see the table above)");
    }
    Ok(())
}
