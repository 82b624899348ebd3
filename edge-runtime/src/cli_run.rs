//! `edge-runtime run`: the streaming pipeline from the command line.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use edge_runtime::adapt::{AdaptConfig, TrainConfig};
use edge_runtime::backend::{PrepareOptions, Runtime};
use edge_runtime::bank::identity::{self, BankIdentity};
use edge_runtime::bank::{BankConfig, CaptureMeta, EmbeddingFormat, Eviction, MemoryBank};
use edge_runtime::bundle::ModelBundle;
use edge_runtime::link::{self, BoardLink, LinkConfig, LinkEvent, ServeOptions};
use edge_runtime::pipeline::{Event, Frame, Pipeline, PipelineConfig};
use edge_runtime::preprocess::Preprocessor;
use edge_runtime::rebind::rebind;
use edge_runtime::EdgeError;
use models::adapt::deblock::DeblockParams;
use models::adapt::roll::RollParams;
use models::adapt::smoothing::SmoothingParams;
use models::adapt::RecentringKind;
use models::cluster::{KMeansParams, OnlineKMeansParams};
use models::data::{read_image, ImageFolderOptions, ImageSet};
use models::metrics::{clustering_accuracy, normalized_mutual_info};
use models::MatRef;

use crate::{BackendArg, PrecisionArg, ProviderArgs};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[arg(long, default_value = "models/fashion-mnist-small-cnn")]
    model: PathBuf,
    #[arg(long, value_enum, default_value = "int8")]
    precision: PrecisionArg,
    #[arg(long, value_enum, default_value = "tract")]
    backend: BackendArg,
    #[command(flatten)]
    provider: ProviderArgs,
    /// A folder of images, `-` (image paths on stdin, one per line), `fashion-mnist` (its
    /// test split as a camera stream), or `v4l2:/dev/videoN` (a live camera; built with
    /// `--features v4l2`).
    #[arg(long)]
    input: String,
    /// The memory bank's directory (created if missing; recovered if it exists).
    #[arg(long)]
    bank: PathBuf,
    /// JSON Lines events go here instead of stdout.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Quality report (needs labelled input): online vs batch k-means, as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Threads for inference: tract's pool (a batch's images side by side, or one image split
    /// over them), or the NPU cores for rknn (1, 2 or 3 on an RK3588).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// A folder input skips unreadable images (each named on stderr, and counted) instead of
    /// stopping at the first; stdin and camera inputs always skip bad frames.
    #[arg(long)]
    skip_bad: bool,
    /// When the bank was made by another model, embed its stored thumbnails again with this
    /// one and re-cluster them, instead of refusing (the old bank is kept beside it as
    /// BANK.before-rebind-<ms>). A bank with entries stored without thumbnails is refused.
    #[arg(long)]
    rebind: bool,
    /// Longest side of the thumbnail kept with each bank entry, for `edge-runtime report`
    /// (default: the model's input size; 0 keeps none). Thumbnails count against --bank-mb.
    #[arg(long)]
    thumb_size: Option<usize>,
    #[arg(long, default_value_t = 5000)]
    recluster_every: u64,
    #[arg(long, default_value_t = 2.0)]
    novelty_threshold: f32,
    #[arg(long, default_value_t = 64)]
    max_clusters: usize,
    #[arg(long, default_value_t = 100_000)]
    bank_entries: usize,
    #[arg(long, default_value_t = 64)]
    bank_mb: usize,
    #[arg(long, value_enum, default_value = "i8")]
    bank_format: FormatArg,
    #[arg(long, value_enum, default_value = "fifo")]
    eviction: EvictionArg,
    /// fsync every bank write (survives power loss, not only a killed process).
    #[arg(long)]
    fsync: bool,
    /// The MCU companion's serial device (e.g. /dev/ttyACM0): a ClusterEvent goes to it for
    /// every frame; its commands (snapshot, reset clusters, novelty threshold) come back.
    #[arg(long)]
    link: Option<String>,
    #[arg(long, default_value_t = 115_200)]
    link_baud: u32,
    /// Frames are paced by the MCU: each FrameReady takes the next input image.
    #[arg(long, requires = "link")]
    link_frames: bool,
    /// With --link-frames: ask the MCU for a frame every N ms (else it keeps its own schedule).
    #[arg(long, requires = "link_frames")]
    trigger_every_ms: Option<u64>,
    /// With --link-frames: stop when the MCU has said nothing for N seconds.
    #[arg(long, requires = "link_frames")]
    link_idle_s: Option<f64>,
    #[command(flatten)]
    adapt: AdaptArgs,
}

