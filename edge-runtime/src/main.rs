//! `edge-runtime`: run an exported encoder on the board.
//!
//! - `run`: frames in (a folder, image paths on stdin, or Fashion-MNIST's test split as a
//!   camera stream), cluster events out as JSON Lines, the memory bank on disk.
//! - `embed`: embeddings of images as a `.npy` array.
//! - `preprocess`: images as the model's input tensors (`.npy`), for model converters.
//! - `report`: a memory bank as a static HTML page (clusters, thumbnails, novel frames).
//! - `bank inspect|export|compact`: look after a memory bank.
//! - `adapt stats|show|export|reset`: on-device adaptation's statistics and adapter.

mod cli_adapt;
mod cli_bank;
mod cli_report;
mod cli_run;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
#[cfg(feature = "ort")]
use edge_runtime::backend::OrtRuntime;
use edge_runtime::backend::{embed_images, PrepareOptions, Runtime, TractRuntime};
use edge_runtime::bundle::ModelBundle;
use edge_runtime::npy::{npy_f32, npy_f32_shaped};
use edge_runtime::preprocess::Preprocessor;
use models::data::Split;
use models::manifest::Precision;

#[derive(Debug, Parser)]
#[command(name = "edge-runtime", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Embed, cluster online and store a stream of frames; JSON Lines events out.
    Run(cli_run::RunArgs),
    /// Embed images with an exported model and write them as a .npy array (rows = images).
    Embed(EmbedArgs),
    /// Write images as the model's input tensors (N x C x H x W .npy), preprocessed as the
    /// manifest says: calibration and test data for model converters such as rknn-toolkit2.
    Preprocess(PreprocessArgs),
    /// Write a memory bank as a static HTML page: each cluster's size, medoid and member
    /// thumbnails, cluster sizes over time, and the novel frames. Opens from disk.
    Report(cli_report::ReportArgs),
    /// Inspect, export or compact a memory bank.
    #[command(subcommand)]
    Bank(cli_bank::BankCommand),
    /// On-device adaptation: write a model's training statistics; show, export or reset the
    /// adapter a bank carries.
    #[command(subcommand)]
    Adapt(cli_adapt::AdaptCommand),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PrecisionArg {
    Fp32,
    Int8,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::Fp32 => Precision::Fp32,
            PrecisionArg::Int8 => Precision::Int8,
        }
    }
}

/// Which inference backend runs the model.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BackendArg {
    /// Pure Rust (default).
    Tract,
    /// onnxruntime, loaded from `ORT_DYLIB_PATH` (built with `--features ort`).
    #[cfg(feature = "ort")]
    Ort,
    /// A Rockchip NPU, running the `.rknn` file next to the ONNX (built with `--features rknn`).
    #[cfg(feature = "rknn")]
    Rknn,
}

impl BackendArg {
    /// The runtime, with `--ep` applied (ort only; other backends refuse a GPU provider).
    pub fn runtime(self, ep: &ProviderArgs, precision: Precision) -> Result<Box<dyn Runtime>> {
        if !matches!(self.name(), "ort") && ep.ep != EpArg::Cpu {
            anyhow::bail!(
                "--ep {:?} is an onnxruntime execution provider: it needs --backend ort (built \
                 with --features ort)",
                ep.ep
            );
        }
        let _ = precision;
        Ok(match self {
            BackendArg::Tract => Box::new(TractRuntime),
            #[cfg(feature = "ort")]
            BackendArg::Ort => {
                Box::new(OrtRuntime::from_env()?.with_provider(ep.provider(precision)))
            }
            #[cfg(feature = "rknn")]
            BackendArg::Rknn => Box::new(edge_runtime::backend::RknnRuntime),
        })
    }

    fn name(self) -> &'static str {
        match self {
            BackendArg::Tract => "tract",
            #[cfg(feature = "ort")]
            BackendArg::Ort => "ort",
            #[cfg(feature = "rknn")]
            BackendArg::Rknn => "rknn",
        }
    }
}

