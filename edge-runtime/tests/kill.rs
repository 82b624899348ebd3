//! Crash safety: `kill -9` the process while it writes, 200 times. After every kill the bank
//! reloads with every acknowledged entry; at most the record in flight is missing.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use edge_runtime::bank::{BankConfig, MemoryBank};
use models::rng::Rng;

const KILLS: usize = 200;

#[test]
fn kill_minus_nine_during_writes_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let bank = dir.path().join("bank");
    let mut rng = Rng::new(42);
    let mut acked: Vec<u64> = Vec::new();
    for round in 0..KILLS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_edge-runtime"))
            .args([
                "bank",
                "fill",
                "--dim",
                "32",
                "--snapshot-every",
                "97",
                "--bank",
            ])
            .arg(&bank)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let wait_for = 1 + rng.below(150);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for _ in 0..wait_for {
            match lines.next() {
                Some(Ok(l)) => acked.push(l.strip_prefix("acked ").unwrap().parse().unwrap()),
                other => {
                    let out = child.wait_with_output().unwrap();
                    panic!(
                        "round {round}: writer ended early ({other:?}): {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Read what it wrote after the ack we stopped at (the records in flight).
        let late = lines.map_while(Result::ok).count();

        let cfg = BankConfig {
            max_entries: 1 << 24,
            max_bytes: usize::MAX,
            snapshot_every: u64::MAX,
            ..Default::default()
        };
        let (b, _) = MemoryBank::open(&bank, cfg).unwrap();
        for &seq in &acked {
            assert!(
                b.get(seq).is_some(),
                "round {round}: acknowledged entry {seq} lost"
            );
        }
        // Entries beyond the acknowledged ones were written after our last read: keep them
        // as acknowledged for the next rounds (they must not disappear later either).
        let extra: Vec<u64> = b
            .entries()
            .iter()
            .map(|e| e.seq)
            .filter(|s| !acked.contains(s))
            .collect();
        assert!(
            extra.len() <= late + 1,
            "round {round}: {} unexpected entries",
            extra.len()
        );
        acked.extend(extra);
    }
    assert!(acked.len() >= KILLS);
}
