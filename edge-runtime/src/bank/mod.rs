//! The on-device memory bank: a bounded store of embeddings with capture metadata and
//! cluster ids, persisted so that a crash loses at most the record being written.
//!
//! On disk (one directory):
//! - `segment-NNNNNNNN.log`: append-only [`log::Record`]s, each `[len][crc32][postcard]`;
//! - `snapshot-NNNNNNNN.bin`: the whole bank as one such record, covering every segment
//!   numbered below `NNNNNNNN`. Published by write-temp, fsync, rename, fsync-directory.
//!
//! Recovery loads the newest snapshot that passes its CRC (falling back to the previous one,
//! whose segments are kept for exactly that), replays the segments after it, and drops a torn
//! record at a segment's tail (counted). A damaged segment is copied aside before it is cut,
//! so no stored byte is thrown away.

mod entry;
pub mod identity;
pub mod log;

pub use entry::{BankEntry, CaptureMeta, EmbeddingFormat, FrameDetail, StoredEmbedding, Thumbnail};

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use models::rng::Rng;
use serde::{Deserialize, Serialize};

use self::log::{frame, read_records, Record, Stop};
use crate::error::BankProblem;
use crate::EdgeError;

/// Which entry goes when the bank is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Eviction {
    /// The oldest entry.
    #[default]
    Fifo,
    /// Reservoir sampling (Algorithm R): the bank stays a uniform sample of everything seen.
    Reservoir,
    /// The oldest entry of the largest cluster, so rare clusters keep their examples.
    Diversity,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BankConfig {
    pub max_entries: usize,
    pub max_bytes: usize,
    pub format: EmbeddingFormat,
    pub eviction: Eviction,
    /// fsync the segment after every append (power-loss safety; kill -9 needs only write).
    pub fsync: bool,
    /// Write a snapshot (and start a new segment) after this many records.
    pub snapshot_every: u64,
    pub seed: u64,
}

impl Default for BankConfig {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_bytes: 64 << 20,
            format: EmbeddingFormat::I8,
            eviction: Eviction::Fifo,
            fsync: false,
            snapshot_every: 50_000,
            seed: 0,
        }
    }
}

impl BankConfig {
    /// Capacities that evict nothing and no snapshot on the way: for reading a bank whole
    /// (inspect, export, report, rebind).
    pub fn unbounded() -> Self {
        Self {
            max_entries: usize::MAX,
            max_bytes: usize::MAX,
            snapshot_every: u64::MAX,
            ..Default::default()
        }
    }
}

/// What `open` found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Recovery {
    pub snapshot: Option<PathBuf>,
    /// Snapshots that failed their CRC and were skipped.
    pub corrupt_snapshots: usize,
    pub replayed_records: usize,
    /// Segments that ended in a torn record (a crash mid-write), and the bytes dropped.
    pub torn_tails: usize,
    pub dropped_bytes: usize,
    /// Damaged segments copied aside (`*.corrupt`) before being cut.
    pub preserved: Vec<PathBuf>,
}

/// Written from borrowed entries ([`SnapshotRef`]), read back owned; same postcard layout.
#[derive(Debug, Deserialize)]
struct Snapshot {
    /// Segments numbered from here on come after this snapshot.
    segment: u64,
    next_seq: u64,
    next_cluster_id: u32,
    seen: u64,
    entries: Vec<BankEntry>,
}

#[derive(Serialize)]
struct SnapshotRef<'a> {
    segment: u64,
    next_seq: u64,
    next_cluster_id: u32,
    seen: u64,
    entries: &'a [BankEntry],
}

/// What an insert did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inserted {
    /// The new entry's seq, or `None` when reservoir sampling passed over it.
    pub seq: Option<u64>,
    pub evicted: Vec<u64>,
}

