//! `host-train export`: a run directory in, an exported model directory out.

use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::Device;
use clap::Args;
use host_train::cluster_head::{ClusterHead, HEAD_FILE};
use host_train::dataset::{load_images, TrainSet};
use host_train::export::fold::read_adapter;
use host_train::export::verify::{verify, VerifyConfig};
use host_train::export::{export as run_export, ExportConfig};
use host_train::pretrain::load_encoder;
use host_train::run_dir::RunDir;
use models::manifest::Centroids;
use models::quant::Calibrator;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A run directory written by `host-train pretrain`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The model directory to write (ONNX fp32 + int8, manifest.json, manifest.postcard).
    #[arg(long)]
    out: PathBuf,
    /// Activation calibrator: min-max, percentile (99.99), percentile-P, entropy, or `auto`:
    /// percentile, and with --verify min-max next when percentile misses a parity target.
    #[arg(long, default_value = "auto")]
    calibrator: CalibratorChoice,
    /// Training images to calibrate on.
    #[arg(long, default_value_t = 512)]
    calibration_images: usize,
    /// k of the training-set centroids stored in the manifest (0: none).
    #[arg(long, default_value_t = 10)]
    centroids: usize,
    /// Where the manifest's centroids come from: `head` (the run's cluster head, from
    /// `host-train cluster-head`), `kmeans` (k-means with --centroids), `auto` (the head when
    /// the run has one), or `best`: the head's centroids or k-means centroids (as many),
    /// whichever cluster the training embeddings with the higher silhouette (no labels).
    #[arg(long, value_enum, default_value = "auto")]
    centroids_from: CentroidSource,
    /// Run the exported files with tract and print the parity report; fail if a target is missed.
    #[arg(long)]
    verify: bool,
    /// Test images (and train images for the kNN reference) the report uses.
    #[arg(long, default_value_t = 10_000)]
    verify_images: usize,
    /// Fold a board's adapter (the JSON of `edge-runtime adapt export`) into the encoder's last
    /// linear layer, so that the exported model embeds as the adapted board did.
    #[arg(long)]
    fold_adapter: Option<PathBuf>,
}

/// `--calibrator`: one calibrator, or the first of several that passes the parity check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CalibratorChoice {
    Auto,
    Fixed(Calibrator),
}

impl std::str::FromStr for CalibratorChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            _ => s
                .parse()
                .map(Self::Fixed)
                .map_err(|e| format!("{e}, or auto")),
        }
    }
}

impl CalibratorChoice {
    /// The calibrators to try, in order. Percentile clips rare outliers for finer steps;
    /// min-max keeps them, which a model whose embedding leans on rare large activations
    /// needs. Without a parity check there is nothing to choose by.
    fn candidates(self, verify: bool) -> Vec<Calibrator> {
        match (self, verify) {
            (Self::Fixed(c), _) => vec![c],
            (Self::Auto, false) => vec![Calibrator::default()],
            (Self::Auto, true) => vec![Calibrator::default(), Calibrator::MinMax],
        }
    }
}

