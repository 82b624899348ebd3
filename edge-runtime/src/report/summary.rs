//! What the report shows, computed from a bank's entries: no files touched here.

use std::collections::{BTreeMap, BTreeSet};

use super::ReportConfig;
use crate::bank::MemoryBank;

/// One cluster as the page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSummary {
    pub id: u32,
    /// Entries of the cluster in the bank.
    pub size: usize,
    /// The member closest to the cluster's mean embedding.
    pub medoid: u64,
    /// At most `per_cluster` members, spread evenly over the cluster's arrivals, oldest first.
    pub shown: Vec<u64>,
}

/// A stored frame that the online clustering marked novel.
#[derive(Debug, Clone, PartialEq)]
pub struct NovelFrame {
    pub seq: u64,
    pub frame_id: u64,
    pub timestamp_ms: u64,
    pub source: String,
    pub cluster_id: u32,
    pub distance: f32,
    pub novelty: f32,
}

/// Everything the page and its chart need.
#[derive(Debug, Clone, PartialEq)]
pub struct BankSummary {
    /// Largest first.
    pub clusters: Vec<ClusterSummary>,
    /// Newest first, at most `novel`.
    pub novel: Vec<NovelFrame>,
    /// Stored frames marked novel, in all.
    pub novel_total: usize,
    /// For each cluster id, its size among the stored entries after each of `frames`:
    /// `(frames[i], sizes[i])`.
    pub frames: Vec<u64>,
    pub sizes_over_time: BTreeMap<u32, Vec<usize>>,
}

/// Points of the sizes-over-time curves.
const TIME_POINTS: usize = 100;

impl BankSummary {
    pub fn of(bank: &MemoryBank, cfg: &ReportConfig) -> Self {
        let entries = bank.entries();
        let mut members: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            members.entry(e.cluster_id).or_default().push(i);
        }
        let mut clusters: Vec<ClusterSummary> = members
            .iter()
            .map(|(&id, positions)| ClusterSummary {
                id,
                size: positions.len(),
                medoid: entries[medoid(bank, positions)].seq,
                shown: spread(bank, positions, cfg.per_cluster),
            })
            .collect();
        clusters.sort_by_key(|c| (std::cmp::Reverse(c.size), c.id));
        let (novel, novel_total) = novel_frames(bank, cfg.novel);
        let (frames, sizes_over_time) = sizes_over_time(bank);
        Self {
            clusters,
            novel,
            novel_total,
            frames,
            sizes_over_time,
        }
    }

    /// Every entry whose picture the page shows.
    pub fn shown_seqs(&self) -> BTreeSet<u64> {
        self.clusters
            .iter()
            .flat_map(|c| c.shown.iter().copied().chain([c.medoid]))
            .chain(self.novel.iter().map(|n| n.seq))
            .collect()
    }
}

/// The position (among `positions`) of the entry nearest the mean of their embeddings.
fn medoid(bank: &MemoryBank, positions: &[usize]) -> usize {
    let x = bank.decode(positions);
    let dim = x.len() / positions.len().max(1);
    let mut mean = vec![0f32; dim];
    for row in x.chunks(dim.max(1)) {
        mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
    }
    mean.iter_mut().for_each(|m| *m /= positions.len() as f32);
    let dist = |row: &[f32]| -> f32 { row.iter().zip(&mean).map(|(a, b)| (a - b) * (a - b)).sum() };
    let best = x
        .chunks(dim.max(1))
        .enumerate()
        .min_by(|a, b| dist(a.1).total_cmp(&dist(b.1)))
        .map_or(0, |(i, _)| i);
    positions[best]
}

/// The seqs of `n` of `positions`, evenly spaced in arrival order (first and last included),
/// so the grid shows the whole cluster rather than its latest stretch.
fn spread(bank: &MemoryBank, positions: &[usize], n: usize) -> Vec<u64> {
    let mut seqs: Vec<u64> = positions.iter().map(|&i| bank.entries()[i].seq).collect();
    seqs.sort_unstable();
    if seqs.len() <= n {
        return seqs;
    }
    match n {
        0 => Vec::new(),
        1 => vec![seqs[0]],
        _ => (0..n)
            .map(|i| seqs[i * (seqs.len() - 1) / (n - 1)])
            .collect(),
    }
}

fn novel_frames(bank: &MemoryBank, n: usize) -> (Vec<NovelFrame>, usize) {
    let mut novel: Vec<NovelFrame> = bank
        .entries()
        .iter()
        .filter_map(|e| {
            let d = e.meta.detail.as_ref().filter(|d| d.novel)?;
            Some(NovelFrame {
                seq: e.seq,
                frame_id: e.meta.frame_id,
                timestamp_ms: e.meta.timestamp_ms,
                source: e.meta.source.clone(),
                cluster_id: e.cluster_id,
                distance: d.distance,
                novelty: d.novelty,
            })
        })
        .collect();
    let total = novel.len();
    novel.sort_unstable_by_key(|n| std::cmp::Reverse(n.seq));
    novel.truncate(n);
    (novel, total)
}

