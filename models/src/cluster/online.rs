//! Online k-means for a stream of embeddings on the board (no_std + alloc).
//!
//! - MacQueen updates: each cluster keeps a count, and its centroid moves by
//!   `max(1 / count, min_step)` towards each new member, so it settles but can still drift.
//! - Cluster ids are stable: an id is never reused, and clusters keep theirs across updates,
//!   merges (the larger cluster's id survives) and re-clustering (Hungarian matching, `std`).
//! - Novelty: the distance to the nearest centroid divided by that cluster's running radius
//!   (a running mean of its members' distances). Above `novelty_threshold` a frame is novel.
//! - Persistent novelty opens a cluster (DP-means style): once `open_after` recent novel
//!   frames lie within a radius of each other, their mean becomes a new cluster, up to
//!   `max_clusters`. Clusters whose centroids come closer than `merge_distance` are merged.

use alloc::vec::Vec;

/// Settings of [`OnlineKMeans`].
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineKMeansParams {
    /// No more clusters than this are ever open at once.
    pub max_clusters: usize,
    /// Without seed centroids, the first `seed_count` distinct embeddings each open a cluster.
    pub seed_count: usize,
    /// Weight of seed centroids, in members: how much evidence the stream needs to move them.
    pub prior_count: u64,
    /// Floor of the MacQueen step, so clusters keep following a slowly changing scene.
    pub min_step: f32,
    /// A frame is novel when `distance / radius` of its nearest cluster exceeds this.
    pub novelty_threshold: f32,
    /// Members a cluster needs before its radius is trusted for novelty.
    pub min_members_for_novelty: u64,
    /// Floor of the radius running-mean step (recent frames weigh at least this much).
    pub radius_step: f32,
    /// Novel frames close together that open a new cluster.
    pub open_after: usize,
    /// Recent novel frames kept as candidates for a new cluster.
    pub novel_buffer: usize,
    /// Clusters whose centroids come closer than this (Euclidean) are merged.
    pub merge_distance: f32,
}

impl Default for OnlineKMeansParams {
    fn default() -> Self {
        Self {
            max_clusters: 64,
            seed_count: 10,
            prior_count: 50,
            min_step: 1e-3,
            novelty_threshold: 2.0,
            min_members_for_novelty: 20,
            radius_step: 0.01,
            open_after: 8,
            novel_buffer: 64,
            merge_distance: 0.05,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OnlineKMeansError {
    #[error("embedding has {actual} values, the clusters have {expected}")]
    Dim { expected: usize, actual: usize },
    #[error("invalid parameter: {0}")]
    Params(&'static str),
    #[error("{values} centroid values do not make whole rows of {dim}")]
    Centroids { values: usize, dim: usize },
}

/// One cluster of the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub id: u32,
    pub centroid: Vec<f32>,
    pub count: u64,
    /// Members seen on the stream (`count` also holds a seed's prior weight).
    pub seen: u64,
    /// Running mean distance of members to the centroid.
    pub radius: f32,
}

/// What happened to the cluster set while assigning one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterChange {
    Opened(u32),
    Merged { kept: u32, removed: u32 },
}

/// The outcome of one [`OnlineKMeans::update`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assignment {
    pub cluster_id: u32,
    /// Euclidean distance to the cluster's centroid (before it moved).
    pub distance: f32,
    /// `distance / radius`; 0 while the cluster is too young to judge.
    pub novelty: f32,
    pub novel: bool,
    pub change: Option<ClusterChange>,
}

#[derive(Debug, Clone)]
pub struct OnlineKMeans {
    params: OnlineKMeansParams,
    dim: usize,
    clusters: Vec<Cluster>,
    next_id: u32,
    novel: Vec<Vec<f32>>,
    /// Opening a cluster for each distinct early frame (no seed centroids were given).
    seeding: bool,
}

impl OnlineKMeans {
    /// An empty model that seeds itself from the stream.
    pub fn new(dim: usize, params: OnlineKMeansParams) -> Result<Self, OnlineKMeansError> {
        let p = &params;
        if dim == 0 {
            return Err(OnlineKMeansError::Params("dim must be positive"));
        }
        if p.max_clusters == 0 || p.seed_count == 0 || p.seed_count > p.max_clusters {
            return Err(OnlineKMeansError::Params(
                "need 0 < seed_count <= max_clusters",
            ));
        }
        let in_unit = |v: f32| v > 0.0 && v <= 1.0;
        if !in_unit(p.min_step) || !in_unit(p.radius_step) {
            return Err(OnlineKMeansError::Params("steps must lie in (0, 1]"));
        }
        if p.novelty_threshold.is_nan() || p.novelty_threshold <= 0.0 || p.open_after == 0 {
            return Err(OnlineKMeansError::Params(
                "novelty_threshold and open_after must be positive",
            ));
        }
        Ok(Self {
            params,
            dim,
            clusters: Vec::new(),
            next_id: 0,
            novel: Vec::new(),
            seeding: true,
        })
    }

