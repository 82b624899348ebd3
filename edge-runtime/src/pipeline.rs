//! The streaming pipeline: frames in, batched through the backend, L2-normalised as the
//! manifest asks, clustered online, stored in the bank, events out. Every
//! `recluster_every` frames the bank is re-clustered with batch k-means; cluster ids stay
//! stable through it by Hungarian matching against the online centroids. With adaptation
//! on (`enable_adaptation`), each raw embedding is adapted to the scene before clustering
//! (see [`crate::adapt`]).

use std::collections::BTreeMap;
use std::time::Instant;

use models::cluster::{Cluster, CpuGemmAssign, KMeansParams, OnlineKMeans, OnlineKMeansParams};
use models::linalg::l2_normalize_rows;
use models::MatRef;
use serde::Serialize;

use crate::adapt::{AdaptConfig, Adaptation, Job, Outcome, TrainConfig, Trainer, Worker};
use crate::backend::{embed_pixels_mapped, PrepareOptions, Runnable, Runtime};
use crate::bank::identity::BankIdentity;
use crate::bank::{CaptureMeta, FrameDetail, MemoryBank, Thumbnail};
use crate::bundle::ModelBundle;
use crate::preprocess::Preprocessor;
use crate::EdgeError;

#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    pub online: OnlineKMeansParams,
    /// Re-cluster the bank after this many frames (0: never).
    pub recluster_every: u64,
    pub seed: u64,
    /// Longest side of the thumbnails stored with each entry: `None` keeps the model's input
    /// size, `Some(0)` stores none.
    pub thumb_size: Option<usize>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            online: OnlineKMeansParams::default(),
            recluster_every: 5_000,
            seed: 0,
            thumb_size: None,
        }
    }
}

/// A captured frame, already at the manifest's size and colour (planar u8).
#[derive(Debug, Clone)]
pub struct Frame {
    pub meta: CaptureMeta,
    pub pixels: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Frame {
        frame_id: u64,
        source: String,
        cluster_id: u32,
        distance: f32,
        novelty: f32,
        novel: bool,
        /// `opened N` or `merged N into M` when the cluster set changed.
        #[serde(skip_serializing_if = "Option::is_none")]
        change: Option<String>,
    },
    Recluster {
        entries: usize,
        clusters: usize,
        /// Bank entries whose cluster id changed.
        relabelled: usize,
        seconds: f64,
    },
    /// An adaptation round finished: its candidate layer was kept or rolled back.
    Adapt {
        round: u64,
        kept: bool,
        /// Held-out silhouette under the current layer and under the candidate.
        proxy_before: f64,
        proxy_after: f64,
        loss_first: f32,
        loss_last: f32,
        steps: usize,
        /// Mean time of one adapter step (gradient and update, not the encoder).
        step_ms: f64,
        seconds: f64,
        /// Updates kept so far.
        updates: u64,
    },
    /// The frames' blockiness was measured (once, after the warm-up, before the roll);
    /// `block` is the grid every later frame is deblocked along (0: none).
    Deblock {
        block: u32,
        /// Mean step across the grid's boundaries over the mean step beside them (about 1
        /// for frames that were never block-coded).
        blockiness: f64,
        frames: usize,
    },
    /// The camera roll was searched (once, after the warm-up); `degrees` is what every later
    /// frame is turned back by (0: none found).
    Roll {
        degrees: f32,
        /// Statistics distance to the training embeddings at that angle, unturned, and at
        /// the opposite angle.
        distance_best: f64,
        distance_unturned: f64,
        distance_opposite: f64,
        angles: usize,
        frames: usize,
        seconds: f64,
    },
    /// The input smoothing was searched (once, after the warm-up, with the roll); `sigma` is
    /// the Gaussian width every later frame is smoothed by (0: none).
    Smoothing {
        sigma: f32,
        /// Statistics distance to the training embeddings at that width and unsmoothed.
        distance_best: f64,
        distance_unsmoothed: f64,
        widths: usize,
        frames: usize,
    },
}

pub struct Pipeline {
    run: Box<dyn Runnable>,
    pre: Preprocessor,
    l2: bool,
    online: OnlineKMeans,
    bank: MemoryBank,
    config: PipelineConfig,
    since_recluster: u64,
    /// Adaptation of the raw embeddings to the scene, when on.
    adaptation: Option<Adaptation>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("clusters", &self.online.clusters().len())
            .field("bank", &self.bank.len())
            .finish()
    }
}