/// Each cluster's count of stored entries captured up to each of about [`TIME_POINTS`] frame
/// ids, in arrival order. Entries evicted from the bank are not counted: the curves show what
/// the bank holds, by when it arrived.
fn sizes_over_time(bank: &MemoryBank) -> (Vec<u64>, BTreeMap<u32, Vec<usize>>) {
    let mut arrivals: Vec<(u64, u32)> = bank
        .entries()
        .iter()
        .map(|e| (e.meta.frame_id, e.cluster_id))
        .collect();
    arrivals.sort_unstable();
    let Some(&(last, _)) = arrivals.last() else {
        return (Vec::new(), BTreeMap::new());
    };
    let first = arrivals[0].0;
    let span = (last - first).max(1);
    let frames: Vec<u64> = (1..=TIME_POINTS as u64)
        .map(|i| first + span * i / TIME_POINTS as u64)
        .collect();
    let mut sizes: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    let mut next = 0;
    for (point, &frame) in frames.iter().enumerate() {
        while next < arrivals.len() && arrivals[next].0 <= frame {
            let id = arrivals[next].1;
            *counts.entry(id).or_default() += 1;
            sizes.entry(id).or_insert_with(|| vec![0; TIME_POINTS]);
            next += 1;
        }
        for (id, &c) in &counts {
            sizes.get_mut(id).expect("opened above")[point] = c;
        }
    }
    (frames, sizes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::{BankConfig, CaptureMeta, EmbeddingFormat, FrameDetail};

    /// Cluster 0 holds frames 0..30 near (1, 0); cluster 1 frames 30..40 near (0, 1), of
    /// which frame 35 sits nearest the mean (the others alternate left and right of it) and
    /// frames 36 and 38 were novel.
    fn bank(dir: &std::path::Path) -> MemoryBank {
        let cfg = BankConfig {
            format: EmbeddingFormat::F32,
            ..Default::default()
        };
        let (mut bank, _) = MemoryBank::open(dir, cfg).unwrap();
        for i in 0..40u64 {
            let (cluster, wobble) = (u32::from(i >= 30), (i % 3) as f32 * 0.1 - 0.1);
            let e = match (cluster, i) {
                (_, 35) => [0.0, 1.0],
                (0, _) => [1.0, wobble],
                _ => [if i % 2 == 0 { 0.2 } else { -0.2 }, 1.0],
            };
            let meta = CaptureMeta {
                timestamp_ms: 1000 * i,
                source: format!("f{i}"),
                frame_id: i,
                detail: Some(FrameDetail {
                    novel: i == 36 || i == 38,
                    novelty: i as f32,
                    ..Default::default()
                }),
            };
            bank.insert(&e, meta, cluster).unwrap();
        }
        bank
    }

    #[test]
    fn clusters_come_largest_first_with_medoid_spread_members_and_novel_frames() {
        let dir = tempfile::tempdir().unwrap();
        let bank = bank(dir.path());
        let cfg = ReportConfig {
            per_cluster: 4,
            novel: 1,
            ..Default::default()
        };
        let s = BankSummary::of(&bank, &cfg);
        let sizes: Vec<(u32, usize)> = s.clusters.iter().map(|c| (c.id, c.size)).collect();
        assert_eq!(sizes, vec![(0, 30), (1, 10)]);
        assert_eq!(s.clusters[1].medoid, 35);
        // Four of 30, evenly spaced: first, last and two between.
        assert_eq!(s.clusters[0].shown, vec![0, 9, 19, 29]);
        assert_eq!(s.novel_total, 2);
        assert_eq!(s.novel.len(), 1);
        assert_eq!((s.novel[0].frame_id, s.novel[0].cluster_id), (38, 1));
        assert!(s.shown_seqs().contains(&38));
    }

    #[test]
    fn sizes_over_time_rise_to_the_final_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let s = BankSummary::of(&bank(dir.path()), &ReportConfig::default());
        assert_eq!(s.frames.len(), TIME_POINTS);
        assert_eq!(*s.frames.last().unwrap(), 39);
        let c0 = &s.sizes_over_time[&0];
        let c1 = &s.sizes_over_time[&1];
        assert!(c0.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!((*c0.last().unwrap(), *c1.last().unwrap()), (30, 10));
        // Cluster 1 starts at frame 30: empty for the first three quarters of the curve.
        assert_eq!(c1[TIME_POINTS / 2], 0);
    }
}