#[derive(Debug)]
pub struct MemoryBank {
    dir: PathBuf,
    config: BankConfig,
    entries: Vec<BankEntry>,
    index: HashMap<u64, usize>,
    /// Seqs in order, overall and per cluster, so eviction never scans the bank.
    order: BTreeSet<u64>,
    by_cluster: HashMap<u32, BTreeSet<u64>>,
    bytes: usize,
    next_seq: u64,
    next_cluster_id: u32,
    seen: u64,
    segment: u64,
    file: File,
    since_snapshot: u64,
    rng: Rng,
    /// Held (locked) while the bank is open.
    _lock: File,
}

/// How long `open` waits for a held lock before calling the bank locked.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Takes the lock on `file`, retrying until `wait` has passed. A lock is an flock: a child
/// process forked by another thread holds a copy of a just-closed bank's descriptor until it
/// execs, so a bank reopened at once can find its lock held for that moment.
fn lock_within(file: &File, wait: std::time::Duration) -> bool {
    let start = std::time::Instant::now();
    loop {
        if file.try_lock().is_ok() {
            return true;
        }
        if start.elapsed() >= wait {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

impl MemoryBank {
    /// Opens (or creates) the bank in `dir` and recovers its state.
    pub fn open(dir: &Path, config: BankConfig) -> Result<(Self, Recovery), EdgeError> {
        if config.max_entries == 0 || config.max_bytes == 0 {
            return Err(EdgeError::Bank {
                path: dir.to_path_buf(),
                problem: BankProblem::NoCapacity,
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        // One process per bank: a second one would cut the first one's records in flight.
        let lock_path = dir.join("bank.lock");
        let lock = File::create(&lock_path).map_err(|e| io(&lock_path, e))?;
        if !lock_within(&lock, LOCK_WAIT) {
            return Err(EdgeError::Bank {
                path: dir.to_path_buf(),
                problem: BankProblem::Locked,
            });
        }
        let mut rec = Recovery::default();
        let (snapshots, segments) = list(dir)?;
        let state = newest_snapshot(dir, &snapshots, &segments, &mut rec)?;
        // Appends always go to a fresh segment, after everything recovered.
        let last = segments.last().map_or(0, |s| s.0).max(state.segment);
        let segment = if segments.is_empty() {
            state.segment
        } else {
            last + 1
        };
        let mut bank = Self {
            dir: dir.to_path_buf(),
            entries: Vec::new(),
            index: HashMap::new(),
            order: BTreeSet::new(),
            by_cluster: HashMap::new(),
            bytes: 0,
            next_seq: state.next_seq,
            next_cluster_id: state.next_cluster_id,
            seen: state.seen,
            segment,
            file: open_segment(dir, segment)?,
            since_snapshot: 0,
            rng: Rng::new(config.seed ^ state.seen),
            config,
            _lock: lock,
        };
        for e in state.entries {
            bank.put(e);
        }
        for (_, path) in segments.iter().filter(|(n, _)| *n >= state.segment) {
            bank.replay(path, &mut rec)?;
        }
        sync_dir(dir)?;
        Ok((bank, rec))
    }

    /// Applies the intact records of one segment. A torn tail (a crash mid-write) is cut
    /// and counted; a damaged record is copied aside with the rest of its segment first.
    fn replay(&mut self, path: &Path, rec: &mut Recovery) -> Result<(), EdgeError> {
        let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
        let (records, valid, stop) = read_records::<Record>(&bytes);
        rec.replayed_records += records.len();
        for r in records {
            self.apply(r);
        }
        let Some(stop) = stop else { return Ok(()) };
        if stop == Stop::Corrupt {
            let aside = path.with_extension(format!("log.corrupt-{}", bytes.len()));
            std::fs::write(&aside, &bytes).map_err(|e| io(&aside, e))?;
            rec.preserved.push(aside);
        }
        rec.torn_tails += (stop == Stop::Truncated) as usize;
        rec.dropped_bytes += bytes.len() - valid;
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| io(path, e))?;
        f.set_len(valid as u64).map_err(|e| io(path, e))?;
        f.sync_all().map_err(|e| io(path, e))
    }

    /// The bank's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the entries take, as counted against `max_bytes`.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn entries(&self) -> &[BankEntry] {
        &self.entries
    }

    pub fn config(&self) -> &BankConfig {
        &self.config
    }

    pub fn get(&self, seq: u64) -> Option<&BankEntry> {
        self.index.get(&seq).map(|&i| &self.entries[i])
    }

    /// Frames offered to the bank so far (stored or not).
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The first cluster id never handed out (kept across restarts).
    pub fn next_cluster_id(&self) -> u32 {
        self.next_cluster_id
    }

    /// Records that cluster ids below `next` are used.
    pub fn reserve_cluster_ids(&mut self, next: u32) -> Result<(), EdgeError> {
        if next > self.next_cluster_id {
            self.write(&[Record::NextClusterId(next)])?;
            self.next_cluster_id = next;
        }
        Ok(())
    }

    /// Offers an embedding to the bank; evicts by the policy when full.
    pub fn insert(
        &mut self,
        embedding: &[f32],
        meta: CaptureMeta,
        cluster_id: u32,
    ) -> Result<Inserted, EdgeError> {
        let seq = self.next_seq;
        let entry = BankEntry {
            seq,
            embedding: StoredEmbedding::encode(embedding, self.config.format),
            meta,
            cluster_id,
        };
        let mut records = Vec::new();
        let mut evicted = Vec::new();
        let full = self.entries.len() >= self.config.max_entries;
        if full && self.config.eviction == Eviction::Reservoir {
            // Algorithm R: keep the new frame with probability capacity / seen.
            let j = self.rng.below(self.seen as usize + 1);
            if j >= self.entries.len() {
                self.write(&[Record::Skip])?;
                self.seen += 1;
                return Ok(Inserted::default());
            }
            evicted.push(self.entries[j].seq);
        }
        let mut bytes = self.bytes + entry.bytes();
        let mut count = self.entries.len() + 1 - evicted.len();
        while count > self.config.max_entries || bytes > self.config.max_bytes {
            let Some(victim) = self.victim(&evicted) else {
                break;
            };
            bytes -= self.get(victim).map_or(0, BankEntry::bytes);
            count -= 1;
            evicted.push(victim);
        }
        records.extend(evicted.iter().map(|&s| Record::Remove(s)));
        records.push(Record::Add(entry));
        self.write(&records)?;
        for r in records {
            self.apply(r);
        }
        self.maybe_snapshot()?;
        Ok(Inserted {
            seq: Some(seq),
            evicted,
        })
    }

    /// Counts at least `seen` frames as seen, so that the frame ids of a bank rebuilt from
    /// another go on from where that one stopped.
    pub fn set_seen_at_least(&mut self, seen: u64) -> Result<(), EdgeError> {
        let r = Record::SeenAtLeast(seen);
        self.write(std::slice::from_ref(&r))?;
        self.apply(r);
        Ok(())
    }

    /// New cluster ids for stored entries (after re-clustering).
    pub fn relabel(&mut self, labels: Vec<(u64, u32)>) -> Result<(), EdgeError> {
        let r = Record::Relabel(labels);
        self.write(std::slice::from_ref(&r))?;
        self.apply(r);
        self.maybe_snapshot()
    }

    /// The embeddings of the entries at `positions` (indices into [`Self::entries`]) as f32 rows.
    pub fn decode(&self, positions: &[usize]) -> Vec<f32> {
        positions
            .iter()
            .flat_map(|&i| self.entries[i].embedding.to_f32())
            .collect()
    }

    /// Forces written records to stable storage.
    pub fn flush(&mut self) -> Result<(), EdgeError> {
        let path = segment_path(&self.dir, self.segment);
        self.file.flush().map_err(|e| io(&path, e))?;
        self.file.sync_data().map_err(|e| io(&path, e))
    }

    /// Publishes a snapshot and starts a new segment; keeps the previous snapshot and the
    /// segments after it, so a damaged newest snapshot can fall back without loss.
    pub fn snapshot(&mut self) -> Result<PathBuf, EdgeError> {
        self.flush()?;
        let next = self.segment + 1;
        let snap = SnapshotRef {
            segment: next,
            next_seq: self.next_seq,
            next_cluster_id: self.next_cluster_id,
            seen: self.seen,
            entries: &self.entries,
        };
        let path = self.dir.join(format!("snapshot-{next:08}.bin"));
        publish_record(&path, &snap)?;
        self.file = open_segment(&self.dir, next)?;
        self.segment = next;
        self.since_snapshot = 0;
        sync_dir(&self.dir)?;
        // Keep the newest two snapshots and the segments the older of them needs.
        let (snaps, segs) = list(&self.dir)?;
        if snaps.len() > 2 {
            let keep_from = snaps[snaps.len() - 2].0;
            for (n, p) in snaps.iter().chain(&segs) {
                if *n < keep_from {
                    std::fs::remove_file(p).map_err(|e| io(p, e))?;
                }
            }
        }
        Ok(path)
    }

    fn maybe_snapshot(&mut self) -> Result<(), EdgeError> {
        if self.since_snapshot >= self.config.snapshot_every {
            self.snapshot()?;
        }
        Ok(())
    }

    fn write(&mut self, records: &[Record]) -> Result<(), EdgeError> {
        let mut buf = Vec::new();
        for r in records {
            buf.extend(frame(r));
        }
        let path = || segment_path(&self.dir, self.segment);
        self.file.write_all(&buf).map_err(|e| io(&path(), e))?;
        if self.config.fsync {
            self.file.sync_data().map_err(|e| io(&path(), e))?;
        }
        self.since_snapshot += records.len() as u64;
        Ok(())
    }

    fn victim(&self, already: &[u64]) -> Option<u64> {
        let oldest = |set: &BTreeSet<u64>| set.iter().find(|s| !already.contains(s)).copied();
        match self.config.eviction {
            Eviction::Fifo | Eviction::Reservoir => oldest(&self.order),
            Eviction::Diversity => {
                let live = |set: &BTreeSet<u64>| {
                    set.len() - already.iter().filter(|s| set.contains(s)).count()
                };
                let (_, set) = self
                    .by_cluster
                    .iter()
                    .filter(|(_, set)| live(set) > 0)
                    .max_by_key(|(id, set)| (live(set), std::cmp::Reverse(**id)))?;
                oldest(set)
            }
        }
    }

    fn apply(&mut self, r: Record) {
        match r {
            Record::Add(e) => {
                self.next_seq = self.next_seq.max(e.seq + 1);
                self.seen += 1;
                self.put(e);
            }
            Record::Remove(seq) => {
                if let Some(i) = self.index.remove(&seq) {
                    let e = self.entries.swap_remove(i);
                    self.bytes -= e.bytes();
                    self.order.remove(&seq);
                    self.unlink_cluster(e.cluster_id, seq);
                    if let Some(moved) = self.entries.get(i) {
                        self.index.insert(moved.seq, i);
                    }
                }
            }
            Record::Relabel(labels) => {
                for (seq, id) in labels {
                    if let Some(&i) = self.index.get(&seq) {
                        let old = std::mem::replace(&mut self.entries[i].cluster_id, id);
                        self.unlink_cluster(old, seq);
                        self.by_cluster.entry(id).or_default().insert(seq);
                    }
                }
            }
            Record::NextClusterId(n) => self.next_cluster_id = self.next_cluster_id.max(n),
            Record::Skip => self.seen += 1,
            Record::SeenAtLeast(n) => self.seen = self.seen.max(n),
        }
    }

    fn unlink_cluster(&mut self, cluster: u32, seq: u64) {
        if let Some(set) = self.by_cluster.get_mut(&cluster) {
            set.remove(&seq);
            if set.is_empty() {
                self.by_cluster.remove(&cluster);
            }
        }
    }

    fn put(&mut self, e: BankEntry) {
        self.bytes += e.bytes();
        self.order.insert(e.seq);
        self.by_cluster
            .entry(e.cluster_id)
            .or_default()
            .insert(e.seq);
        self.index.insert(e.seq, self.entries.len());
        self.entries.push(e);
    }
}

/// The newest snapshot that passes its CRC (an empty state when there is none), counting the
/// corrupt ones. Refuses to start empty when every snapshot is corrupt and the segments
/// they covered are gone.
fn newest_snapshot(
    dir: &Path,
    snapshots: &Numbered,
    segments: &Numbered,
    rec: &mut Recovery,
) -> Result<Snapshot, EdgeError> {
    for (_, path) in snapshots.iter().rev() {
        let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
        let (mut snaps, _, stop) = read_records::<Snapshot>(&bytes);
        if stop.is_none() && snaps.len() == 1 {
            rec.snapshot = Some(path.clone());
            return Ok(snaps.pop().expect("one snapshot"));
        }
        rec.corrupt_snapshots += 1;
    }
    if rec.corrupt_snapshots > 0 && segments.first().is_some_and(|s| s.0 > 0) {
        return Err(EdgeError::Bank {
            path: dir.to_path_buf(),
            problem: BankProblem::SnapshotsLost,
        });
    }
    Ok(Snapshot {
        segment: 0,
        next_seq: 0,
        next_cluster_id: 0,
        seen: 0,
        entries: Vec::new(),
    })
}

fn io(path: &Path, source: std::io::Error) -> EdgeError {
    EdgeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("segment-{n:08}.log"))
}

fn open_segment(dir: &Path, n: u64) -> Result<File, EdgeError> {
    let path = segment_path(dir, n);
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| io(&path, e))
}

fn sync_dir(dir: &Path) -> Result<(), EdgeError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

/// Streams one framed record (`[len][crc32][postcard]`) into a temporary file without
/// building it in memory, fsyncs it, renames it over `path`, and fsyncs the directory.
pub(crate) fn publish_record<T: Serialize>(path: &Path, value: &T) -> Result<(), EdgeError> {
    use std::io::{Seek, SeekFrom};
    let tmp = path.with_extension("tmp");
    let err = |e: std::io::Error| io(&tmp, e);
    let file = File::create(&tmp).map_err(err)?;
    let mut w = CrcWriter {
        inner: std::io::BufWriter::new(file),
        crc: crc32fast::Hasher::new(),
        len: 0,
    };
    w.inner.write_all(&[0; log::HEADER]).map_err(err)?;
    postcard::to_io(value, &mut w).map_err(|e| io(&tmp, std::io::Error::other(e)))?;
    let (len, crc) = (w.len as u32, w.crc.finalize());
    let mut file = w.inner.into_inner().map_err(|e| err(e.into_error()))?;
    file.seek(SeekFrom::Start(0)).map_err(err)?;
    file.write_all(&len.to_le_bytes()).map_err(err)?;
    file.write_all(&crc.to_le_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Counts and checksums what passes through.
struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

type Numbered = Vec<(u64, PathBuf)>;

/// Snapshots and segments of `dir`, each sorted by number.
fn list(dir: &Path) -> Result<(Numbered, Numbered), EdgeError> {
    let (mut snaps, mut segs) = (Vec::new(), Vec::new());
    for e in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let p = e.map_err(|e| io(dir, e))?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let num = |prefix: &str, suffix: &str| {
            name.strip_prefix(prefix)?
                .strip_suffix(suffix)?
                .parse::<u64>()
                .ok()
        };
        if let Some(n) = num("snapshot-", ".bin") {
            snaps.push((n, p));
        } else if let Some(n) = num("segment-", ".log") {
            segs.push((n, p));
        }
    }
    snaps.sort();
    segs.sort();
    Ok((snaps, segs))
}
