//! One adaptation round: a few swapped-prediction steps on stored frames, then the
//! label-free check that decides whether the candidate layer replaces the current one.

use std::time::Instant;

use models::adapt::deblock::deblock_planes_u8;
use models::adapt::swapped::{self, unit_prototypes};
use models::adapt::views::view;
use models::adapt::{InputStats, LinearAdapter, Recentring};
use models::cluster::KMeans;
use models::geometry::{gaussian_blur_planes_u8, rotate_planes_u8, Border};
use models::linalg::l2_normalize_rows;
use models::metrics::silhouette;
use models::rng::Rng;
use models::MatRef;

use super::TrainConfig;
use crate::backend::{embed_pixels_mapped, Runnable};
use crate::preprocess::Preprocessor;
use crate::EdgeError;

/// What a round works on: stored frames as the model's input pixels, and a snapshot of the
/// adaptation and the clusters when the round started.
#[derive(Debug, Clone)]
pub struct Job {
    pub round: u64,
    /// Frames to train on.
    pub train: Vec<Vec<u8>>,
    /// Frames held out for the quality check (never trained on).
    pub held_out: Vec<Vec<u8>>,
    pub recentring: Option<Recentring>,
    /// The input's statistics when the round started (frozen during it).
    pub input: Option<InputStats>,
    /// The block grid deblocked before everything else (pixels; 0: none), the camera roll
    /// undone next (degrees), and the smoothing after it (pixels).
    pub deblock_block: u32,
    pub roll_degrees: f32,
    pub smoothing_sigma: f32,
    pub linear: LinearAdapter,
    /// The online centroids (k x dim).
    pub centroids: Vec<f32>,
    pub l2: bool,
}

/// What a round found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub round: u64,
    pub accepted: bool,
    pub candidate: LinearAdapter,
    /// The clusters under the candidate (k x dim), refined from the job's centroids, and the
    /// training frames each received: the new online clusters if the candidate is kept.
    pub centroids: Vec<f32>,
    pub counts: Vec<u64>,
    /// Silhouette of the held-out frames under the current layer and under the candidate.
    pub proxy_before: f64,
    pub proxy_after: f64,
    pub loss_first: f32,
    pub loss_last: f32,
    pub steps: usize,
    /// Time in the adapter's own steps (gradient and update), excluding the encoder.
    pub step_seconds: f64,
    pub seconds: f64,
}

/// Runs rounds with its own prepared model.
pub struct Trainer {
    run: Box<dyn Runnable>,
    pre: Preprocessor,
    config: TrainConfig,
    rng: Rng,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.config)
            .finish()
    }
}

impl Trainer {
    pub fn new(run: Box<dyn Runnable>, pre: Preprocessor, config: TrainConfig) -> Self {
        let rng = Rng::new(config.seed);
        Self {
            run,
            pre,
            config,
            rng,
        }
    }

