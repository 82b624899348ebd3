//! `edge-runtime adapt stats|show|export|reset`: the training statistics that adaptation
//! maps onto, and the adapter a bank carries.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use edge_runtime::adapt::store::{self, AdapterRecord, ADAPTER_FORMAT};
use edge_runtime::backend::{embed_images, PrepareOptions, Runtime, TractRuntime};
use edge_runtime::bundle::ModelBundle;
use edge_runtime::preprocess::Preprocessor;
use models::adapt::{EmbeddingStats, LinearAdapter, EMBEDDING_STATS_FILE};
use models::data::Split;

use crate::PrecisionArg;

#[derive(Debug, Subcommand)]
pub enum AdaptCommand {
    /// Write the model's training-embedding statistics (embedding-stats.json beside its
    /// manifest), which `run --adapt stats|whiten` maps the camera's embeddings onto.
    /// `host-train export` writes them too; this serves models exported without them.
    Stats {
        #[arg(long, default_value = "models/fashion-mnist-small-cnn")]
        model: PathBuf,
        #[arg(long, value_enum, default_value = "int8")]
        precision: PrecisionArg,
        /// The images the model was trained on: a folder, IDX files, or `fashion-mnist`
        /// (its train split).
        #[arg(long)]
        data: String,
        /// Use only the first N images.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
    },
    /// The bank's adapter as JSON: updates kept, frames adapted, memory, how far it moved.
    Show {
        #[arg(long)]
        bank: PathBuf,
    },
    /// Write the adapter for the host: the statistics map, the trained layer, and both
    /// composed into one affine map (`host-train export --fold-adapter` folds it into the
    /// encoder's last layer).
    Export {
        #[arg(long)]
        bank: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Return to the shipped model: the bank's adapter is moved aside
    /// (adapter.bin.reset-<ms>), so the next run starts from the identity.
    Reset {
        #[arg(long)]
        bank: PathBuf,
    },
    /// Save adapters in a loop, printing `saved N` after each has been published (the crash
    /// tests kill this at random moments).
    #[command(hide = true)]
    SaveLoop {
        #[arg(long)]
        bank: PathBuf,
        #[arg(long, default_value_t = 128)]
        dim: usize,
    },
}

pub fn adapt(cmd: &AdaptCommand) -> Result<()> {
    match cmd {
        AdaptCommand::Stats {
            model,
            precision,
            data,
            limit,
        } => stats(model, (*precision).into(), data, *limit),
        AdaptCommand::Show { bank } => {
            let r = stored(bank)?;
            let summary = serde_json::json!({
                "file": store::path(bank),
                "model_sha256": r.model_sha256,
                "updates": r.updates,
                "frames": r.frames,
                "dim": r.linear.dim(),
                "statistics": r.recentring.as_ref().map(|s| format!("{:?}", s.kind())),
                "input_statistics": r.input.as_ref().map(|s| {
                    let (mean, std) = s.moments();
                    serde_json::json!({ "frames": s.count, "mean": mean, "std": std })
                }),
                "roll_degrees": r.roll.as_ref().map(|e| e.degrees),
                // To hundredths of a pixel, not as the f32's widening (0.6000000238).
                "smoothing_sigma": r.smoothing.as_ref().map(|e| (e.sigma as f64 * 100.0).round() / 100.0),
                "deblock": r.deblock.as_ref().map(|e| serde_json::json!({
                    "block": e.block,
                    "blockiness": (e.ratio * 1000.0).round() / 1000.0,
                })),
                "memory_bytes": r.memory_bytes(),
                "distance_from_identity": r.linear.distance_from_identity(),
            });
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        AdaptCommand::Export { bank, out } => {
            let r = stored(bank)?;
            let json = serde_json::to_vec_pretty(&r.export())?;
            std::fs::write(out, json).with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "{} ({} updates, {} frames) -> {}",
                store::path(bank).display(),
                r.updates,
                r.frames,
                out.display()
            );
            Ok(())
        }
        AdaptCommand::Reset { bank } => {
            // Holding the bank's lock: a running `run` on this bank is refused here (it resets
            // through its MCU link instead).
            let _lock = crate::cli_bank::open(bank)?;
            match store::reset(bank)? {
                Some(aside) => eprintln!("adapter moved to {}", aside.display()),
                None => eprintln!("{}: no adapter; already the shipped model", bank.display()),
            }
            Ok(())
        }
        AdaptCommand::SaveLoop { bank, dim } => save_loop(bank, *dim),
    }
}

fn stored(bank: &Path) -> Result<AdapterRecord> {
    store::read(bank)?.with_context(|| {
        format!(
            "{}: no adapter (a run with --adapt-train writes one)",
            store::path(bank).display()
        )
    })
}

fn stats(
    model: &Path,
    precision: models::manifest::Precision,
    data: &str,
    limit: usize,
) -> Result<()> {
    let bundle = ModelBundle::load(model, precision)?;
    let pre = Preprocessor::new(bundle.manifest.preprocess.clone());
    let set = pre.read_split(data, Split::Train, false)?.take(limit);
    anyhow::ensure!(
        set.len() >= 2,
        "{data}: {} images; statistics need at least 2",
        set.len()
    );
    let options = PrepareOptions {
        batch: 64,
        threads: 1,
    };
    let run = TractRuntime.prepare(&bundle, &options)?;
    let dim = run.embed_dim();
    let raw = embed_images(run.as_ref(), &pre, &set)?;
    let stats = EmbeddingStats::of_rows(&raw, dim);
    let path = model.join(EMBEDDING_STATS_FILE);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&stats)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "{} images of {data} -> {} ({dim}-d)",
        set.len(),
        path.display()
    );
    Ok(())
}

fn save_loop(bank: &Path, dim: usize) -> Result<()> {
    std::fs::create_dir_all(bank).with_context(|| format!("creating {}", bank.display()))?;
    let mut out = std::io::stdout().lock();
    for n in 1u64.. {
        let mut linear = LinearAdapter::identity(dim);
        linear.bias.iter_mut().for_each(|b| *b = n as f32);
        let record = AdapterRecord {
            format: ADAPTER_FORMAT,
            model_sha256: "save-loop".into(),
            updates: n,
            frames: n,
            linear,
            recentring: None,
            input: None,
            roll: None,
            smoothing: None,
            deblock: None,
        };
        store::save(bank, &record)?;
        writeln!(out, "saved {n}")?;
        out.flush()?;
    }
    Ok(())
}