/// onnxruntime's execution provider (`--backend ort`): the CPU, or the GPU through CUDA or
/// TensorRT (Jetson).
#[derive(Debug, Clone, clap::Args)]
pub struct ProviderArgs {
    /// Execution provider for --backend ort. A GPU provider that the loaded onnxruntime lacks
    /// or cannot register is an error, never a silent fall-back to the CPU.
    #[arg(long, value_enum, default_value = "cpu")]
    ep: EpArg,
    /// The GPU for --ep cuda and tensorrt.
    #[arg(long, default_value_t = 0)]
    gpu_device: i32,
    /// TensorRT: allow fp16 kernels.
    #[arg(long)]
    trt_fp16: bool,
    /// TensorRT: the int8 calibration table of an fp32 model (an int8 QDQ model carries its
    /// own scales; `--precision int8` turns TensorRT's int8 on).
    #[arg(long)]
    trt_int8_calibration_table: Option<PathBuf>,
    /// TensorRT: keep built engines (and timing caches) here, so a restart skips the build.
    #[arg(long)]
    trt_engine_cache: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EpArg {
    Cpu,
    Cuda,
    Tensorrt,
}

impl ProviderArgs {
    #[cfg(feature = "ort")]
    fn provider(&self, precision: Precision) -> edge_runtime::backend::Provider {
        use edge_runtime::backend::{Provider, TensorRtOptions};
        match self.ep {
            EpArg::Cpu => Provider::Cpu,
            EpArg::Cuda => Provider::Cuda {
                device: self.gpu_device,
            },
            EpArg::Tensorrt => Provider::TensorRt(TensorRtOptions {
                device: self.gpu_device,
                fp16: self.trt_fp16,
                int8: precision == Precision::Int8,
                int8_calibration_table: self.trt_int8_calibration_table.clone(),
                engine_cache: self.trt_engine_cache.clone(),
            }),
        }
    }
}

#[derive(Debug, clap::Args)]
struct EmbedArgs {
    /// An exported model directory (manifest.json + ONNX files).
    #[arg(long, default_value = "models/fashion-mnist-small-cnn")]
    model: PathBuf,
    #[arg(long, value_enum, default_value = "fp32")]
    precision: PrecisionArg,
    #[arg(long, value_enum, default_value = "tract")]
    backend: BackendArg,
    #[command(flatten)]
    provider: ProviderArgs,
    /// A folder of JPEG/PNG images, a folder of IDX files, or `fashion-mnist` (test split).
    #[arg(long)]
    input: String,
    /// Embed only the first N images.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Threads for inference (tract's pool, or the NPU cores for rknn).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// Write the raw graph output instead of L2-normalising as the manifest asks.
    #[arg(long)]
    raw: bool,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct PreprocessArgs {
    /// An exported model directory: its manifest fixes the preprocessing.
    #[arg(long, default_value = "models/fashion-mnist-small-cnn")]
    model: PathBuf,
    /// A folder of JPEG/PNG images, a folder of IDX files, or `fashion-mnist`.
    #[arg(long)]
    input: String,
    /// Which split of IDX data (image folders have none).
    #[arg(long, value_enum, default_value = "test")]
    split: SplitArg,
    /// Only the first N images.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SplitArg {
    Train,
    Test,
}

fn main() -> Result<()> {
    StderrLog::install();
    match Cli::parse().command {
        Command::Run(args) => cli_run::run(&args),
        Command::Embed(args) => embed(&args),
        Command::Preprocess(args) => preprocess(&args),
        Command::Report(args) => cli_report::report(&args),
        Command::Bank(cmd) => cli_bank::bank(&cmd),
        Command::Adapt(cmd) => cli_adapt::adapt(&cmd),
    }
}

fn embed(args: &EmbedArgs) -> Result<()> {
    let precision = args.precision.into();
    let bundle = ModelBundle::load(&args.model, precision)?;
    let pre = Preprocessor::new(bundle.manifest.preprocess.clone());
    let mut set = pre.read_source(&args.input, false)?;
    if let Some(n) = args.limit {
        set = set.take(n);
    }
    let options = PrepareOptions {
        batch: args.batch,
        threads: args.threads.into(),
    };
    let run = args
        .backend
        .runtime(&args.provider, precision)?
        .prepare(&bundle, &options)?;
    let dim = run.embed_dim();
    let mut out = embed_images(run.as_ref(), &pre, &set)?;
    if bundle.manifest.embedding.l2_normalize && !args.raw {
        models::linalg::l2_normalize_rows(&mut out, dim);
    }
    std::fs::write(&args.out, npy_f32(&out, set.len(), dim))
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "{} images -> {} ({} x {dim}, {:?})",
        set.len(),
        args.out.display(),
        set.len(),
        precision
    );
    Ok(())
}

fn preprocess(args: &PreprocessArgs) -> Result<()> {
    let manifest = edge_runtime::bundle::read_manifest(&args.model)?;
    let pre = Preprocessor::new(manifest.preprocess.clone());
    let split = match args.split {
        SplitArg::Train => Split::Train,
        SplitArg::Test => Split::Test,
    };
    let mut set = pre.read_split(&args.input, split, false)?;
    if let Some(n) = args.limit {
        set = set.take(n);
    }
    let tensor = pre.tensor(&set, 0..set.len())?;
    let [c, h, w] = manifest.input_chw();
    std::fs::write(&args.out, npy_f32_shaped(&tensor, &[set.len(), c, h, w]))
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "{} images -> {} ({} x {c} x {h} x {w})",
        set.len(),
        args.out.display(),
        set.len()
    );
    Ok(())
}

/// `log` records to stderr, at the level `RUST_LOG` names (error, warn, info, debug, trace;
/// warn by default): the link's and board-support's logs.
struct StderrLog;

impl StderrLog {
    fn install() {
        let level = std::env::var("RUST_LOG")
            .ok()
            .and_then(|l| l.parse().ok())
            .unwrap_or(log::LevelFilter::Warn);
        if log::set_logger(&StderrLog).is_ok() {
            log::set_max_level(level);
        }
    }
}

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("[{} {}] {}", record.level(), record.target(), record.args());
        }
    }

    fn flush(&self) {}
}
