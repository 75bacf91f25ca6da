//! The spool's log: an append-only log of segments under `<state.dir>/spool/`.
//!
//! Record layout: `len: u32 LE | crc32: u32 LE | body`, body = `topic_len: u16 LE | topic |
//! readings: u32 LE | line protocol`. The writer appends and fsyncs in groups; each sink has its
//! own reader, which only reads what is synced and commits a position once its store took it (in
//! its own [`super::cursor`], written in place). Segments every reader has passed are deleted,
//! and their folder fsynced; the room left under `max_bytes` counts from the slowest reader. On open, a
//! record whose length or checksum is wrong is searched past: with no valid record after it, it
//! is a torn tail (SIGKILL, power loss) and is cut; with records after it, the bad range is
//! copied into `quarantine/`, stepped over by the reader, logged and counted, and nothing after
//! it is lost. A cursor that points inside a record resumes at that record's start.
//!
//! Why our own log and not a crate: we weighed `yaque` (a file queue), `okaywal` and `sled`.
//! None lets the caller learn exactly when a record is on disk (we release MQTT acks then),
//! bound the queue in bytes with back-pressure, and report torn tails as a counted event; the
//! format here is ~60 lines of encoding with a checksum from `crc32fast`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tracing::{error, warn};

use super::cursor::{self, sync_dir, Cursor};
pub use super::reader::SpoolReader;
pub use super::record::{encode, Quarantined};
use super::record::{quarantine, scan_segment};

pub(super) const HEADER: usize = 8;
/// A record body above this is corrupt, not large: no message makes a 64 MiB record.
pub(super) const MAX_RECORD: u32 = 64 * 1024 * 1024;
/// Corrupt ranges found in the middle of segments are copied here, a file per range.
pub const QUARANTINE_DIR: &str = "quarantine";

pub use crate::model::Record;

/// A place in the log: segment id and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub segment_bytes: u64,
}

/// What opening the spool found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    pub segments: usize,
    pub pending_bytes: u64,
    pub truncated_bytes: u64,
    /// Corrupt ranges in the middle of segments, moved aside (the records after them are kept).
    pub quarantined: Vec<Quarantined>,
    /// The cursor pointed inside a record and was moved to its start.
    pub cursor_moved: bool,
    /// Sinks whose cursor file was found but which are not configured (ignored).
    pub ignored_cursors: Vec<String>,
}

#[derive(Debug, Default)]
pub(super) struct State {
    /// (end of a synced group, when it was synced): the age of the oldest pending reading.
    pub(super) sync_times: std::collections::VecDeque<(Position, std::time::Instant)>,
    /// Segment id -> its length on disk.
    pub(super) segments: BTreeMap<u64, u64>,
    /// End of what is on disk and synced: the reader never reads past it.
    pub(super) synced: Position,
    /// Where each reader resumes (one per sink): everything before is in that sink's store.
    pub(super) committed: Vec<Position>,
    /// Quarantined ranges the reader steps over: start -> end offset in the same segment.
    pub(super) skips: BTreeMap<Position, u64>,
}

impl State {
    pub(super) fn total_bytes(&self) -> u64 {
        self.segments.values().sum()
    }

    /// The slowest reader's position: what the spool still has to keep.
    pub(super) fn low(&self) -> Position {
        self.committed.iter().min().copied().unwrap_or_default()
    }

    /// Bytes from `p` to the end, approximately.
    pub(super) fn bytes_after(&self, p: Position) -> u64 {
        let from: u64 = self.segments.range(p.segment..).map(|(_, l)| *l).sum();
        from.saturating_sub(p.offset)
    }

    /// How long the oldest reading after `p` has waited (zero when none).
    pub(super) fn age_after(&self, p: Position) -> std::time::Duration {
        if !self.has_data_after(p) {
            return std::time::Duration::ZERO;
        }
        self.sync_times
            .iter()
            .find(|(end, _)| *end > p)
            .map_or(std::time::Duration::ZERO, |(_, t)| t.elapsed())
    }

    /// True when synced bytes exist at or after `p`, or a later segment the reader can move to
    /// (committing there deletes the one it leaves: how a full disk gets its space back).
    pub(super) fn has_data_after(&self, p: Position) -> bool {
        if p.segment > self.synced.segment {
            return false;
        }
        if p.segment < self.synced.segment
            && self.segments.contains_key(&p.segment)
            && self
                .segments
                .range(p.segment + 1..=self.synced.segment)
                .next()
                .is_some()
        {
            return true;
        }
        self.segments
            .range(p.segment..=self.synced.segment)
            .any(|(id, len)| {
                let end = if *id == self.synced.segment {
                    self.synced.offset
                } else {
                    *len
                };
                let from = if *id == p.segment { p.offset } else { 0 };
                end > from
            })
    }
}

