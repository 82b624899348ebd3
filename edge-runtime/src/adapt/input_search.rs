//! The one-off search of the input's corrections: the frames' blockiness first (and the
//! deblocking it calls for), then the camera's roll, then the smoothing of the frames turned
//! back by it (the maths is `models::adapt::deblock`, `models::adapt::roll` and
//! `models::adapt::smoothing`). Frames are kept from the warm-up, then searched either inline
//! with the pipeline's model or on a thread at the lowest priority with a model of its own,
//! so that the frame path never waits for it.

use std::thread::JoinHandle;
use std::time::Instant;

use models::adapt::deblock::{deblock_planes, DeblockEstimate, DeblockParams};
use models::adapt::roll::{search_roll, undo_roll, RollEstimate, RollParams};
use models::adapt::smoothing::{search_smoothing, SmoothingEstimate, SmoothingParams};
use models::adapt::{EmbeddingStats, InputStats};
use models::geometry::gaussian_blur_planes;
use models::preprocess::PreprocessSpec;

use super::worker::lower_priority;
use crate::backend::{embed_pixels_mapped, Runnable};
use crate::EdgeError;

/// A finished search: what it found (each part only when searched), over how many frames, in
/// how long.
#[derive(Debug)]
pub(crate) struct InputFound {
    pub deblock: Option<DeblockEstimate>,
    pub roll: Option<RollEstimate>,
    pub smoothing: Option<SmoothingEstimate>,
    pub frames: usize,
    pub seconds: f64,
}

/// What is searched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SearchParams {
    pub deblock: Option<DeblockParams>,
    pub roll: Option<RollParams>,
    pub smoothing: Option<SmoothingParams>,
}

/// What a search needs besides the frames.
#[derive(Debug, Clone)]
struct SearchInputs {
    spec: PreprocessSpec,
    /// The input's statistics as they stand (frozen for the search).
    input: Option<InputStats>,
    train: EmbeddingStats,
}

type Found = (
    Option<DeblockEstimate>,
    Option<RollEstimate>,
    Option<SmoothingEstimate>,
);
type Running = JoinHandle<(Box<dyn Runnable>, Result<Found, EdgeError>)>;

pub(crate) struct InputSearch {
    params: SearchParams,
    /// The training embeddings' statistics the search matches.
    train: EmbeddingStats,
    wanted: usize,
    frames: Vec<Vec<u8>>,
    /// The search's own model (`None`: it runs inline on the pipeline's).
    run: Option<Box<dyn Runnable>>,
    running: Option<(Running, Instant, usize)>,
}

impl std::fmt::Debug for InputSearch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputSearch")
            .field("params", &self.params)
            .field("frames", &self.frames.len())
            .field("background", &self.run.is_some())
            .field("running", &self.running.is_some())
            .finish()
    }
}

impl InputSearch {
    /// A search over `wanted` frames towards `train`; in the background when given a model of
    /// its own.
    pub fn new(
        params: SearchParams,
        train: EmbeddingStats,
        wanted: usize,
        run: Option<Box<dyn Runnable>>,
    ) -> Self {
        Self {
            params,
            train,
            wanted,
            frames: Vec::new(),
            run,
            running: None,
        }
    }

    /// Keeps frames until it has enough (none while a search runs).
    pub fn collect(&mut self, frames: &[&[u8]]) {
        if self.running.is_some() {
            return;
        }
        let room = self.wanted.saturating_sub(self.frames.len());
        self.frames
            .extend(frames.iter().take(room).map(|f| f.to_vec()));
    }

    /// Whether it has its frames and is not running.
    pub fn is_due(&self) -> bool {
        self.running.is_none() && self.frames.len() >= self.wanted
    }

