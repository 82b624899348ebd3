//! Memory bank: persistence, recovery from torn writes and corrupt snapshots, eviction.

use std::io::Write;

use edge_runtime::bank::{
    BankConfig, CaptureMeta, EmbeddingFormat, Eviction, FrameDetail, MemoryBank, Thumbnail,
};

fn meta(i: u64) -> CaptureMeta {
    CaptureMeta {
        timestamp_ms: 1_700_000_000_000 + i,
        source: "cam0".into(),
        frame_id: i,
        // Every third entry carries a 2x2 gray thumbnail and its novelty; the rest none.
        detail: i.is_multiple_of(3).then(|| FrameDetail {
            thumbnail: Thumbnail::of_frame(&[i as u8; 4], 1, 2, 2, 2),
            distance: 0.5,
            novelty: i as f32,
            novel: i.is_multiple_of(2),
        }),
    }
}

fn emb(i: u64) -> Vec<f32> {
    (0..8).map(|j| ((i * 8 + j) as f32 * 0.37).sin()).collect()
}

fn config() -> BankConfig {
    BankConfig {
        max_entries: 1000,
        format: EmbeddingFormat::F32,
        snapshot_every: 1_000_000,
        ..Default::default()
    }
}

fn fill(bank: &mut MemoryBank, range: std::ops::Range<u64>) {
    for i in range {
        bank.insert(&emb(i), meta(i), (i % 4) as u32).unwrap();
    }
}

#[test]
fn entries_survive_a_restart_in_every_format() {
    for format in [
        EmbeddingFormat::F32,
        EmbeddingFormat::F16,
        EmbeddingFormat::I8,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = BankConfig { format, ..config() };
        let (mut bank, rec) = MemoryBank::open(dir.path(), cfg.clone()).unwrap();
        assert_eq!(rec.replayed_records, 0);
        fill(&mut bank, 0..50);
        bank.relabel(vec![(3, 9)]).unwrap();
        let before = bank.entries().to_vec();
        drop(bank);
        let (bank, rec) = MemoryBank::open(dir.path(), cfg).unwrap();
        assert_eq!(bank.entries(), &before[..]);
        assert_eq!(bank.get(3).unwrap().cluster_id, 9);
        assert_eq!(rec.torn_tails, 0);
        let tol = match format {
            EmbeddingFormat::F32 => 0.0,
            EmbeddingFormat::F16 => 1e-3,
            EmbeddingFormat::I8 => 1.0 / 127.0,
        };
        let got = bank.get(7).unwrap().embedding.to_f32();
        for (a, b) in got.iter().zip(emb(7)) {
            assert!((a - b).abs() <= tol, "{format:?}: {a} vs {b}");
        }
    }
}

#[test]
fn a_torn_tail_is_dropped_and_counted_and_nothing_before_it_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bank, _) = MemoryBank::open(dir.path(), config()).unwrap();
    fill(&mut bank, 0..20);
    drop(bank);
    // A crash mid-write: half a record at the end of the newest segment.
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".log"))
        .max()
        .unwrap();
    let record = edge_runtime::bank::log::frame(&"a record that never finished".to_string());
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&record[..record.len() / 2]).unwrap();
    drop(f);
    let (mut bank, rec) = MemoryBank::open(dir.path(), config()).unwrap();
    assert_eq!(bank.len(), 20);
    assert_eq!((rec.torn_tails, rec.dropped_bytes), (1, record.len() / 2));
    fill(&mut bank, 20..25);
    drop(bank);
    let (bank, rec) = MemoryBank::open(dir.path(), config()).unwrap();
    assert_eq!(bank.len(), 25);
    assert_eq!(rec.torn_tails, 0);
}

#[test]
fn a_corrupt_snapshot_falls_back_to_the_previous_one_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BankConfig {
        snapshot_every: 10,
        ..config()
    };
    let (mut bank, _) = MemoryBank::open(dir.path(), cfg.clone()).unwrap();
    fill(&mut bank, 0..95);
    let before = bank.entries().to_vec();
    drop(bank);
    let mut snaps: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".bin"))
        .collect();
    snaps.sort();
    assert_eq!(snaps.len(), 2, "the newest two snapshots are kept");
    let newest = snaps.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(newest, bytes).unwrap();
    let (bank, rec) = MemoryBank::open(dir.path(), cfg).unwrap();
    assert_eq!(rec.corrupt_snapshots, 1);
    assert_eq!(rec.snapshot.as_ref(), Some(&snaps[0]));
    assert_eq!(bank.entries().len(), before.len());
    for e in &before {
        assert_eq!(bank.get(e.seq), Some(e));
    }
}