#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    /// Set when the writer is gone: once caught up, the reader is done.
    pub(super) closed: std::sync::atomic::AtomicBool,
    /// Rung by the writer after a sync (every reader wakes: `notify_waiters`).
    pub(super) synced: Notify,
    /// Rung by the reader after a commit freed space.
    pub(super) freed: Notify,
}

impl Shared {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes the slowest reader has not committed.
    pub(super) fn pending_bytes(&self) -> u64 {
        let s = self.lock();
        s.bytes_after(s.low())
    }

    /// Readings recovered at start count from the time of opening.
    pub(super) fn oldest_pending_age(&self) -> std::time::Duration {
        let s = self.lock();
        s.age_after(s.low())
    }
}

pub(super) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// Opens (or creates) the spool with the one default reader, recovering from a crash.
#[cfg(test)]
pub fn open(cfg: SpoolConfig) -> io::Result<(SpoolWriter, SpoolReader, OpenReport)> {
    let (writer, mut readers, report) = open_for(cfg, &[cursor::DEFAULT_SINK])?;
    Ok((writer, readers.remove(0), report))
}

/// Cursor files of sinks not in `sinks` (a sink removed from the configuration): left on disk,
/// but not read, so they pin no segment.
fn unknown_cursors(dir: &Path, sinks: &[&str]) -> io::Result<Vec<String>> {
    let mut out: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name().to_str()?.to_string();
            let sink = cursor::sink_of(&file)?;
            (!sinks.contains(&sink)).then(|| sink.to_string())
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Opens (or creates) the spool with one reader per sink (in the order of `sinks`), each with
/// its own cursor, recovering from a crash. A segment stays until every reader passed it. A sink
/// without a cursor yet starts where the slowest other sink is (or at the oldest segment).
pub fn open_for(
    cfg: SpoolConfig,
    sinks: &[&str],
) -> io::Result<(SpoolWriter, Vec<SpoolReader>, OpenReport)> {
    fs::create_dir_all(&cfg.dir)?;
    let mut ids: Vec<u64> = fs::read_dir(&cfg.dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
        .collect();
    ids.sort_unstable();
    let mut report = OpenReport {
        ignored_cursors: unknown_cursors(&cfg.dir, sinks)?,
        ..Default::default()
    };
    for sink in &report.ignored_cursors {
        warn!(sink = %sink, "spool: a cursor of a sink no longer configured is ignored (its file stays)");
    }
    let mut files = Vec::with_capacity(sinks.len());
    let mut cursors: Vec<Option<Position>> = Vec::with_capacity(sinks.len());
    for sink in sinks {
        let (file, position) = Cursor::open_named(&cfg.dir, sink)?;
        files.push(file);
        cursors.push(position);
    }
    // Everything before the slowest known cursor is delivered everywhere.
    let oldest = cursors.iter().flatten().min().copied();
    let mut state = State::default();
    let mut removed = false;
    for id in ids {
        let path = segment_path(&cfg.dir, id);
        if oldest.is_some_and(|c| id < c.segment) {
            fs::remove_file(&path)?; // delivered before the crash, not yet deleted
            removed = true;
            continue;
        }
        let inside: Vec<u64> = cursors
            .iter()
            .flatten()
            .filter(|c| c.segment == id)
            .map(|c| c.offset)
            .collect();
        let scan = scan_segment(&path, &inside)?;
        report.truncated_bytes += scan.cut;
        for c in cursors.iter_mut().flatten().filter(|c| c.segment == id) {
            if let Some(&floor) = scan.floors.get(&c.offset) {
                if floor != c.offset {
                    // A cursor inside a record: resume at its start (a duplicate, not a gap).
                    warn!(
                        segment = id,
                        cursor = c.offset,
                        resume = floor,
                        "spool: the cursor points inside a record; resuming at the record's start"
                    );
                    report.cursor_moved = true;
                    c.offset = floor;
                }
            }
        }
        for range in &scan.bad {
            state.skips.insert(
                Position {
                    segment: id,
                    offset: range.0,
                },
                range.1,
            );
            if let Some(q) = quarantine(&cfg.dir, id, *range)? {
                report.quarantined.push(q);
            }
        }
        state.segments.insert(id, scan.len);
    }
    if removed {
        sync_dir(&cfg.dir)?;
    }
    // New records go to a fresh segment after the last one (and never behind a cursor).
    let next_id = state
        .segments
        .keys()
        .next_back()
        .map(|l| l + 1)
        .into_iter()
        .chain(cursors.iter().flatten().map(|c| c.segment))
        .max()
        .unwrap_or(0)
        .max(1);
    let resume = |c: Position| -> Position {
        match state.segments.get(&c.segment) {
            Some(len) if c.offset <= *len => c,
            _ => Position {
                segment: state
                    .segments
                    .range(c.segment..)
                    .next()
                    .map_or(next_id, |(id, _)| *id),
                offset: 0,
            },
        }
    };
    let floor = match (cursors.iter().flatten().min(), state.segments.keys().next()) {
        (Some(c), _) => resume(*c),
        (None, Some(f)) => Position {
            segment: *f,
            offset: 0,
        },
        (None, None) => Position {
            segment: next_id,
            offset: 0,
        },
    };
    state.committed = cursors.iter().map(|c| c.map_or(floor, resume)).collect();
    state.synced = Position {
        segment: next_id,
        offset: 0,
    };
    report.segments = state.segments.len();
    if let Some((last, len)) = state.segments.iter().next_back() {
        let end = Position {
            segment: *last,
            offset: *len,
        };
        state.sync_times.push_back((end, std::time::Instant::now()));
    }
    report.pending_bytes = state.bytes_after(state.low());
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        ..Default::default()
    });
    let writer = SpoolWriter {
        cfg: cfg.clone(),
        shared: shared.clone(),
        file: None,
        segment: next_id,
        written: 0,
        synced_len: 0,
        buf: Vec::with_capacity(64 * 1024),
    };
    let readers = files
        .into_iter()
        .enumerate()
        .map(|(index, cursor)| SpoolReader {
            dir: cfg.dir.clone(),
            shared: shared.clone(),
            index,
            position: None,
            file: None,
            cursor,
        })
        .collect();
    Ok((writer, readers, report))
}