/// Tries each of `candidates` in turn until `attempt` passes; hands back the calibrator that
/// passed, or the last one tried with `false`.
fn first_passing(
    candidates: &[Calibrator],
    mut attempt: impl FnMut(Calibrator) -> Result<bool>,
) -> Result<(Calibrator, bool)> {
    let mut last = None;
    for (i, &c) in candidates.iter().enumerate() {
        if attempt(c)? {
            return Ok((c, true));
        }
        if let Some(next) = candidates.get(i + 1) {
            println!("\ncalibrator {c} misses a parity target: exporting again with {next}\n");
        }
        last = Some((c, false));
    }
    last.ok_or_else(|| anyhow::anyhow!("no calibrator to try"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CentroidSource {
    Auto,
    Head,
    Kmeans,
    Best,
}

/// The cluster head's centroids, if they are to be used.
fn head_centroids(run: &RunDir, from: CentroidSource) -> Result<Option<Centroids>> {
    let head = match from {
        CentroidSource::Kmeans => return Ok(None),
        _ => ClusterHead::load(run)?,
    };
    match (head, from) {
        (None, CentroidSource::Head) => bail!(
            "{} has no {HEAD_FILE}: run `host-train cluster-head --checkpoint {}` first",
            run.path("").display(),
            run.path("").display()
        ),
        (None, _) => Ok(None),
        (Some(h), _) => Ok(Some(h.board_centroids())),
    }
}

pub fn export(args: &ExportArgs) -> Result<()> {
    let run = RunDir::open(&args.checkpoint)?;
    let (cfg, encoder) = load_encoder(&run, &Device::Cpu)?;
    let head_centroids = head_centroids(&run, args.centroids_from)?;
    match &head_centroids {
        Some(c) if args.centroids_from == CentroidSource::Best => println!(
            "centroids: the cluster head's {} clusters or k-means with as many, by silhouette",
            c.k
        ),
        Some(c) => println!("centroids: the cluster head's {} clusters", c.k),
        None if args.centroids > 0 => println!("centroids: k-means, k = {}", args.centroids),
        None => {}
    }
    let (train, test) = load_images(&cfg.data)?;
    let train = TrainSet::new(train, cfg.normalization.clone())?;
    let adapter = args.fold_adapter.as_deref().map(read_adapter).transpose()?;
    if let (Some(a), Some(path)) = (&adapter, &args.fold_adapter) {
        println!(
            "folding the adapter of {} ({} updates over {} frames, model sha256 {}...)",
            path.display(),
            a.updates,
            a.frames,
            a.model_sha256.get(..12).unwrap_or(&a.model_sha256)
        );
        if a.roll_degrees != 0.0 {
            // A turn of the input is not a map of the embedding: it cannot be folded.
            println!(
                "note: the board turns its frames back by {:.1} degrees (a tilted camera); \
                 that is not folded into the model: level the mount, or keep the board's \
                 roll correction on",
                a.roll_degrees
            );
        }
        if a.smoothing_sigma != 0.0 {
            println!(
                "note: the board smooths its frames by a Gaussian of {:.1} pixels (noise or \
                 compression artefacts the training images lacked); that is not folded into \
                 the model: keep the board's smoothing on",
                a.smoothing_sigma
            );
        }
        if a.deblock_block != 0 {
            println!(
                "note: the board deblocks its frames along a {0} x {0} grid (they arrive \
                 block-coded, as JPEG codes them); that is not folded into the model: keep \
                 the board's deblocking on, or send the frames uncompressed",
                a.deblock_block
            );
        }
    }
    let candidates = args.calibrator.candidates(args.verify);
    // Everything but the calibrator, which each try sets.
    let base = ExportConfig {
        calibration_images: args.calibration_images,
        calibrator: candidates[0],
        centroids_k: args.centroids,
        centroids_by_silhouette: args.centroids_from == CentroidSource::Best,
        head_centroids,
        seed: cfg.seed,
        adapter: adapter.clone(),
    };
    // Without a held-out split (a plain image folder), the training images stand in.
    let test = match (args.verify, test) {
        (false, _) => None,
        (true, Some(t)) => Some(TrainSet::new(t, cfg.normalization.clone())?),
        (true, None) => Some(train.clone()),
    };
    let vcfg = VerifyConfig {
        test_images: args.verify_images,
        train_images: args.verify_images,
        seed: cfg.seed,
        adapter,
        ..Default::default()
    };
    let (_, passed) = first_passing(&candidates, |calibrator| {
        let ecfg = ExportConfig {
            calibrator,
            ..base.clone()
        };
        write_model(args, encoder.as_ref(), &cfg, &train, &ecfg)?;
        let Some(test) = &test else {
            return Ok(true);
        };
        let report = verify(encoder.as_ref(), &args.out, &train, test, &vcfg)?;
        println!(
            "\nparity on {} test images ({} train images for kNN), calibrator {calibrator}:\n",
            report.test_images, report.train_images
        );
        print!("{}", report.table());
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(args.out.join("parity.json"), json)?;
        Ok(report.passed())
    })?;
    if !passed {
        bail!("the exported model misses a parity target (see the table above)");
    }
    Ok(())
}

/// Exports once, with `ecfg`'s calibrator, and says what it wrote.
fn write_model(
    args: &ExportArgs,
    encoder: &dyn host_train::encoders::Encoder,
    cfg: &host_train::pretrain::RunConfig,
    train: &TrainSet,
    ecfg: &ExportConfig,
) -> Result<()> {
    let source = args.checkpoint.display().to_string();
    let manifest = run_export(encoder, cfg, &source, train, &args.out, ecfg)?;
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tries_min_max_only_when_percentile_misses_a_checked_target() {
        let auto = CalibratorChoice::Auto;
        assert_eq!(auto.candidates(false), vec![Calibrator::default()]);
        assert_eq!(
            auto.candidates(true),
            vec![Calibrator::default(), Calibrator::MinMax]
        );
        let fixed = CalibratorChoice::Fixed(Calibrator::Entropy);
        assert_eq!(fixed.candidates(true), vec![Calibrator::Entropy]);
        assert_eq!("auto".parse::<CalibratorChoice>(), Ok(auto));
        assert_eq!(
            "percentile-99.9".parse::<CalibratorChoice>(),
            Ok(CalibratorChoice::Fixed(Calibrator::Percentile(99.9)))
        );
        let err = "bogus".parse::<CalibratorChoice>().unwrap_err();
        assert!(err.contains("bogus") && err.ends_with("or auto"), "{err}");
    }

    #[test]
    fn the_first_calibrator_that_passes_is_kept_and_the_last_tried_reported() {
        let both = [Calibrator::default(), Calibrator::MinMax];
        let mut tried = Vec::new();
        let (c, passed) = first_passing(&both, |c| {
            tried.push(c);
            Ok(c == Calibrator::MinMax)
        })
        .unwrap();
        assert_eq!((c, passed), (Calibrator::MinMax, true));
        assert_eq!(tried, both);
        tried.clear();
        let (c, passed) = first_passing(&both, |c| {
            tried.push(c);
            Ok(true)
        })
        .unwrap();
        assert_eq!((c, passed, tried.len()), (Calibrator::default(), true, 1));
        let (c, passed) = first_passing(&both, |_| Ok(false)).unwrap();
        assert_eq!((c, passed), (Calibrator::MinMax, false));
        let failed = first_passing(&both, |_| -> Result<bool> { bail!("disk full") });
        assert!(failed.unwrap_err().to_string().contains("disk full"));
    }
}
