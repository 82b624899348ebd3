//! On-device adaptation of the embedding to the scene the camera sees, without labels and
//! without candle (the maths is `models::adapt`).
//!
//! When the frames' blockiness is measured (`AdaptConfig::deblock`) and they carry a codec's
//! block grid, each preprocessed frame is first deblocked along it
//! ([`models::adapt::deblock`]). When the camera's roll is searched (`AdaptConfig::roll`),
//! each frame is then turned back by the roll found ([`models::adapt::roll`]); when the
//! smoothing is searched (`AdaptConfig::smoothing`), it is then low-passed by the Gaussian
//! found ([`models::adapt::smoothing`]). The measurement and the search run once, on the frames
//! of the warm-up, and their answer is kept in the adapter record.
//!
//! Each preprocessed frame is then re-normalised from the running statistics of the frames
//! seen ([`InputStats`], AdaBN at the input; `AdaptConfig::input`). Each raw embedding then
//! passes, before clustering, through
//! 1. statistics adaptation ([`Recentring`]): re-centred (and, `Full`, re-whitened) from the
//!    running statistics of what the device sees onto the training embeddings' statistics
//!    (`embedding-stats.json` beside the manifest); and
//! 2. a trained layer ([`LinearAdapter`], identity at first). Every `every` frames a round of
//!    `steps` swapped-prediction steps trains a candidate from the bank's stored thumbnails
//!    ([`trainer`]); the candidate replaces the layer only if the silhouette of a held-out
//!    part of the bank does not get worse, else it is dropped (rolled back). On a kept
//!    update the online clusters move to the candidate's space, their ids kept by Hungarian
//!    matching, and the adapter is saved beside the bank ([`store`]).
//!
//! Rounds run on a worker thread at the lowest scheduling priority, so inference goes first
//! ([`worker`]); `TrainConfig::background = false` runs them inline (deterministic, for tests
//! and the shift benchmark).

mod input_search;
pub mod store;
pub mod trainer;
mod worker;

use std::path::{Path, PathBuf};

use models::adapt::deblock::{deblock_planes, DeblockParams};
use models::adapt::roll::{undo_roll, RollParams};
use models::adapt::smoothing::SmoothingParams;
use models::adapt::swapped::SwappedParams;
use models::adapt::views::ViewParams;
use models::adapt::{EmbeddingStats, InputStats, LinearAdapter, Recentring, RecentringKind};
use models::geometry::gaussian_blur_planes;

pub(crate) use input_search::InputFound;
use input_search::{InputSearch, SearchParams};
pub use models::adapt::AdapterExport;
pub use store::AdapterRecord;
pub use trainer::{Job, Outcome, Trainer};
pub use worker::Worker;

use crate::backend::Runnable;
use crate::bundle::ModelBundle;
use crate::error::AdapterProblem;
use crate::EdgeError;

/// How the pipeline adapts.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptConfig {
    /// Statistics adaptation of the embedding, if any.
    pub recentring: Option<RecentringKind>,
    /// Statistics adaptation of the input: each preprocessed frame mapped back to the
    /// training images' per-channel mean and standard deviation.
    pub input: bool,
    /// Frames in the running statistics' window, and frames before they are used.
    pub window: u64,
    pub warmup: u64,
    /// The trained layer, if any.
    pub train: Option<TrainConfig>,
    /// Measure the blockiness of the warm-up's frames and, when they are block-coded, deblock
    /// every frame.
    pub deblock: Option<DeblockParams>,
    /// Search the camera's roll on the warm-up's frames and turn every frame back by it.
    pub roll: Option<RollParams>,
    /// Search a Gaussian low-pass on the same frames (after the roll) and smooth every frame
    /// by it.
    pub smoothing: Option<SmoothingParams>,
    /// The input search (blockiness, roll, smoothing) on a low-priority thread with its own
    /// model (`false`: inline, for tests and the shift benchmark).
    pub roll_in_background: bool,
}