    /// A model seeded with `centroids` (row-major, `dim` columns), ids 0, 1, ...
    pub fn with_centroids(
        dim: usize,
        params: OnlineKMeansParams,
        centroids: &[f32],
    ) -> Result<Self, OnlineKMeansError> {
        let mut m = Self::new(dim, params)?;
        m.seeding = false;
        if centroids.is_empty() || !centroids.len().is_multiple_of(dim) {
            return Err(OnlineKMeansError::Centroids {
                values: centroids.len(),
                dim,
            });
        }
        for c in centroids.chunks(dim).take(m.params.max_clusters) {
            let prior = m.params.prior_count;
            m.open(c.to_vec(), prior, 0.0);
        }
        Ok(m)
    }

    /// A model restored from saved clusters (ids kept); `next_id` is the first unused id.
    pub fn from_clusters(
        dim: usize,
        params: OnlineKMeansParams,
        clusters: Vec<Cluster>,
        next_id: u32,
    ) -> Result<Self, OnlineKMeansError> {
        let mut m = Self::new(dim, params)?;
        if let Some(c) = clusters.iter().find(|c| c.centroid.len() != dim) {
            return Err(OnlineKMeansError::Dim {
                expected: dim,
                actual: c.centroid.len(),
            });
        }
        m.seeding = clusters.is_empty();
        m.next_id = clusters
            .iter()
            .map(|c| c.id + 1)
            .max()
            .unwrap_or(0)
            .max(next_id);
        m.clusters = clusters;
        Ok(m)
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn params(&self) -> &OnlineKMeansParams {
        &self.params
    }

    /// Sets the novelty threshold (a `SetNoveltyThreshold` command from the companion).
    pub fn set_novelty_threshold(&mut self, t: f32) -> Result<(), OnlineKMeansError> {
        if t.is_nan() || t <= 0.0 {
            return Err(OnlineKMeansError::Params(
                "novelty_threshold must be positive",
            ));
        }
        self.params.novelty_threshold = t;
        Ok(())
    }

    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    /// The id the next opened cluster gets (persisted so ids are never reused).
    pub fn next_id(&self) -> u32 {
        self.next_id
    }

    /// Drops every cluster; ids keep counting up.
    pub fn reset(&mut self) {
        self.clusters.clear();
        self.novel.clear();
    }

    /// The nearest cluster's index and Euclidean distance, without learning.
    pub fn nearest(&self, x: &[f32]) -> Option<(usize, f32)> {
        nearest(&self.clusters, x, usize::MAX)
    }

    /// The nearest cluster's id and distance, without learning.
    pub fn predict(&self, x: &[f32]) -> Result<Option<(u32, f32)>, OnlineKMeansError> {
        self.check_dim(x)?;
        Ok(self.nearest(x).map(|(i, d)| (self.clusters[i].id, d)))
    }

    /// Assigns `x` to a cluster and learns from it.
    pub fn update(&mut self, x: &[f32]) -> Result<Assignment, OnlineKMeansError> {
        self.check_dim(x)?;
        let p = self.params.clone();
        let Some((i, distance)) = self.nearest(x) else {
            let id = self.open(x.to_vec(), 1, 0.0);
            return Ok(self.opened(id));
        };
        // Seeding from the stream: distinct early frames each open a cluster.
        if self.seeding && distance > 0.0 {
            let id = self.open(x.to_vec(), 1, 0.0);
            self.seeding = self.clusters.len() < p.seed_count;
            return Ok(self.opened(id));
        }
        let c = &self.clusters[i];
        let judged = c.seen >= p.min_members_for_novelty && c.radius > 0.0;
        let novelty = if judged { distance / c.radius } else { 0.0 };
        let novel = judged && novelty > p.novelty_threshold;
        if novel {
            if let Some(id) = self.try_open_from_novel(x, c.radius) {
                return Ok(Assignment {
                    distance,
                    novelty,
                    novel: true,
                    ..self.opened(id)
                });
            }
        }
        let c = &mut self.clusters[i];
        c.count += 1;
        c.seen += 1;
        let step = (1.0 / c.count as f32).max(p.min_step);
        for (ci, xi) in c.centroid.iter_mut().zip(x) {
            *ci += step * (xi - *ci);
        }
        let r_step = (1.0 / c.seen as f32).max(p.radius_step);
        c.radius += r_step * (distance - c.radius);
        let cluster_id = c.id;
        let change = self.merge_near(i);
        let cluster_id = match change {
            Some(ClusterChange::Merged { kept, removed }) if removed == cluster_id => kept,
            _ => cluster_id,
        };
        Ok(Assignment {
            cluster_id,
            distance,
            novelty,
            novel,
            change,
        })
    }

    fn check_dim(&self, x: &[f32]) -> Result<(), OnlineKMeansError> {
        if x.len() != self.dim {
            return Err(OnlineKMeansError::Dim {
                expected: self.dim,
                actual: x.len(),
            });
        }
        Ok(())
    }

    fn opened(&self, id: u32) -> Assignment {
        Assignment {
            cluster_id: id,
            distance: 0.0,
            novelty: 0.0,
            novel: false,
            change: Some(ClusterChange::Opened(id)),
        }
    }

    fn open(&mut self, centroid: Vec<f32>, count: u64, radius: f32) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        self.clusters.push(Cluster {
            id,
            centroid,
            count,
            seen: if radius > 0.0 { count } else { 0 },
            radius,
        });
        id
    }

