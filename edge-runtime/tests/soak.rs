//! Soak: a million synthetic embeddings through online clustering into a 100k-entry int8 bank
//! (FIFO, snapshots every 50k records). The resident set must stay flat once the bank is full.

use edge_runtime::bank::{BankConfig, CaptureMeta, EmbeddingFormat, MemoryBank};
use models::cluster::{OnlineKMeans, OnlineKMeansParams};
use models::rng::Rng;

fn rss_mb() -> f64 {
    edge_runtime::memory::proc_status_mb("VmRSS").expect("Linux /proc")
}

#[test]
fn a_million_embeddings_keep_rss_flat() {
    const D: usize = 128;
    let dir = tempfile::tempdir().unwrap();
    let cfg = BankConfig {
        max_entries: 100_000,
        format: EmbeddingFormat::I8,
        ..Default::default()
    };
    let (mut bank, _) = MemoryBank::open(dir.path(), cfg).unwrap();
    let mut online = OnlineKMeans::new(D, OnlineKMeansParams::default()).unwrap();
    let mut rng = Rng::new(9);
    let centres: Vec<Vec<f32>> = (0..10)
        .map(|_| (0..D).map(|_| rng.next_f64() as f32 - 0.5).collect())
        .collect();
    let mut e = vec![0f32; D];
    let mut rss_full = 0.0;
    for i in 0..1_000_000u64 {
        let c = &centres[rng.below(10)];
        for (x, m) in e.iter_mut().zip(c) {
            *x = m + 0.1 * (rng.next_f64() as f32 - 0.5);
        }
        let a = online.update(&e).unwrap();
        let meta = CaptureMeta {
            timestamp_ms: i,
            source: "soak".into(),
            frame_id: i,
            detail: None,
        };
        bank.insert(&e, meta, a.cluster_id).unwrap();
        if i == 300_000 {
            rss_full = rss_mb();
        }
    }
    let rss_end = rss_mb();
    assert_eq!(bank.len(), 100_000);
    assert!(
        rss_end <= rss_full * 1.10 + 4.0,
        "RSS grew from {rss_full:.1} MB (300k frames) to {rss_end:.1} MB (1M frames)"
    );
    eprintln!("RSS {rss_full:.1} MB at 300k frames, {rss_end:.1} MB at 1M");
}