/// On-device adaptation of the embedding to the scene (`edge-runtime adapt` looks after it).
#[derive(Debug, Clone, clap::Args)]
pub struct AdaptArgs {
    /// Statistics adaptation: re-centre each embedding dimension (`stats`) or re-whiten the
    /// whole embedding (`whiten`) from what the camera shows onto the training statistics
    /// (embedding-stats.json beside the manifest). Each frame is also re-normalised from the
    /// running per-channel statistics of the frames seen (unless --no-adapt-input),
    /// deblocked when the warm-up's frames measure block-coded (unless --no-adapt-deblock),
    /// turned back by the camera's roll found at the end of the warm-up (unless
    /// --no-adapt-roll) and smoothed by the Gaussian found with it (unless
    /// --no-adapt-smoothing).
    #[arg(long, value_enum, default_value = "none")]
    adapt: AdaptArg,
    /// With --adapt stats or whiten: leave the frames as the manifest preprocesses them and
    /// adapt the embedding only.
    #[arg(long)]
    no_adapt_input: bool,
    /// With --adapt stats or whiten: do not search the camera's roll (a tilted mount) at the
    /// end of the warm-up, nor turn the frames back by it.
    #[arg(long)]
    no_adapt_roll: bool,
    /// With --adapt stats or whiten: do not search a smoothing of the frames (against sensor
    /// noise) at the end of the warm-up, nor smooth them.
    #[arg(long)]
    no_adapt_smoothing: bool,
    /// With --adapt stats or whiten: do not measure the frames' blockiness (JPEG's 8 x 8
    /// grid) at the end of the warm-up, nor deblock them.
    #[arg(long)]
    no_adapt_deblock: bool,
    /// Also train the adapter layer on the device from the bank's thumbnails (kept only when
    /// a held-out part of the bank does not cluster worse; saved as BANK/adapter.bin).
    #[arg(long)]
    adapt_train: bool,
    /// Frames between training rounds.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    adapt_every: u64,
    /// Adapter steps per round.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    adapt_steps: u64,
    /// Frames (each as two views) per step.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(2..=4096))]
    adapt_batch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AdaptArg {
    None,
    Stats,
    Whiten,
}

impl AdaptArgs {
    /// The pipeline's adaptation, or `None` when it is off.
    pub fn config(&self) -> Option<AdaptConfig> {
        let recentring = match self.adapt {
            AdaptArg::None => None,
            AdaptArg::Stats => Some(RecentringKind::Diagonal),
            AdaptArg::Whiten => Some(RecentringKind::Full),
        };
        if recentring.is_none() && !self.adapt_train {
            return None;
        }
        Some(AdaptConfig {
            input: recentring.is_some() && !self.no_adapt_input,
            roll: (recentring.is_some() && !self.no_adapt_roll).then(RollParams::default),
            smoothing: (recentring.is_some() && !self.no_adapt_smoothing)
                .then(SmoothingParams::default),
            deblock: (recentring.is_some() && !self.no_adapt_deblock).then(DeblockParams::default),
            recentring,
            train: self.adapt_train.then(|| TrainConfig {
                every: self.adapt_every,
                steps: self.adapt_steps as usize,
                batch: self.adapt_batch as usize,
                ..Default::default()
            }),
            ..Default::default()
        })
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    F32,
    F16,
    I8,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum EvictionArg {
    Fifo,
    Reservoir,
    Diversity,
}

/// Where frames come from; each yields frames at the manifest's size.
enum Source {
    Set(ImageSet, String),
    Stdin(ImageFolderOptions),
    #[cfg(feature = "v4l2")]
    Camera(edge_runtime::camera::V4l2Camera, String),
}

/// Rebinds the bank in `dir` to `bundle` when another model made it (nothing to do for a new
/// bank or the same model).
pub fn rebind_if_needed(
    dir: &Path,
    bundle: &ModelBundle,
    runtime: &dyn Runtime,
    options: &PrepareOptions,
    cfg: &BankConfig,
) -> Result<()> {
    let wanted = BankIdentity::of(bundle, cfg.format);
    match identity::read(dir)? {
        Some(stored) if !stored.matches(&wanted) => {
            let r = rebind(dir, bundle, runtime, options, cfg)?;
            eprintln!(
                "rebound {}: {} entries embedded again with {} (were {}), {} clusters; the old \
                 bank is in {}",
                dir.display(),
                r.entries,
                r.model,
                r.previous_model,
                r.clusters,
                r.previous.display()
            );
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A camera that fails this many frames in a row is gone (unplugged, driver stuck).
#[cfg(feature = "v4l2")]
const CAMERA_FAILURES: usize = 10;

pub fn run(args: &RunArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let bundle = ModelBundle::load(&args.model, args.precision.into())?;
    let pre = Preprocessor::new(bundle.manifest.preprocess.clone());
    let mut pipe = open_pipeline(args, &bundle)?;
    let mut source = open_source(args, &pre)?;
    let link = match &args.link {
        Some(port) => Some(BoardLink::open(
            port,
            LinkConfig {
                baud: args.link_baud,
                ..Default::default()
            },
        )?),
        None => None,
    };
    let mut sink = Sink {
        out: events_out(args)?,
        link: link.as_ref(),
        assigned: Vec::new(),
    };
    let mut tally = Tally::default();
    let t0 = Instant::now();
    match (&mut source, &link) {
        (source, Some(l)) if args.link_frames => {
            tally.frames = serve_link(args, &mut pipe, source, l, &mut *sink.out, &stop)?;
        }
        (Source::Set(set, name), _) => {
            stream_set(args, &mut pipe, set, name, &mut sink, &mut tally, &stop)?
        }
        #[cfg(feature = "v4l2")]
        (Source::Camera(camera, device), _) => stream_camera(
            args, &mut pipe, camera, device, &mut sink, &mut tally, &stop,
        )?,
        (Source::Stdin(opts), _) => {
            stream_stdin(args, &mut pipe, opts, &mut sink, &mut tally, &stop)?
        }
    }
    // Graceful end (input done, SIGINT or SIGTERM): everything stored is on disk.
    for event in pipe.finish_adaptation()? {
        writeln!(sink.out, "{}", serde_json::to_string(&event)?)?;
    }
    pipe.snapshot()?;
    let assigned = std::mem::take(&mut sink.assigned);
    drop(sink);
    if let Some(l) = link {
        let port = l.port().to_string();
        let (stats, unacked) = l.close(Duration::from_secs(2));
        eprintln!(
            "link {port}: {} handshakes, {} acknowledged, {unacked} unacknowledged, {} resent, {} damaged frames",
            stats.handshakes, stats.delivered, stats.retransmits, stats.damaged
        );
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{} frames in {secs:.1} s ({:.0} frames/s), {} clusters, bank {} entries{}",
        tally.frames,
        tally.frames as f64 / secs.max(1e-9),
        pipe.online().clusters().len(),
        pipe.bank().len(),
        if stop.load(Ordering::Relaxed) {
            " (stopped by signal)"
        } else {
            ""
        }
    );
    if let Some(path) = &args.report {
        let rate = tally.frames as f64 / secs.max(1e-9);
        quality_report(path, &bundle, &pipe, &tally, &assigned, rate)?;
    }
    Ok(())
}

fn bank_config(args: &RunArgs) -> BankConfig {
    BankConfig {
        max_entries: args.bank_entries,
        max_bytes: args.bank_mb << 20,
        format: match args.bank_format {
            FormatArg::F32 => EmbeddingFormat::F32,
            FormatArg::F16 => EmbeddingFormat::F16,
            FormatArg::I8 => EmbeddingFormat::I8,
        },
        eviction: match args.eviction {
            EvictionArg::Fifo => Eviction::Fifo,
            EvictionArg::Reservoir => Eviction::Reservoir,
            EvictionArg::Diversity => Eviction::Diversity,
        },
        fsync: args.fsync,
        ..Default::default()
    }
}

/// The backend, the bank (rebound first with `--rebind`, recovered) and the pipeline on them.
fn open_pipeline(args: &RunArgs, bundle: &ModelBundle) -> Result<Pipeline> {
    let bank_cfg = bank_config(args);
    let options = PrepareOptions {
        batch: args.batch,
        threads: args.threads.into(),
    };
    let runtime = args
        .backend
        .runtime(&args.provider, args.precision.into())?;
    if args.rebind {
        rebind_if_needed(&args.bank, bundle, runtime.as_ref(), &options, &bank_cfg)?;
    }
    let (bank, rec) = MemoryBank::open(&args.bank, bank_cfg)?;
    if rec.torn_tails + rec.corrupt_snapshots + rec.preserved.len() > 0 {
        eprintln!("bank recovery: {}", serde_json::to_string(&rec)?);
    }
    let cfg = PipelineConfig {
        online: OnlineKMeansParams {
            novelty_threshold: args.novelty_threshold,
            max_clusters: args.max_clusters,
            ..Default::default()
        },
        recluster_every: args.recluster_every,
        seed: 0,
        thumb_size: args.thumb_size,
    };
    if args.adapt.adapt_train && args.thumb_size == Some(0) {
        bail!(
            "--adapt-train trains on the thumbnails stored in the bank, and --thumb-size 0 \
             stores none: drop --thumb-size 0 (or give a size)"
        );
    }
    let mut pipe = Pipeline::new(bundle, runtime.as_ref(), &options, bank, cfg)?;
    if let Some(adapt) = args.adapt.config() {
        pipe.enable_adaptation(bundle, runtime.as_ref(), &options, adapt)?;
    }
    Ok(pipe)
}

/// `--input`: stdin paths, a camera, or a set read whole (unreadable files named).
fn open_source(args: &RunArgs, pre: &Preprocessor) -> Result<Source> {
    let frame_opts = pre.image_options(false);
    if args.input == "-" {
        return Ok(Source::Stdin(frame_opts));
    }
    if let Some(device) = edge_runtime::camera::v4l2_device(&args.input) {
        return camera_source(device, frame_opts);
    }
    let set = pre.read_source(&args.input, args.skip_bad)?;
    for s in &set.skipped {
        eprintln!("skipped {}: {}", s.path.display(), s.reason);
    }
    if !set.skipped.is_empty() {
        eprintln!(
            "{} unreadable images skipped, {} read",
            set.skipped.len(),
            set.len()
        );
    }
    Ok(Source::Set(set, args.input.clone()))
}

/// `--events FILE`, else stdout.
fn events_out(args: &RunArgs) -> Result<Box<dyn Write>> {
    Ok(match &args.events {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| p.display().to_string())?,
        )),
        None => Box::new(std::io::stdout().lock()),
    })
}

/// Where events go: JSON Lines out, cluster events to the MCU, and the MCU's commands back.
struct Sink<'a> {
    out: Box<dyn Write>,
    link: Option<&'a BoardLink>,
    /// The cluster of every frame, in order (for `--report`).
    assigned: Vec<u32>,
}

impl Sink<'_> {
    fn emit(&mut self, events: Vec<Event>, pipe: &mut Pipeline) -> Result<()> {
        for e in events {
            if let Event::Frame { cluster_id, .. } = &e {
                self.assigned.push(*cluster_id);
            }
            if let (Some(l), Some(m)) = (self.link, link::cluster_event(&e)) {
                l.send(m)?;
            }
            writeln!(self.out, "{}", serde_json::to_string(&e)?)?;
        }
        self.out.flush()?;
        take_commands(self.link, pipe, &mut *self.out)
    }
}

/// What a run counted: frames, and for `--report` the embeddings and labels of a set.
#[derive(Default)]
struct Tally {
    frames: usize,
    embeddings: Vec<f32>,
    labels: Vec<u32>,
}

/// Frames paced by the MCU (`--link-frames`): each FrameReady takes the next input image.
fn serve_link(
    args: &RunArgs,
    pipe: &mut Pipeline,
    source: &mut Source,
    link: &BoardLink,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<usize> {
    let options = ServeOptions {
        trigger_every: args.trigger_every_ms.map(Duration::from_millis),
        exposure_us: 5000,
        limit: args.limit,
        idle_timeout: args.link_idle_s.map(Duration::from_secs_f64),
    };
    let mut frames = FrameReader::new(source, stop);
    let mut write_event = |v: &serde_json::Value| -> Result<(), EdgeError> {
        writeln!(out, "{v}")
            .and_then(|_| out.flush())
            .map_err(|e| EdgeError::Io {
                path: args.events.clone().unwrap_or_else(|| "stdout".into()),
                source: e,
            })
    };
    let summary = link::serve(
        pipe,
        link,
        &mut |frame_id| frames.next(frame_id),
        &options,
        stop,
        &mut write_event,
    )?;
    Ok(summary.frames)
}

/// A set read whole, in backend-sized batches. Frame ids go on from the frames the bank has
/// already seen, so they never repeat across runs (or after a kill and a restart).
fn stream_set(
    args: &RunArgs,
    pipe: &mut Pipeline,
    set: &ImageSet,
    name: &str,
    sink: &mut Sink,
    tally: &mut Tally,
    stop: &AtomicBool,
) -> Result<()> {
    let first_id = pipe.bank().seen();
    let n = args.limit.unwrap_or(usize::MAX).min(set.len());
    for start in (0..n).step_by(pipe.batch()) {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let end = (start + pipe.batch()).min(n);
        let frames: Vec<Frame> = (start..end)
            .map(|i| set_frame(set, name, i, first_id + i as u64))
            .collect();
        let embeddings = args.report.is_some().then_some(&mut tally.embeddings);
        let events = pipe.process(&frames, embeddings)?;
        sink.emit(events, pipe)?;
        if let Some(l) = &set.labels {
            tally.labels.extend_from_slice(&l[start..end]);
        }
        tally.frames = end;
    }
    Ok(())
}

/// A live camera until the limit, a signal, or [`CAMERA_FAILURES`] bad frames in a row.
#[cfg(feature = "v4l2")]
fn stream_camera(
    args: &RunArgs,
    pipe: &mut Pipeline,
    camera: &mut edge_runtime::camera::V4l2Camera,
    device: &str,
    sink: &mut Sink,
    tally: &mut Tally,
    stop: &AtomicBool,
) -> Result<()> {
    let first_id = pipe.bank().seen();
    loop {
        if stop.load(Ordering::Relaxed) || args.limit.is_some_and(|n| tally.frames >= n) {
            return Ok(());
        }
        // A camera that keeps failing ends the run, with everything stored on disk.
        let frame = match capture(camera, device, first_id + tally.frames as u64, stop) {
            Ok(frame) => frame,
            Err(_) if stop.load(Ordering::Relaxed) => return Ok(()),
            Err(e) => {
                pipe.snapshot()?;
                bail!("{device}: {CAMERA_FAILURES} frames failed in a row ({e}); stopping");
            }
        };
        let events = pipe.process(&[frame], None)?;
        sink.emit(events, pipe)?;
        tally.frames += 1;
    }
}

/// Image paths on stdin, one per line, as they arrive; a bad image is named and skipped.
fn stream_stdin(
    args: &RunArgs,
    pipe: &mut Pipeline,
    opts: &ImageFolderOptions,
    sink: &mut Sink,
    tally: &mut Tally,
    stop: &AtomicBool,
) -> Result<()> {
    let first_id = pipe.bank().seen();
    let stdin = std::io::stdin();
    for (i, line) in stdin.lock().lines().enumerate() {
        if stop.load(Ordering::Relaxed) || args.limit.is_some_and(|n| i >= n) {
            break;
        }
        let line = line?;
        let path = Path::new(line.trim());
        let pixels = match read_image(path, opts) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("skipped frame {i}: {e}");
                continue;
            }
        };
        let frame = captured(path.display().to_string(), first_id + i as u64, pixels);
        let events = pipe.process(&[frame], None)?;
        sink.emit(events, pipe)?;
        tally.frames += 1;
    }
    Ok(())
}