impl Pipeline {
    /// Starts from the bank's clusters if it holds any, else from the manifest's centroids,
    /// else from the stream's first frames.
    pub fn new(
        model: &ModelBundle,
        runtime: &dyn Runtime,
        options: &PrepareOptions,
        bank: MemoryBank,
        config: PipelineConfig,
    ) -> Result<Self, EdgeError> {
        // Refuse before anything is embedded: a bank holds one model's embeddings.
        let identity = BankIdentity::of(model, bank.config().format);
        crate::bank::identity::bind(bank.dir(), &identity)?;
        let run = runtime.prepare(model, options)?;
        let dim = run.embed_dim();
        let online = if !bank.is_empty() {
            OnlineKMeans::from_clusters(
                dim,
                config.online.clone(),
                clusters_of(&bank, dim),
                bank.next_cluster_id(),
            )
        } else if let Some(c) = &model.manifest.centroids {
            OnlineKMeans::with_centroids(dim, config.online.clone(), &c.values)
        } else {
            OnlineKMeans::new(dim, config.online.clone())
        }?;
        Ok(Self {
            run,
            pre: Preprocessor::new(model.manifest.preprocess.clone()),
            l2: model.manifest.embedding.l2_normalize,
            online,
            bank,
            config,
            since_recluster: 0,
            adaptation: None,
        })
    }

    /// Adapts every later embedding to the scene (see [`crate::adapt`]), resuming the adapter
    /// saved beside the bank for this model. Training rounds, when configured, get their own
    /// prepared copy of the model.
    pub fn enable_adaptation(
        &mut self,
        model: &ModelBundle,
        runtime: &dyn Runtime,
        options: &PrepareOptions,
        config: AdaptConfig,
    ) -> Result<(), EdgeError> {
        let dim = self.run.embed_dim();
        let mut adaptation = Adaptation::open(model, self.bank.dir(), dim, config)?;
        if let Some(train) = adaptation.config.train.clone() {
            let run = runtime.prepare(
                model,
                &PrepareOptions {
                    threads: 1,
                    ..options.clone()
                },
            )?;
            let trainer = Trainer::new(run, self.pre.clone(), train.clone());
            adaptation.worker = Some(Worker::new(trainer, train.background)?);
        }
        let background = adaptation.config.searches_input() && adaptation.config.roll_in_background;
        let search_run = match background {
            true => Some(runtime.prepare(
                model,
                &PrepareOptions {
                    threads: 1,
                    ..options.clone()
                },
            )?),
            false => None,
        };
        adaptation.prepare_input_search(search_run);
        self.adaptation = Some(adaptation);
        Ok(())
    }

    pub fn adaptation(&self) -> Option<&Adaptation> {
        self.adaptation.as_ref()
    }

    /// Returns to the shipped model (identity layer, fresh statistics; the saved adapter is
    /// moved aside). Returns where it went.
    pub fn reset_adaptation(&mut self) -> Result<Option<std::path::PathBuf>, EdgeError> {
        match &mut self.adaptation {
            Some(a) => a.reset(),
            None => crate::adapt::store::reset(self.bank.dir()),
        }
    }

    /// Waits for an adaptation round and an input search under way and applies them (for a
    /// clean stop and tests); returns their events.
    pub fn finish_adaptation(&mut self) -> Result<Vec<Event>, EdgeError> {
        let mut events = Vec::new();
        let outcome = self
            .adaptation
            .as_mut()
            .and_then(|a| a.worker.as_mut())
            .and_then(Worker::wait);
        if let Some(o) = outcome {
            events.push(self.apply_outcome(o?)?);
        }
        self.input_search_tick(&mut events, true)?;
        Ok(events)
    }

    pub fn batch(&self) -> usize {
        self.run.batch()
    }

    pub fn bank(&self) -> &MemoryBank {
        &self.bank
    }

    pub fn online(&self) -> &OnlineKMeans {
        &self.online
    }