    /// Buffers a novel frame; opens a cluster when enough buffered frames sit near it.
    fn try_open_from_novel(&mut self, x: &[f32], radius: f32) -> Option<u32> {
        let p = &self.params;
        if self.novel.len() == p.novel_buffer {
            self.novel.remove(0);
        }
        self.novel.push(x.to_vec());
        if self.clusters.len() >= p.max_clusters {
            return None;
        }
        let near: Vec<usize> = (0..self.novel.len())
            .filter(|&j| sq_dist(&self.novel[j], x) <= radius * radius)
            .collect();
        if near.len() < p.open_after {
            return None;
        }
        let mut mean = alloc::vec![0f32; self.dim];
        for &j in &near {
            mean.iter_mut()
                .zip(&self.novel[j])
                .for_each(|(m, v)| *m += v);
        }
        mean.iter_mut().for_each(|m| *m /= near.len() as f32);
        let r = near
            .iter()
            .map(|&j| libm::sqrtf(sq_dist(&self.novel[j], &mean)))
            .sum::<f32>()
            / near.len() as f32;
        for &j in near.iter().rev() {
            self.novel.remove(j);
        }
        Some(self.open(mean, near.len() as u64, r))
    }

    /// Merges cluster `i` into its nearest neighbour when they have converged.
    fn merge_near(&mut self, i: usize) -> Option<ClusterChange> {
        let (j, d) = nearest(&self.clusters, &self.clusters[i].centroid, i)?;
        if d >= self.params.merge_distance {
            return None;
        }
        let (keep, drop) = if self.clusters[i].count >= self.clusters[j].count {
            (i, j)
        } else {
            (j, i)
        };
        let gone = self.clusters[drop].clone();
        let k = &mut self.clusters[keep];
        let (a, b) = (k.count as f32, gone.count as f32);
        for (ci, gi) in k.centroid.iter_mut().zip(&gone.centroid) {
            *ci = (*ci * a + gi * b) / (a + b);
        }
        k.radius = (k.radius * a + gone.radius * b) / (a + b);
        k.count += gone.count;
        k.seen += gone.seen;
        let kept = k.id;
        self.clusters.remove(drop);
        Some(ClusterChange::Merged {
            kept,
            removed: gone.id,
        })
    }