/// An fsync handed out by [`SpoolWriter::sync_start`].
#[derive(Debug)]
pub struct PendingSync {
    pub file: Option<File>,
    end: Position,
}

/// The appending half, owned by the spool stage.
#[derive(Debug)]
pub struct SpoolWriter {
    cfg: SpoolConfig,
    shared: Arc<Shared>,
    file: Option<BufWriter<File>>,
    segment: u64,
    written: u64,
    /// Bytes of the current segment known durable (the last successful sync).
    synced_len: u64,
    buf: Vec<u8>,
}

impl SpoolWriter {
    /// See [`SpoolReader::pending_bytes`].
    pub fn pending_bytes(&self) -> u64 {
        self.shared.pending_bytes()
    }

    /// See [`SpoolReader::oldest_pending_age`].
    pub fn oldest_pending_age(&self) -> std::time::Duration {
        self.shared.oldest_pending_age()
    }

    /// What each reader (in the order of `open_for`'s sinks) has not committed: bytes, and the
    /// age of its oldest reading.
    pub fn lags(&self) -> Vec<(u64, std::time::Duration)> {
        let s = self.shared.lock();
        s.committed
            .iter()
            .map(|c| (s.bytes_after(*c), s.age_after(*c)))
            .collect()
    }

    /// Bytes on disk, delivered segments excluded.
    pub fn total_bytes(&self) -> u64 {
        self.shared.lock().total_bytes()
    }

    /// True when `need` more bytes fit under the limit.
    pub fn has_room(&self, need: u64) -> bool {
        let s = self.shared.lock();
        s.total_bytes() + need <= self.cfg.max_bytes || !s.has_data_after(s.low())
    }

    /// Waits until `need` bytes fit. When the store has taken everything, one record larger than
    /// the limit is still let in, or it would wait forever.
    pub async fn wait_for_room(&self, need: u64) {
        loop {
            let freed = self.shared.freed.notified();
            if self.has_room(need) {
                return;
            }
            freed.await;
        }
    }