    pub fn round(&mut self, job: Job) -> Result<Outcome, EdgeError> {
        let t0 = Instant::now();
        let job = self.input_corrected(job);
        let d = self.run.embed_dim();
        let protos = unit_prototypes(&job.centroids, d);
        let mut candidate = job.linear.clone();
        let (mut loss_first, mut loss_last, mut step_seconds) = (f32::NAN, f32::NAN, 0.0);
        let steps = if job.train.is_empty() {
            0
        } else {
            self.config.steps
        };
        for s in 0..steps {
            let [v0, v1] = self.views(&job)?;
            let t = Instant::now();
            let loss = swapped::step(&mut candidate, [&v0, &v1], &protos, &self.config.objective);
            step_seconds += t.elapsed().as_secs_f64();
            if s == 0 {
                loss_first = loss;
            }
            loss_last = loss;
        }
        // The check: the held-out frames under each layer, each with its own clusters.
        let held = self.embed(&job.held_out, &job)?;
        let clean = self.embed(&job.train, &job)?;
        let before = mapped(&job.linear, &held, job.l2);
        let after = mapped(&candidate, &held, job.l2);
        let (centroids, counts) = refine(&job.centroids, &mapped(&candidate, &clean, job.l2), d)?;
        let proxy_before = proxy(&before, &job.centroids, d)?;
        let proxy_after = proxy(&after, &centroids, d)?;
        let accepted = steps > 0
            && candidate.weight.iter().all(|w| w.is_finite())
            && proxy_after >= proxy_before - self.config.tolerance;
        Ok(Outcome {
            round: job.round,
            accepted,
            candidate,
            centroids,
            counts,
            proxy_before,
            proxy_after,
            loss_first,
            loss_last,
            steps,
            step_seconds,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// The job with its stored frames deblocked, turned back by its roll and smoothed, so that the
    /// views (flips among them) are made of frames as the live path sees them.
    fn input_corrected(&self, mut job: Job) -> Job {
        let spec = self.pre.spec();
        let (h, w) = (spec.height as usize, spec.width as usize);
        let radians = -job.roll_degrees.to_radians();
        for f in job.train.iter_mut().chain(job.held_out.iter_mut()) {
            deblock_planes_u8(f, h, w, job.deblock_block as usize);
            if radians != 0.0 {
                rotate_planes_u8(f, h, w, radians, Border::Edge);
            }
            gaussian_blur_planes_u8(f, h, w, job.smoothing_sigma);
        }
        job.deblock_block = 0;
        job.roll_degrees = 0.0;
        job.smoothing_sigma = 0.0;
        job
    }

    /// Two views of a random batch of the training frames, embedded and re-centred.
    fn views(&mut self, job: &Job) -> Result<[Vec<f32>; 2], EdgeError> {
        let spec = self.pre.spec();
        let (c, h, w) = (spec.channels(), spec.height as usize, spec.width as usize);
        let b = self.config.batch.min(job.train.len()).max(1);
        let picks = self.rng.sample_indices(job.train.len(), b);
        let mut out: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
        for &i in &picks {
            for v in out.iter_mut() {
                v.push(view(
                    &job.train[i],
                    c,
                    h,
                    w,
                    &self.config.views,
                    &mut self.rng,
                ));
            }
        }
        let [a, b] = out;
        Ok([self.embed(&a, job)?, self.embed(&b, job)?])
    }

    /// Raw embeddings of `frames`, mapped by the job's (frozen) statistics adaptation of the
    /// input and of the embedding.
    fn embed(&self, frames: &[Vec<u8>], job: &Job) -> Result<Vec<f32>, EdgeError> {
        let pixels: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let mut out = embed_pixels_mapped(self.run.as_ref(), self.pre.spec(), &pixels, &mut |x| {
            if let Some(s) = &job.input {
                s.adapt(x);
            }
        })?;
        if let Some(r) = &job.recentring {
            r.adapt_rows(&mut out);
        }
        Ok(out)
    }
}

/// `rows` through `linear`, L2-normalised when the model asks for it.
fn mapped(linear: &LinearAdapter, rows: &[f32], l2: bool) -> Vec<f32> {
    let mut out = rows.to_vec();
    linear.apply_rows(&mut out);
    if l2 {
        l2_normalize_rows(&mut out, linear.dim());
    }
    out
}

/// Index of the nearest centroid of each row (batch k-means' assignment step).
fn nearest(rows: &[f32], centroids: &[f32], d: usize) -> Result<Vec<u32>, EdgeError> {
    let model = KMeans::from_centroids(centroids.to_vec(), d)?;
    Ok(model.predict(MatRef::new(rows, d)?)?.0)
}

/// Five Lloyd iterations from `init` (a cluster that loses every row keeps its centroid), so
/// that the refined clusters correspond to the current ones; and each cluster's rows.
fn refine(init: &[f32], rows: &[f32], d: usize) -> Result<(Vec<f32>, Vec<u64>), EdgeError> {
    let k = init.len() / d;
    let mut centroids = init.to_vec();
    let mut counts = vec![0u64; k];
    for _ in 0..5 {
        let labels = nearest(rows, &centroids, d)?;
        let mut sums = vec![0f32; k * d];
        counts.fill(0);
        for (r, &l) in rows.chunks_exact(d).zip(&labels) {
            let l = l as usize;
            counts[l] += 1;
            sums[l * d..(l + 1) * d]
                .iter_mut()
                .zip(r)
                .for_each(|(s, v)| *s += v);
        }
        for (j, &n) in counts.iter().enumerate() {
            if n > 0 {
                for (c, s) in centroids[j * d..(j + 1) * d]
                    .iter_mut()
                    .zip(&sums[j * d..(j + 1) * d])
                {
                    *c = s / n as f32;
                }
            }
        }
    }
    Ok((centroids, counts))
}

/// The label-free quality of `rows` under `centroids`: the silhouette of their nearest-centroid
/// clusters, times the entropy of the cluster sizes over its maximum (log k). The silhouette
/// alone rewards a collapse into a few tight clusters; the balance factor does not. -1 when it
/// cannot be computed, so that such a candidate is never preferred.
fn proxy(rows: &[f32], centroids: &[f32], d: usize) -> Result<f64, EdgeError> {
    let k = centroids.len() / d;
    if k == 0 {
        return Ok(-1.0);
    }
    let labels = nearest(rows, centroids, d)?;
    let Ok(s) = silhouette(rows, d, &labels) else {
        return Ok(-1.0);
    };
    let mut sizes = vec![0usize; k];
    labels.iter().for_each(|&l| sizes[l as usize] += 1);
    let n = labels.len().max(1) as f64;
    let entropy: f64 = sizes
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum();
    let balance = if k > 1 {
        entropy / (k as f64).ln()
    } else {
        1.0
    };
    Ok(s * balance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_ranks_a_collapse_below_a_balanced_clustering() {
        // Two tight, well separated groups in 2-d, and k = 4 centroids.
        let centroids = [0.0, 0.0, 10.0, 0.0, 0.0, 10.0, 10.0, 10.0];
        let jitter = |i: usize| (i % 5) as f32 * 0.01;
        let balanced: Vec<f32> = (0..40)
            .flat_map(|i| {
                let c = &centroids[(i % 4) * 2..(i % 4) * 2 + 2];
                [c[0] + jitter(i), c[1] + jitter(i + 2)]
            })
            .collect();
        // Everything on two of the four centroids: a higher silhouette, half the clusters.
        let collapsed: Vec<f32> = (0..40)
            .flat_map(|i| {
                let c = &centroids[(i % 2) * 2..(i % 2) * 2 + 2];
                [c[0] + jitter(i), c[1] + jitter(i + 2)]
            })
            .collect();
        let (b, c) = (
            proxy(&balanced, &centroids, 2).unwrap(),
            proxy(&collapsed, &centroids, 2).unwrap(),
        );
        assert!(b > 0.9 && c < 0.6, "balanced {b}, collapsed {c}");
        let sil =
            |rows: &[f32]| silhouette(rows, 2, &nearest(rows, &centroids, 2).unwrap()).unwrap();
        assert!(
            sil(&collapsed) >= sil(&balanced) - 0.01,
            "the silhouette alone misses it"
        );
        // Without clusters there is nothing to judge by.
        assert_eq!(proxy(&balanced, &[], 2).unwrap(), -1.0);
    }

    #[test]
    fn refining_keeps_the_order_of_the_clusters() {
        let init = [0.0, 0.0, 5.0, 5.0];
        let rows = [0.5, 0.0, 0.4, 0.2, 5.5, 5.0, 4.8, 5.2, 5.1, 4.9];
        let (c, counts) = refine(&init, &rows, 2).unwrap();
        assert_eq!(counts, [2, 3]);
        assert!(c[0] < 1.0 && c[2] > 4.0, "{c:?}");
    }
}