/// `--report`: the online clusters against the labels, beside batch k-means on the same
/// embeddings.
fn quality_report(
    path: &Path,
    bundle: &ModelBundle,
    pipe: &Pipeline,
    tally: &Tally,
    assigned: &[u32],
    frames_per_s: f64,
) -> Result<()> {
    let labels = &tally.labels;
    if labels.len() != assigned.len() || labels.is_empty() {
        bail!("--report needs labelled frames (Fashion-MNIST or class sub-folders)");
    }
    let dim = pipe.online().dim();
    let k = bundle.manifest.centroid_count_or(10);
    let batch = KMeansParams::new(k)
        .seed(0)
        .n_redo(3)
        .check()?
        .fit(MatRef::new(&tally.embeddings, dim)?)?;
    let (online_nmi, batch_nmi) = (
        normalized_mutual_info(labels, assigned)?,
        normalized_mutual_info(labels, &batch.labels)?,
    );
    let (online_acc, batch_acc) = (
        clustering_accuracy(labels, assigned)?,
        clustering_accuracy(labels, &batch.labels)?,
    );
    let report = serde_json::json!({
        "frames": assigned.len(),
        "online_clusters": pipe.online().clusters().len(),
        "online_nmi": online_nmi,
        "online_accuracy": online_acc,
        "batch_k": k,
        "batch_nmi": batch_nmi,
        "batch_accuracy": batch_acc,
        "frames_per_s": frames_per_s,
    });
    eprintln!(
        "online NMI {online_nmi:.4} (accuracy {online_acc:.4}) vs batch k-means NMI \
         {batch_nmi:.4} (accuracy {batch_acc:.4}): {:.3}x",
        online_nmi / batch_nmi
    );
    std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    Ok(())
}