    /// Starts the search, each frame preprocessed by `spec` and mapped by the input's
    /// statistics `input`: inline on `pipeline_run` (returns what it found), or on a
    /// low-priority thread (returns `None`; `poll` picks the answer up).
    pub fn start(
        &mut self,
        pipeline_run: &dyn Runnable,
        spec: &PreprocessSpec,
        input: Option<InputStats>,
    ) -> Result<Option<InputFound>, EdgeError> {
        let inputs = SearchInputs {
            spec: spec.clone(),
            input,
            train: self.train.clone(),
        };
        let frames = std::mem::take(&mut self.frames);
        let t0 = Instant::now();
        let n = frames.len();
        let Some(run) = self.run.take() else {
            let (deblock, roll, smoothing) = search(pipeline_run, &frames, &inputs, &self.params)?;
            return Ok(Some(InputFound {
                deblock,
                roll,
                smoothing,
                frames: n,
                seconds: t0.elapsed().as_secs_f64(),
            }));
        };
        let params = self.params;
        let handle = std::thread::Builder::new()
            .name("input-search".into())
            .spawn(move || {
                lower_priority();
                let found = search(run.as_ref(), &frames, &inputs, &params);
                (run, found)
            })
            .map_err(|e| EdgeError::Io {
                path: "input search thread".into(),
                source: e,
            })?;
        self.running = Some((handle, t0, n));
        Ok(None)
    }

    /// The background search's answer once it is done (`wait`: waits for it).
    pub fn poll(&mut self, wait: bool) -> Option<Result<InputFound, EdgeError>> {
        let done = self
            .running
            .as_ref()
            .is_some_and(|(h, _, _)| wait || h.is_finished());
        if !done {
            return None;
        }
        let (handle, t0, frames) = self.running.take()?;
        let found = match handle.join() {
            Ok((run, found)) => {
                self.run = Some(run);
                found
            }
            Err(_) => Err(EdgeError::Io {
                path: "input search thread".into(),
                source: std::io::Error::other("the input search thread panicked"),
            }),
        };
        Some(found.map(|(deblock, roll, smoothing)| InputFound {
            deblock,
            roll,
            smoothing,
            frames,
            seconds: t0.elapsed().as_secs_f64(),
        }))
    }

    /// Drops the kept frames and any search under way (its answer is discarded).
    pub fn reset(&mut self) {
        let _ = self.poll(true);
        self.frames.clear();
    }
}

/// The search over `frames` (the model's input pixels) with `run`. Their blockiness is
/// measured first. Then each candidate's frames are preprocessed, deblocked (when found
/// block-coded), turned back, smoothed, mapped by the input's statistics, and embedded. The
/// roll is searched first, unsmoothed; the smoothing then on the frames turned back by it.
fn search(
    run: &dyn Runnable,
    frames: &[Vec<u8>],
    inputs: &SearchInputs,
    params: &SearchParams,
) -> Result<Found, EdgeError> {
    let (h, w) = (inputs.spec.height as usize, inputs.spec.width as usize);
    let frames: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let deblock = params
        .deblock
        .map(|p| DeblockEstimate::of_frames(&p, frames.iter().copied(), h, w));
    let block = deblock.as_ref().map_or(0, |d| d.block as usize);
    let embed = |degrees: f32, sigma: f32| {
        embed_pixels_mapped(run, &inputs.spec, &frames, &mut |x| {
            deblock_planes(x, h, w, block);
            undo_roll(x, h, w, degrees);
            gaussian_blur_planes(x, h, w, sigma);
            if let Some(s) = &inputs.input {
                s.adapt(x);
            }
        })
    };
    let roll = params
        .roll
        .map(|p| search_roll(&p, &inputs.train, |degrees| embed(degrees, 0.0)))
        .transpose()?;
    let degrees = roll.as_ref().map_or(0.0, |r| r.degrees);
    let smoothing = params
        .smoothing
        .map(|p| search_smoothing(&p, &inputs.train, |sigma| embed(degrees, sigma)))
        .transpose()?;
    Ok((deblock, roll, smoothing))
}