    /// Replaces the clusters by `centroids` from a batch re-clustering of the bank, keeping
    /// ids stable: each new centroid takes the id of the old cluster it is matched to
    /// (Hungarian, by distance); unmatched ones get new ids. Returns the ids, in row order.
    #[cfg(feature = "std")]
    pub fn recluster(
        &mut self,
        centroids: &[f32],
        counts: &[u64],
    ) -> Result<Vec<u32>, OnlineKMeansError> {
        let d = self.dim;
        if centroids.is_empty()
            || !centroids.len().is_multiple_of(d)
            || centroids.len() / d != counts.len()
        {
            return Err(OnlineKMeansError::Centroids {
                values: centroids.len(),
                dim: d,
            });
        }
        let k = counts.len();
        let old = core::mem::take(&mut self.clusters);
        let costs: Vec<f64> = centroids
            .chunks(d)
            .flat_map(|c| old.iter().map(move |o| sq_dist(c, &o.centroid) as f64))
            .collect();
        let matched = if old.is_empty() {
            alloc::vec![None; k]
        } else {
            crate::metrics::min_cost_assignment(&costs, k, old.len())
                .map_err(|_| OnlineKMeansError::Params("centroids are not finite"))?
        };
        let mut ids = Vec::with_capacity(k);
        for (row, (c, &count)) in centroids.chunks(d).zip(counts).enumerate() {
            let (id, radius, seen) = match matched[row] {
                Some(o) => (old[o].id, old[o].radius, old[o].seen),
                None => {
                    let id = self.next_id;
                    self.next_id += 1;
                    (id, 0.0, 0)
                }
            };
            self.clusters.push(Cluster {
                id,
                centroid: c.to_vec(),
                count: count.max(1),
                seen,
                radius,
            });
            ids.push(id);
        }
        self.novel.clear();
        Ok(ids)
    }
}

/// Squared Euclidean distance with eight independent partial sums, which the compiler turns
/// into SIMD (a single running sum would have to stay sequential).
fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            let d = x[l] - y[l];
            acc[l] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Index and Euclidean distance of the cluster nearest to `x`, skipping index `skip`.
fn nearest(clusters: &[Cluster], x: &[f32], skip: usize) -> Option<(usize, f32)> {
    let mut best: Option<(usize, f32)> = None;
    for (i, c) in clusters.iter().enumerate() {
        if i == skip {
            continue;
        }
        let d = sq_dist(x, &c.centroid);
        if best.is_none_or(|(_, b)| d < b) {
            best = Some((i, d));
        }
    }
    best.map(|(i, d)| (i, libm::sqrtf(d)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use alloc::vec;

    /// Points around `centre` with per-coordinate uniform noise of half-width `spread`.
    fn around(rng: &mut Rng, centre: &[f32], spread: f32) -> Vec<f32> {
        centre
            .iter()
            .map(|c| c + spread * (2.0 * rng.next_f64() as f32 - 1.0))
            .collect()
    }

    #[test]
    fn ids_are_stable_and_novel_blobs_open_clusters() {
        let mut rng = Rng::new(1);
        let a = [0.0f32, 0.0];
        let b = [10.0f32, 0.0];
        let seeds = [a, b].concat();
        let mut m = OnlineKMeans::with_centroids(2, OnlineKMeansParams::default(), &seeds).unwrap();
        for _ in 0..500 {
            assert_eq!(m.update(&around(&mut rng, &a, 0.5)).unwrap().cluster_id, 0);
            assert_eq!(m.update(&around(&mut rng, &b, 0.5)).unwrap().cluster_id, 1);
        }
        assert_eq!(m.clusters().len(), 2);
        // A new blob far from both: novel at first, then a cluster of its own with a new id.
        let c = [0.0f32, 10.0];
        let mut opened = None;
        for step in 0..20 {
            let r = m.update(&around(&mut rng, &c, 0.5)).unwrap();
            if opened.is_none() {
                assert!(r.novel, "step {step}: {r:?}");
            }
            if let Some(ClusterChange::Opened(id)) = r.change {
                opened = Some((id, step));
            }
        }
        let (id, step) = opened.expect("persistent novelty opens a cluster");
        assert_eq!(id, 2);
        assert!(step + 1 >= m.params().open_after);
        let r = m.update(&around(&mut rng, &c, 0.1)).unwrap();
        assert_eq!(r.cluster_id, 2);
        // The old clusters kept their ids.
        assert_eq!(m.predict(&a).unwrap().unwrap().0, 0);
        assert_eq!(m.predict(&b).unwrap().unwrap().0, 1);
    }

    #[test]
    fn converging_clusters_merge_and_the_larger_id_survives() {
        let seeds = [0.0f32, 0.0, 0.2, 0.0];
        let params = OnlineKMeansParams {
            merge_distance: 0.1,
            prior_count: 5,
            ..Default::default()
        };
        let mut m = OnlineKMeans::with_centroids(2, params, &seeds).unwrap();
        let mut merged = None;
        for i in 0..50 {
            // Each point is nearer one of the two seeds, so both move towards the middle.
            let x = if i % 2 == 0 { 0.08 } else { 0.12 };
            let r = m.update(&[x, 0.0]).unwrap();
            if let Some(ClusterChange::Merged { kept, removed }) = r.change {
                merged = Some((kept, removed));
                assert_eq!(r.cluster_id, kept);
            }
        }
        let (kept, removed) = merged.expect("the two clusters met");
        assert_ne!(kept, removed);
        assert_eq!(m.clusters().len(), 1);
    }

    #[test]
    fn seeds_itself_from_the_stream_and_checks_dimensions() {
        let params = OnlineKMeansParams {
            seed_count: 3,
            ..Default::default()
        };
        let mut m = OnlineKMeans::new(2, params).unwrap();
        for (i, x) in [[0.0f32, 0.0], [5.0, 0.0], [0.0, 5.0]].iter().enumerate() {
            let r = m.update(x).unwrap();
            assert_eq!(r.change, Some(ClusterChange::Opened(i as u32)));
        }
        assert_eq!(m.update(&[4.9, 0.1]).unwrap().cluster_id, 1);
        assert_eq!(
            m.update(&[1.0]),
            Err(OnlineKMeansError::Dim {
                expected: 2,
                actual: 1
            })
        );
        assert!(OnlineKMeans::with_centroids(2, OnlineKMeansParams::default(), &[1.0; 3]).is_err());
        assert!(OnlineKMeans::new(
            2,
            OnlineKMeansParams {
                min_step: 0.0,
                ..Default::default()
            }
        )
        .is_err());
    }

    #[cfg(feature = "std")]
    #[test]
    fn reclustering_keeps_ids_by_hungarian_matching() {
        let seeds = [0.0f32, 0.0, 10.0, 0.0, 0.0, 10.0];
        let mut m = OnlineKMeans::with_centroids(2, OnlineKMeansParams::default(), &seeds).unwrap();
        // The batch run finds the same three clusters in another order, slightly moved, and a
        // fourth one.
        let new = [0.1f32, 9.9, 9.8, 0.2, 20.0, 20.0, 0.1, 0.1];
        let ids = m.recluster(&new, &[10, 10, 5, 10]).unwrap();
        assert_eq!(ids, vec![2, 1, 3, 0]);
        assert_eq!(m.predict(&[0.0, 0.0]).unwrap().unwrap().0, 0);
        assert_eq!(m.next_id(), 4);
        let _ = vec![0];
    }
}