#[cfg(feature = "v4l2")]
fn camera_source(device: &str, opts: ImageFolderOptions) -> Result<Source> {
    let camera = edge_runtime::camera::V4l2Camera::open(device, opts)?;
    let l = camera.layout();
    eprintln!(
        "{device}: {:?} {}x{} -> the model's input",
        l.format, l.width, l.height
    );
    Ok(Source::Camera(camera, device.to_string()))
}

#[cfg(not(feature = "v4l2"))]
fn camera_source(device: &str, _opts: ImageFolderOptions) -> Result<Source> {
    bail!("{device}: this edge-runtime was built without cameras; rebuild it with --features v4l2")
}

/// The camera's next frame as `frame_id`: a bad buffer is reported and the next one taken,
/// up to [`CAMERA_FAILURES`] in a row (or until `stop`).
#[cfg(feature = "v4l2")]
fn capture(
    camera: &mut edge_runtime::camera::V4l2Camera,
    device: &str,
    frame_id: u64,
    stop: &AtomicBool,
) -> Result<Frame, EdgeError> {
    let mut failures = 0;
    loop {
        match camera.next_frame() {
            Ok((pixels, _sequence)) => return Ok(captured(device.to_string(), frame_id, pixels)),
            Err(e) if failures + 1 < CAMERA_FAILURES && !stop.load(Ordering::Relaxed) => {
                eprintln!("frame {frame_id}: {e}; capturing again");
                failures += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A frame just captured from `source`.
fn captured(source: String, frame_id: u64, pixels: Vec<u8>) -> Frame {
    Frame {
        meta: CaptureMeta {
            timestamp_ms: now_ms(),
            source,
            frame_id,
            detail: None,
        },
        pixels,
    }
}

/// Image `i` of a set (its file path as the source, else the set's name).
fn set_frame(set: &ImageSet, name: &str, i: usize, frame_id: u64) -> Frame {
    let source = set
        .paths
        .get(i)
        .map_or_else(|| name.to_string(), |p| p.display().to_string());
    captured(source, frame_id, set.image(i).to_vec())
}

/// Carries out the commands the MCU sent since the last batch.
fn take_commands(link: Option<&BoardLink>, pipe: &mut Pipeline, out: &mut dyn Write) -> Result<()> {
    let Some(link) = link else { return Ok(()) };
    while let Some(event) = link.try_recv() {
        if let LinkEvent::Command(c) = event {
            writeln!(out, "{}", link::apply_command(pipe, c)?)?;
        }
    }
    Ok(())
}

/// One frame at a time from a source, for frames paced by the MCU.
struct FrameReader<'a> {
    source: &'a mut Source,
    /// Ends a camera's retries early on SIGINT/SIGTERM.
    #[cfg_attr(not(feature = "v4l2"), allow(dead_code))]
    stop: &'a AtomicBool,
    next: usize,
    stdin: Option<std::io::Lines<std::io::StdinLock<'static>>>,
}

impl<'a> FrameReader<'a> {
    fn new(source: &'a mut Source, stop: &'a AtomicBool) -> Self {
        let stdin = matches!(source, Source::Stdin(_)).then(|| std::io::stdin().lock().lines());
        Self {
            source,
            stop,
            next: 0,
            stdin,
        }
    }

    /// The next capture, labelled with the MCU's frame id; `None` when the input is done.
    fn next(&mut self, frame_id: u32) -> Option<Result<Frame, EdgeError>> {
        match (&mut *self.source, &mut self.stdin) {
            (Source::Set(set, name), _) => {
                let i = self.next;
                self.next += 1;
                (i < set.len()).then(|| Ok(set_frame(set, name, i, u64::from(frame_id))))
            }
            (Source::Stdin(opts), Some(lines)) => loop {
                let line = match lines.next()? {
                    Ok(l) => l,
                    Err(e) => {
                        return Some(Err(EdgeError::Io {
                            path: "stdin".into(),
                            source: e,
                        }))
                    }
                };
                let path = Path::new(line.trim());
                match read_image(path, opts) {
                    Ok(pixels) => {
                        return Some(Ok(captured(
                            path.display().to_string(),
                            u64::from(frame_id),
                            pixels,
                        )))
                    }
                    // A bad frame is reported and skipped; the stream goes on.
                    Err(e) => eprintln!("skipped frame {frame_id}: {e}"),
                }
            },
            (Source::Stdin(_), None) => None,
            // The MCU's FrameReady triggers a capture.
            #[cfg(feature = "v4l2")]
            (Source::Camera(camera, device), _) => {
                Some(capture(camera, device, u64::from(frame_id), self.stop))
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