impl Default for AdaptConfig {
    fn default() -> Self {
        Self {
            recentring: Some(RecentringKind::Diagonal),
            input: true,
            window: 2000,
            warmup: 200,
            train: None,
            deblock: Some(DeblockParams::default()),
            roll: Some(RollParams::default()),
            smoothing: Some(SmoothingParams::default()),
            roll_in_background: true,
        }
    }
}

/// Frames the input search looks at, at least (it uses the warm-up's frames when more).
const INPUT_SEARCH_MIN_FRAMES: u64 = 64;

/// Bounded training of the layer: `steps` steps of `batch` frames every `every` frames.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub every: u64,
    pub steps: usize,
    pub batch: usize,
    /// Stored frames drawn per round for training, and held out for the check.
    pub train_frames: usize,
    pub held_out_frames: usize,
    /// How much worse the held-out silhouette may get and the update still be kept.
    pub tolerance: f64,
    pub objective: SwappedParams,
    pub views: ViewParams,
    /// Rounds on a low-priority worker thread (`false`: inline, deterministic).
    pub background: bool,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            every: 500,
            steps: 40,
            batch: 32,
            train_frames: 512,
            held_out_frames: 256,
            tolerance: 0.0,
            objective: SwappedParams::default(),
            views: ViewParams::default(),
            background: true,
            seed: 0,
        }
    }
}

/// The training embeddings' statistics of the model in `model_dir`.
pub fn read_embedding_stats(model_dir: &Path, dim: usize) -> Result<EmbeddingStats, EdgeError> {
    let path = model_dir.join(models::adapt::EMBEDDING_STATS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(EdgeError::NoEmbeddingStats { path })
        }
        Err(e) => return Err(EdgeError::Io { path, source: e }),
    };
    let stats: EmbeddingStats =
        serde_json::from_slice(&bytes).map_err(|source| EdgeError::EmbeddingStats {
            path: path.clone(),
            source,
        })?;
    if !stats.is_consistent() || stats.dim as usize != dim {
        return Err(EdgeError::EmbeddingStatsShape {
            path,
            dim: stats.dim,
            means: stats.mean.len(),
            covariance: stats.covariance.len(),
            model_dim: dim,
        });
    }
    Ok(stats)
}

/// The adaptation state a pipeline carries.
#[derive(Debug)]
pub struct Adaptation {
    pub(crate) config: AdaptConfig,
    train_stats: Option<EmbeddingStats>,
    pub(crate) record: AdapterRecord,
    /// Where the record is saved (the bank's directory).
    bank_dir: PathBuf,
    pub(crate) worker: Option<Worker>,
    pub(crate) since_round: u64,
    pub(crate) rounds: u64,
    /// The roll and smoothing search, until the record holds its answer.
    input_search: Option<InputSearch>,
    /// The frames' height and width.
    frame_hw: (usize, usize),
}

impl Adaptation {
    /// Resumes the adapter saved in `bank_dir` for this model, or starts at the identity.
    pub fn open(
        model: &ModelBundle,
        bank_dir: &Path,
        dim: usize,
        config: AdaptConfig,
    ) -> Result<Self, EdgeError> {
        let train_stats = match config.recentring.is_some() || config.searches_input() {
            true => Some(read_embedding_stats(
                model.path.parent().unwrap_or(Path::new(".")),
                dim,
            )?),
            false => None,
        };
        let sha = model.file().sha256.clone();
        let spec = &model.manifest.preprocess;
        let channels = spec.channels();
        let fresh = fresh_record(&config, train_stats.as_ref(), &sha, dim, channels);
        let record = match store::load(bank_dir, &sha)? {
            None => fresh,
            // The layer was trained on top of one kind of statistics: with another it would
            // not fit, and replacing it would lose what was learned.
            Some(r) if r.recentring.as_ref().map(Recentring::kind) != config.recentring => {
                return Err(EdgeError::Adapter {
                    path: store::path(bank_dir),
                    problem: AdapterProblem::OtherStatistics {
                        stored: statistics_flag(r.recentring.as_ref().map(Recentring::kind)),
                        given: statistics_flag(config.recentring),
                    },
                })
            }
            // Input statistics are relearnt in a warm-up: follow the configuration.
            Some(r) if r.input.is_some() != config.input => AdapterRecord {
                input: fresh.input,
                ..r
            },
            Some(r) => r,
        };
        Ok(Self {
            config,
            train_stats,
            record,
            bank_dir: bank_dir.to_path_buf(),
            worker: None,
            since_round: 0,
            rounds: 0,
            input_search: None,
            frame_hw: (spec.height as usize, spec.width as usize),
        })
    }