    /// Embeds, clusters and stores `frames` (any number; run in backend-sized batches).
    /// Returns one event per frame, plus a re-clustering event when one ran. `embeddings`
    /// receives the normalised embeddings when given (for reports).
    pub fn process(
        &mut self,
        frames: &[Frame],
        mut embeddings: Option<&mut Vec<f32>>,
    ) -> Result<Vec<Event>, EdgeError> {
        let len = self.pre.spec().image_len();
        let dim = self.run.embed_dim();
        let mut events = Vec::with_capacity(frames.len());
        for chunk in frames.chunks(self.run.batch()) {
            if let Some(f) = chunk.iter().find(|f| f.pixels.len() != len) {
                return Err(EdgeError::InputShape {
                    what: format!("frame {} from {}", f.meta.frame_id, f.meta.source),
                    expected: len,
                    actual: f.pixels.len(),
                });
            }
            let pixels: Vec<&[u8]> = chunk.iter().map(|f| f.pixels.as_slice()).collect();
            if let Some(a) = &mut self.adaptation {
                a.sample_for_input_search(&pixels);
            }
            let adaptation = &mut self.adaptation;
            let mut emb =
                embed_pixels_mapped(self.run.as_ref(), self.pre.spec(), &pixels, &mut |x| {
                    if let Some(a) = adaptation.as_mut() {
                        a.map_input(x);
                    }
                })?;
            if let Some(adaptation) = &mut self.adaptation {
                adaptation.map(&mut emb);
            }
            if self.l2 {
                l2_normalize_rows(&mut emb, dim);
            }
            for (f, e) in chunk.iter().zip(emb.chunks(dim)) {
                let a = self.online.update(e)?;
                let meta = CaptureMeta {
                    detail: Some(FrameDetail {
                        thumbnail: self.thumbnail(&f.pixels),
                        distance: a.distance,
                        novelty: a.novelty,
                        novel: a.novel,
                    }),
                    ..f.meta.clone()
                };
                self.bank.insert(e, meta, a.cluster_id)?;
                let change = a.change.map(|c| match c {
                    models::cluster::ClusterChange::Opened(id) => format!("opened {id}"),
                    models::cluster::ClusterChange::Merged { kept, removed } => {
                        format!("merged {removed} into {kept}")
                    }
                });
                events.push(Event::Frame {
                    frame_id: f.meta.frame_id,
                    source: f.meta.source.clone(),
                    cluster_id: a.cluster_id,
                    distance: a.distance,
                    novelty: a.novelty,
                    novel: a.novel,
                    change,
                });
            }
            if let Some(out) = embeddings.as_deref_mut() {
                out.extend_from_slice(&emb);
            }
            self.bank.reserve_cluster_ids(self.online.next_id())?;
            self.adaptation_tick(chunk.len() as u64, &mut events)?;
            self.input_search_tick(&mut events, false)?;
            self.since_recluster += chunk.len() as u64;
            if self.config.recluster_every > 0
                && self.since_recluster >= self.config.recluster_every
            {
                events.push(self.recluster()?);
            }
        }
        Ok(events)
    }

    /// Picks up a finished adaptation round, and starts the next one when it is due.
    fn adaptation_tick(&mut self, frames: u64, events: &mut Vec<Event>) -> Result<(), EdgeError> {
        let Some(a) = &mut self.adaptation else {
            return Ok(());
        };
        let Some(train) = a.config.train.clone() else {
            return Ok(());
        };
        a.since_round += frames;
        if let Some(outcome) = a.worker.as_mut().and_then(Worker::poll) {
            events.push(self.apply_outcome(outcome?)?);
        }
        let a = self.adaptation.as_mut().expect("checked above");
        if a.since_round < train.every || a.worker.as_ref().is_none_or(Worker::is_busy) {
            return Ok(());
        }
        let Some(job) = self.adaptation_job(&train)? else {
            return Ok(());
        };
        let a = self.adaptation.as_mut().expect("checked above");
        a.since_round = 0;
        a.rounds += 1;
        let worker = a.worker.as_mut().expect("checked above");
        worker.submit(job);
        if let Some(outcome) = worker.poll() {
            events.push(self.apply_outcome(outcome?)?);
        }
        Ok(())
    }