#[test]
fn a_damaged_record_inside_a_segment_is_preserved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bank, _) = MemoryBank::open(dir.path(), config()).unwrap();
    fill(&mut bank, 0..10);
    drop(bank);
    let seg = dir.path().join("segment-00000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() * 3 / 4;
    bytes[at] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let (bank, rec) = MemoryBank::open(dir.path(), config()).unwrap();
    assert!(bank.len() < 10 && bank.len() >= 6, "{}", bank.len());
    assert_eq!(rec.preserved.len(), 1);
    assert_eq!(std::fs::read(&rec.preserved[0]).unwrap(), bytes);
}

#[test]
fn eviction_policies_bound_the_bank() {
    let dir = tempfile::tempdir().unwrap();
    let cap = BankConfig {
        max_entries: 10,
        ..config()
    };
    // FIFO keeps the newest.
    let (mut bank, _) = MemoryBank::open(&dir.path().join("fifo"), cap.clone()).unwrap();
    fill(&mut bank, 0..35);
    let mut seqs: Vec<u64> = bank.entries().iter().map(|e| e.seq).collect();
    seqs.sort();
    assert_eq!(seqs, (25..35).collect::<Vec<_>>());

    // Reservoir keeps a sample of everything seen, old frames included.
    let cfg = BankConfig {
        eviction: Eviction::Reservoir,
        ..cap.clone()
    };
    let (mut bank, _) = MemoryBank::open(&dir.path().join("res"), cfg.clone()).unwrap();
    fill(&mut bank, 0..1000);
    assert_eq!((bank.len(), bank.seen()), (10, 1000));
    let mean = bank.entries().iter().map(|e| e.seq as f64).sum::<f64>() / 10.0;
    assert!(mean < 900.0, "a FIFO-like sample: mean seq {mean}");
    drop(bank);
    let (bank, _) = MemoryBank::open(&dir.path().join("res"), cfg).unwrap();
    assert_eq!(bank.seen(), 1000);

    // Diversity evicts from the largest cluster: the rare cluster keeps its members.
    let cfg = BankConfig {
        eviction: Eviction::Diversity,
        ..cap.clone()
    };
    let (mut bank, _) = MemoryBank::open(&dir.path().join("div"), cfg).unwrap();
    bank.insert(&emb(0), meta(0), 7).unwrap();
    bank.insert(&emb(1), meta(1), 7).unwrap();
    for i in 2..50 {
        bank.insert(&emb(i), meta(i), 1).unwrap();
    }
    assert_eq!(bank.len(), 10);
    assert_eq!(
        bank.entries().iter().filter(|e| e.cluster_id == 7).count(),
        2
    );

    // The byte capacity binds too.
    let cfg = BankConfig {
        max_bytes: 1_000,
        ..cap
    };
    let (mut bank, _) = MemoryBank::open(&dir.path().join("bytes"), cfg).unwrap();
    fill(&mut bank, 0..50);
    assert!(
        bank.bytes() <= 1_000 && bank.len() < 10 && !bank.is_empty(),
        "{} entries, {} bytes",
        bank.len(),
        bank.bytes()
    );
}

/// One holder per bank: a second open while the first is held is refused as locked, after a
/// short wait; a holder that lets go during that wait hands the bank over.
#[test]
fn a_held_bank_is_refused_as_locked_and_a_released_one_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (held, _) = MemoryBank::open(dir.path(), config()).unwrap();
    let Err(err) = MemoryBank::open(dir.path(), config()) else {
        panic!("a second holder opened a held bank");
    };
    assert!(
        matches!(
            err,
            edge_runtime::EdgeError::Bank {
                problem: edge_runtime::BankProblem::Locked,
                ..
            }
        ),
        "{err}"
    );
    // Released 100 ms into the second open's wait: that open gets the bank.
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(held);
    });
    let (bank, _) = MemoryBank::open(dir.path(), config()).expect("the released bank");
    release.join().unwrap();
    drop(bank);
}