    pub fn record(&self) -> &AdapterRecord {
        &self.record
    }

    /// Deblocks one preprocessed frame when its stream is block-coded, turns it back by the
    /// roll found and smooths it by the smoothing found, then observes and re-normalises it
    /// in place (when `config.input`).
    pub fn map_input(&mut self, frame: &mut [f32]) {
        let (h, w) = self.frame_hw;
        deblock_planes(frame, h, w, self.deblock_block());
        undo_roll(frame, h, w, self.roll_degrees());
        gaussian_blur_planes(frame, h, w, self.smoothing_sigma());
        if let Some(s) = &mut self.record.input {
            s.observe_and_adapt(frame);
        }
    }

    /// Observes and maps a batch of raw embeddings in place.
    pub fn map(&mut self, rows: &mut [f32]) {
        let d = self.record.linear.dim();
        if let Some(r) = &mut self.record.recentring {
            r.observe_and_adapt(rows);
        }
        if self.config.train.is_some() {
            self.record.linear.apply_rows(rows);
        }
        self.record.frames += (rows.len() / d.max(1)) as u64;
    }

    /// The roll every frame is turned back by: the one found, while the search is on (a
    /// record keeps its roll when a run turns the search off, and that run turns nothing).
    pub fn roll_degrees(&self) -> f32 {
        match (&self.config.roll, &self.record.roll) {
            (Some(_), Some(found)) => found.degrees,
            _ => 0.0,
        }
    }

    /// The block grid every frame is deblocked along (0: none): the one found, while the
    /// measurement is on.
    pub fn deblock_block(&self) -> usize {
        match (&self.config.deblock, &self.record.deblock) {
            (Some(_), Some(found)) => found.block as usize,
            _ => 0,
        }
    }

    /// The Gaussian width every frame is smoothed by: the one found, while the search is on.
    pub fn smoothing_sigma(&self) -> f32 {
        match (&self.config.smoothing, &self.record.smoothing) {
            (Some(_), Some(found)) => found.sigma,
            _ => 0.0,
        }
    }

    /// Whether the record holds the input search's answer (its parts are searched together).
    fn input_searched(&self) -> bool {
        self.record.deblock.is_some()
            || self.record.roll.is_some()
            || self.record.smoothing.is_some()
    }

    /// Gives the input search a model of its own, so that it runs on a low-priority thread
    /// (without one it runs inline).
    pub(crate) fn prepare_input_search(&mut self, run: Option<Box<dyn Runnable>>) {
        // `open` read the training statistics whenever the search is on.
        let wanted = self.config.warmup.max(INPUT_SEARCH_MIN_FRAMES) as usize;
        let params = SearchParams {
            deblock: self.config.deblock,
            roll: self.config.roll,
            smoothing: self.config.smoothing,
        };
        self.input_search = match (self.config.searches_input(), &self.train_stats) {
            (true, Some(train)) => Some(InputSearch::new(params, train.clone(), wanted, run)),
            _ => None,
        };
    }

    /// Keeps frames for the input search while it is still to run.
    pub(crate) fn sample_for_input_search(&mut self, frames: &[&[u8]]) {
        if !self.input_searched() {
            if let Some(search) = &mut self.input_search {
                search.collect(frames);
            }
        }
    }