    /// Starts the input search when its frames are in, and reports a finished one (`wait`:
    /// waits for one under way).
    fn input_search_tick(&mut self, events: &mut Vec<Event>, wait: bool) -> Result<(), EdgeError> {
        let Some(a) = self.adaptation.as_mut() else {
            return Ok(());
        };
        let Some(found) = a.input_search_tick(self.run.as_ref(), self.pre.spec(), wait)? else {
            return Ok(());
        };
        if let Some(e) = found.deblock {
            events.push(Event::Deblock {
                block: e.block,
                blockiness: e.ratio,
                frames: found.frames,
            });
        }
        if let Some(e) = found.roll {
            events.push(Event::Roll {
                degrees: e.degrees,
                distance_best: e.distance_best,
                distance_unturned: e.distance_unturned,
                distance_opposite: e.distance_opposite,
                angles: e.tried.len(),
                frames: found.frames,
                seconds: found.seconds,
            });
        }
        if let Some(e) = found.smoothing {
            events.push(Event::Smoothing {
                sigma: e.sigma,
                distance_best: e.distance_best,
                distance_unsmoothed: e.distance_unsmoothed,
                widths: e.tried.len(),
                frames: found.frames,
            });
        }
        Ok(())
    }

    /// A round's frames from the bank: entries whose sequence number is a multiple of 4 are
    /// the held-out part, never trained on. `None` while the bank holds too few thumbnails.
    fn adaptation_job(&self, train: &TrainConfig) -> Result<Option<Job>, EdgeError> {
        let a = self.adaptation.as_ref().expect("called with adaptation on");
        let mut rng = models::rng::Rng::new(train.seed ^ a.rounds.wrapping_mul(0x9E37_79B9));
        let (mut train_set, mut held) = (Vec::new(), Vec::new());
        for e in self.bank.entries() {
            if e.meta
                .detail
                .as_ref()
                .is_some_and(|d| d.thumbnail.is_some())
            {
                if e.seq % 4 == 0 {
                    held.push(e);
                } else {
                    train_set.push(e);
                }
            }
        }
        // Rounds need stored frames, and clusters to balance them over.
        if train_set.len() < train.batch || held.len() < 8 || self.online.clusters().is_empty() {
            return Ok(None);
        }
        let pick = |rng: &mut models::rng::Rng, from: &[&crate::bank::BankEntry], n: usize| {
            rng.sample_indices(from.len(), n.min(from.len()))
                .into_iter()
                .filter_map(|i| from[i].meta.detail.as_ref()?.thumbnail.as_ref())
                .map(|t| {
                    self.pre
                        .thumbnail_input(t)
                        .map_err(|source| EdgeError::Thumbnail {
                            path: self.bank.dir().to_path_buf(),
                            source,
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let train_frames = pick(&mut rng, &train_set, train.train_frames)?;
        let held_out = pick(&mut rng, &held, train.held_out_frames)?;
        Ok(Some(Job {
            round: a.rounds,
            train: train_frames,
            held_out,
            recentring: a.record().recentring.clone(),
            input: a.record().input.clone(),
            deblock_block: a.deblock_block() as u32,
            roll_degrees: a.roll_degrees(),
            smoothing_sigma: a.smoothing_sigma(),
            linear: a.record().linear.clone(),
            centroids: self
                .online
                .clusters()
                .iter()
                .flat_map(|c| c.centroid.iter().copied())
                .collect(),
            l2: self.l2,
        }))
    }

    /// Keeps a round's candidate (clusters moved to its space, ids kept by Hungarian
    /// matching, the adapter saved) or drops it.
    fn apply_outcome(&mut self, o: Outcome) -> Result<Event, EdgeError> {
        let a = self.adaptation.as_mut().expect("called with adaptation on");
        if o.accepted && !o.counts.is_empty() {
            a.accept(o.candidate)?;
            self.online.recluster(&o.centroids, &o.counts)?;
            self.bank.reserve_cluster_ids(self.online.next_id())?;
        }
        let a = self.adaptation.as_ref().expect("called with adaptation on");
        Ok(Event::Adapt {
            round: o.round,
            kept: o.accepted,
            proxy_before: o.proxy_before,
            proxy_after: o.proxy_after,
            loss_first: o.loss_first,
            loss_last: o.loss_last,
            steps: o.steps,
            step_ms: 1e3 * o.step_seconds / o.steps.max(1) as f64,
            seconds: o.seconds,
            updates: a.record().updates,
        })
    }

    /// The thumbnail stored with a frame of `pixels` (already checked against the input size).
    fn thumbnail(&self, pixels: &[u8]) -> Option<Thumbnail> {
        let spec = self.pre.spec();
        let (h, w) = (spec.height as usize, spec.width as usize);
        let side = self.config.thumb_size.unwrap_or(h.max(w));
        Thumbnail::of_frame(pixels, spec.channels(), h, w, side)
    }

    /// Batch k-means over the bank (k = the open clusters), ids kept by Hungarian matching.
    pub fn recluster(&mut self) -> Result<Event, EdgeError> {
        let t0 = Instant::now();
        self.since_recluster = 0;
        let dim = self.online.dim();
        let n = self.bank.len();
        let k = self.online.clusters().len().clamp(1, n.max(1));
        if n < 2 * k {
            return Ok(Event::Recluster {
                entries: n,
                clusters: self.online.clusters().len(),
                relabelled: 0,
                seconds: 0.0,
            });
        }
        // Lloyd iterations on at most 256 entries per centroid (faiss's rule), decoded from
        // the bank's own format, warm-started from the online centroids: a refinement of the
        // current clustering, not a new one from random rows.
        let mut rng = models::rng::Rng::new(self.config.seed ^ n as u64);
        let sample = rng.sample_indices(n, n.min(256 * k));
        let data = self.bank.decode(&sample);
        let init: Vec<f32> = self
            .online
            .clusters()
            .iter()
            .flat_map(|c| c.centroid.iter().copied())
            .collect();
        let points = MatRef::new(&data, dim)?;
        let params = KMeansParams::new(k)
            .seed(self.config.seed)
            .max_points_per_centroid(None)
            .check()?;
        let (model, _, _) = params.train(
            &CpuGemmAssign::default(),
            points,
            Some(MatRef::new(&init, dim)?),
        )?;
        // Every entry's new cluster, a chunk at a time so memory stays bounded.
        let mut labels = Vec::with_capacity(n);
        let all: Vec<usize> = (0..n).collect();
        for chunk in all.chunks(8192) {
            let rows = self.bank.decode(chunk);
            let (l, _) = model.predict(MatRef::new(&rows, dim)?)?;
            labels.extend(l);
        }
        let seqs: Vec<u64> = self.bank.entries().iter().map(|e| e.seq).collect();
        let mut counts = vec![0u64; k];
        labels.iter().for_each(|&l| counts[l as usize] += 1);
        let ids = self
            .online
            .recluster(model.centroids().as_slice(), &counts)?;
        let mut changes = Vec::new();
        for (&seq, &l) in seqs.iter().zip(&labels) {
            let id = ids[l as usize];
            if self.bank.get(seq).is_some_and(|e| e.cluster_id != id) {
                changes.push((seq, id));
            }
        }
        let relabelled = changes.len();
        self.bank.relabel(changes)?;
        self.bank.reserve_cluster_ids(self.online.next_id())?;
        Ok(Event::Recluster {
            entries: n,
            clusters: k,
            relabelled,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    pub fn set_novelty_threshold(&mut self, t: f32) -> Result<(), EdgeError> {
        Ok(self.online.set_novelty_threshold(t)?)
    }

    /// Forgets the clusters (ids keep counting up); the bank's entries stay.
    pub fn reset_clusters(&mut self) {
        self.online.reset();
    }

    /// Flushes the bank and publishes a snapshot; saves the adaptation state beside it (the
    /// running statistics as well as the layer), so that a restart resumes it.
    pub fn snapshot(&mut self) -> Result<(), EdgeError> {
        self.bank.snapshot()?;
        match &self.adaptation {
            Some(a) if a.record().frames > 0 => a.save(),
            _ => Ok(()),
        }
    }
}

/// The bank's clusters: mean embedding per cluster id.
fn clusters_of(bank: &MemoryBank, dim: usize) -> Vec<Cluster> {
    let mut sums: BTreeMap<u32, (Vec<f32>, u64)> = BTreeMap::new();
    for e in bank.entries() {
        let (sum, n) = sums.entry(e.cluster_id).or_insert((vec![0.0; dim], 0));
        sum.iter_mut()
            .zip(e.embedding.to_f32())
            .for_each(|(s, v)| *s += v);
        *n += 1;
    }
    sums.into_iter()
        .map(|(id, (sum, n))| Cluster {
            id,
            centroid: sum.iter().map(|s| s / n as f32).collect(),
            count: n,
            seen: 0,
            radius: 0.0,
        })
        .collect()
}