    /// Appends a record (not yet durable: call `sync`). Returns its encoded size.
    pub fn append(&mut self, record: &Record) -> io::Result<u64> {
        self.buf.clear();
        encode(record, &mut self.buf);
        if self.file.is_none() || self.written >= self.cfg.segment_bytes {
            self.rotate()?;
        }
        let file = self.file.as_mut().expect("rotate opened it");
        file.write_all(&self.buf)?;
        self.written += self.buf.len() as u64;
        self.shared
            .lock()
            .segments
            .insert(self.segment, self.written);
        Ok(self.buf.len() as u64)
    }

    pub fn encoded_len(record: &Record) -> u64 {
        (HEADER + 2 + record.topic.len().min(u16::MAX as usize) + 4 + record.lines.len()) as u64
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(f) = self.file.as_mut() {
            // On error the file stays, for `discard_unsynced` to cut back.
            f.flush()?;
            f.get_ref().sync_data()?;
            self.synced_len = self.written;
            self.publish_synced(self.end());
            self.file = None;
            self.segment += 1;
        }
        let path = segment_path(&self.cfg.dir, self.segment);
        let f = OpenOptions::new().create(true).append(true).open(&path)?;
        // The new file's directory entry must survive a power cut too.
        File::open(&self.cfg.dir)?.sync_all()?;
        self.written = 0;
        self.synced_len = 0;
        self.file = Some(BufWriter::with_capacity(256 * 1024, f));
        self.shared.lock().segments.insert(self.segment, 0);
        Ok(())
    }

    /// Makes everything appended so far durable and visible to the reader.
    pub fn sync(&mut self) -> io::Result<()> {
        let pending = self.sync_start()?;
        if let Some(f) = &pending.file {
            f.sync_data()?;
        }
        self.sync_done(&pending);
        Ok(())
    }

    /// The first half of [`SpoolWriter::sync`]: writes out the buffer and hands out the
    /// segment's handle and end, so that the fsync can run off the runtime's thread while
    /// more is appended (it covers what was appended before this call).
    pub fn sync_start(&mut self) -> io::Result<PendingSync> {
        let end = self.end();
        let file = match self.file.as_mut() {
            Some(f) => {
                f.flush()?;
                Some(f.get_ref().try_clone()?)
            }
            None => None,
        };
        Ok(PendingSync { file, end })
    }

    /// The fsync of `pending` succeeded: what was appended before it started is durable, and
    /// the reader may have it. A segment finished since was synced when it was.
    pub fn sync_done(&mut self, pending: &PendingSync) {
        if self.file.is_some() && pending.end.segment == self.segment {
            self.synced_len = self.synced_len.max(pending.end.offset);
        }
        self.publish_synced(pending.end);
    }

    fn end(&self) -> Position {
        Position {
            segment: self.segment,
            offset: self.written,
        }
    }

    /// After a failed append or sync (a full disk): the records appended since the last sync are
    /// not durable, and after a failed fsync the file's state is unknown (fsyncgate), so it is
    /// never synced again as if that had worked. Its buffer is dropped unwritten, the segment is
    /// cut back to its synced length, and the next append opens a new segment. The caller keeps
    /// the acknowledgements of those records and appends them again.
    pub fn discard_unsynced(&mut self) -> io::Result<()> {
        let Some(f) = self.file.take() else {
            return Ok(());
        };
        let (file, _unwritten) = f.into_parts();
        drop(file);
        let path = segment_path(&self.cfg.dir, self.segment);
        // Cutting needs no new block; a fresh handle, not the one whose fsync failed.
        OpenOptions::new()
            .write(true)
            .open(&path)?
            .set_len(self.synced_len)?;
        let cut_len = self.synced_len;
        self.segment += 1;
        self.written = 0;
        self.synced_len = 0;
        {
            let mut s = self.shared.lock();
            s.segments.insert(self.segment - 1, cut_len);
            // The cut segment is finished: the reader may leave it, and the commit that follows
            // deletes it, freeing its space even when it is the only one.
            s.segments.insert(self.segment, 0);
        }
        self.publish_synced(self.end());
        Ok(())
    }

    /// The reader may read up to `end` (never back: an fsync that finished late covers less).
    fn publish_synced(&self, end: Position) {
        let mut s = self.shared.lock();
        if end <= s.synced {
            return;
        }
        if s.sync_times.back().is_none_or(|(p, _)| *p < end) {
            s.sync_times.push_back((end, std::time::Instant::now()));
        }
        s.synced = end;
        drop(s);
        self.shared.synced.notify_waiters();
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            error!(error = %e, "spool: final sync failed");
        }
        self.shared
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.synced.notify_waiters();
    }
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