    /// Picks up a finished input search (`wait`: waits for one under way), or starts one
    /// when its frames are in. What it found is kept in the record and saved; a block grid,
    /// a roll or a smoothing found restarts the embedding's statistics, which described the
    /// frames as they came.
    pub(crate) fn input_search_tick(
        &mut self,
        pipeline_run: &dyn Runnable,
        spec: &models::preprocess::PreprocessSpec,
        wait: bool,
    ) -> Result<Option<InputFound>, EdgeError> {
        let searched = self.input_searched();
        let Some(search) = &mut self.input_search else {
            return Ok(None);
        };
        let found = match search.poll(wait) {
            Some(found) => Some(found?),
            None if !searched && search.is_due() => {
                search.start(pipeline_run, spec, self.record.input.clone())?
            }
            None => None,
        };
        let Some(found) = found else {
            return Ok(None);
        };
        let turned = found.roll.as_ref().is_some_and(|r| r.degrees != 0.0);
        let smoothed = found.smoothing.as_ref().is_some_and(|s| s.sigma != 0.0);
        let deblocked = found.deblock.as_ref().is_some_and(|d| d.block != 0);
        if turned || smoothed || deblocked {
            self.record.recentring = fresh_recentring(&self.config, self.train_stats.as_ref());
        }
        self.record.roll = found.roll.clone();
        self.record.smoothing = found.smoothing.clone();
        self.record.deblock = found.deblock.clone();
        self.save()?;
        Ok(Some(found))
    }

    /// Keeps an accepted layer and saves the adapter.
    pub(crate) fn accept(&mut self, linear: LinearAdapter) -> Result<(), EdgeError> {
        self.record.linear = linear;
        self.record.updates += 1;
        self.save()
    }

    pub fn save(&self) -> Result<(), EdgeError> {
        store::save(&self.bank_dir, &self.record)
    }

    /// Back to the shipped model: identity layer, fresh statistics, the saved adapter moved
    /// aside. Returns where it went.
    pub fn reset(&mut self) -> Result<Option<PathBuf>, EdgeError> {
        // A round under way started from what is being dropped: its outcome is discarded.
        if let Some(w) = &mut self.worker {
            let _ = w.wait();
        }
        let dim = self.record.linear.dim();
        let channels = self.record.input.as_ref().map_or(1, InputStats::channels);
        self.record = fresh_record(
            &self.config,
            self.train_stats.as_ref(),
            &self.record.model_sha256,
            dim,
            channels,
        );
        self.since_round = 0;
        if let Some(search) = &mut self.input_search {
            search.reset();
        }
        store::reset(&self.bank_dir)
    }
}

impl AdaptConfig {
    /// Whether the input's corrections (deblocking, roll, smoothing) are searched.
    pub fn searches_input(&self) -> bool {
        self.deblock.is_some() || self.roll.is_some() || self.smoothing.is_some()
    }
}

/// The `--adapt` value that selects `kind`.
fn statistics_flag(kind: Option<RecentringKind>) -> &'static str {
    match kind {
        None => "none",
        Some(RecentringKind::Diagonal) => "stats",
        Some(RecentringKind::Full) => "whiten",
    }
}

fn fresh_record(
    config: &AdaptConfig,
    train_stats: Option<&EmbeddingStats>,
    sha: &str,
    dim: usize,
    channels: usize,
) -> AdapterRecord {
    AdapterRecord {
        format: store::ADAPTER_FORMAT,
        model_sha256: sha.to_string(),
        updates: 0,
        frames: 0,
        linear: LinearAdapter::identity(dim),
        recentring: fresh_recentring(config, train_stats),
        input: config
            .input
            .then(|| InputStats::new(channels, config.window, config.warmup)),
        roll: None,
        smoothing: None,
        deblock: None,
    }
}

fn fresh_recentring(
    config: &AdaptConfig,
    train_stats: Option<&EmbeddingStats>,
) -> Option<Recentring> {
    config
        .recentring
        .zip(train_stats)
        .map(|(kind, s)| Recentring::new(kind, s, config.window, config.warmup))
}
