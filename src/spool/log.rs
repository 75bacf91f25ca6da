//! The spool's log: an append-only log of segments under `<state.dir>/spool/`.
//!
//! Record layout: `len: u32 LE | crc32: u32 LE | body`, body = `topic_len: u16 LE | topic |
//! readings: u32 LE | line protocol`. The writer appends and fsyncs in groups; the reader only
//! reads what is synced, and commits a position once the store took it. Fully consumed segments
//! are deleted. On open, a record whose length or checksum is wrong ends its segment: the tail
//! is truncated (a torn write after SIGKILL or power loss), logged and counted.
//!
//! Why our own log and not a crate: we weighed `yaque` (a file queue), `okaywal` and `sled`.
//! None lets the caller learn exactly when a record is on disk (we release MQTT acks then),
//! bound the queue in bytes with back-pressure, and report torn tails as a counted event; the
//! format here is ~60 lines of encoding with a checksum from `crc32fast`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tracing::{error, warn};

const HEADER: usize = 8;
/// A record body above this is corrupt, not large: no message makes a 64 MiB record.
const MAX_RECORD: u32 = 64 * 1024 * 1024;
const CURSOR_FILE: &str = "cursor";

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
}

#[derive(Debug, Default)]
struct State {
    /// (end of a synced group, when it was synced): the age of the oldest pending reading.
    sync_times: std::collections::VecDeque<(Position, std::time::Instant)>,
    /// Segment id -> its length on disk.
    segments: BTreeMap<u64, u64>,
    /// End of what is on disk and synced: the reader never reads past it.
    synced: Position,
    /// Where the reader resumes: everything before is in the store.
    committed: Position,
}

impl State {
    fn total_bytes(&self) -> u64 {
        self.segments.values().sum()
    }

    /// True when synced bytes exist at or after `p`.
    fn has_data_after(&self, p: Position) -> bool {
        if p.segment > self.synced.segment {
            return false;
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
struct Shared {
    state: Mutex<State>,
    /// Set when the writer is gone: once caught up, the reader is done.
    closed: std::sync::atomic::AtomicBool,
    /// Rung by the writer after a sync.
    synced: Notify,
    /// Rung by the reader after a commit freed space.
    freed: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pending_bytes(&self) -> u64 {
        let s = self.lock();
        s.total_bytes().saturating_sub(s.committed.offset)
    }

    /// Readings recovered at start count from the time of opening.
    fn oldest_pending_age(&self) -> std::time::Duration {
        let s = self.lock();
        if !s.has_data_after(s.committed) {
            return std::time::Duration::ZERO;
        }
        s.sync_times
            .front()
            .map_or(std::time::Duration::ZERO, |(_, t)| t.elapsed())
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let topic = record.topic.as_bytes();
    let topic_len = topic.len().min(u16::MAX as usize);
    let body_len = 2 + topic_len + 4 + record.lines.len();
    out.reserve(HEADER + body_len);
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(topic_len as u16).to_le_bytes());
    out.extend_from_slice(&topic[..topic_len]);
    out.extend_from_slice(&record.readings.to_le_bytes());
    out.extend_from_slice(record.lines.as_bytes());
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn decode_body(body: &[u8]) -> Option<Record> {
    let topic_len = u16::from_le_bytes(body.get(0..2)?.try_into().ok()?) as usize;
    let topic = std::str::from_utf8(body.get(2..2 + topic_len)?).ok()?;
    let readings = u32::from_le_bytes(body.get(2 + topic_len..6 + topic_len)?.try_into().ok()?);
    let lines = std::str::from_utf8(body.get(6 + topic_len..)?).ok()?;
    Some(Record {
        topic: topic.to_string(),
        readings,
        lines: lines.to_string(),
    })
}

/// Reads one record at the reader's position; `Ok(None)` at a clean end, `Err` on corruption.
fn read_record(r: &mut impl Read) -> io::Result<Option<(Record, u64)>> {
    let mut header = [0u8; HEADER];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len > MAX_RECORD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("record length {len} is implausible"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("short record: {e}")))?;
    if crc32fast::hash(&body) != crc {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "checksum mismatch",
        ));
    }
    let record = decode_body(&body)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "undecodable record body"))?;
    Ok(Some((record, (HEADER as u64) + u64::from(len))))
}

/// Scans a segment and truncates it after its last whole record. Returns (valid length, cut bytes).
fn recover_segment(path: &Path) -> io::Result<(u64, u64)> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let size = file.metadata()?.len();
    let mut reader = io::BufReader::new(&mut file);
    let mut valid = 0u64;
    loop {
        match read_record(&mut reader) {
            Ok(Some((_, n))) => valid += n,
            Ok(None) => break,
            Err(e) => {
                warn!(segment = %path.display(), offset = valid, error = %e, "spool: torn or corrupt record, truncating the tail");
                break;
            }
        }
    }
    drop(reader);
    if valid < size {
        file.set_len(valid)?;
        file.sync_all()?;
    }
    Ok((valid, size - valid))
}

fn read_cursor(dir: &Path) -> Option<Position> {
    let text = fs::read_to_string(dir.join(CURSOR_FILE)).ok()?;
    let mut it = text.split_whitespace();
    Some(Position {
        segment: it.next()?.parse().ok()?,
        offset: it.next()?.parse().ok()?,
    })
}

fn write_cursor(dir: &Path, p: Position) -> io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    fs::write(&tmp, format!("{} {}\n", p.segment, p.offset))?;
    fs::rename(tmp, dir.join(CURSOR_FILE))
}

/// Opens (or creates) the spool, recovering from a crash.
pub fn open(cfg: SpoolConfig) -> io::Result<(SpoolWriter, SpoolReader, OpenReport)> {
    fs::create_dir_all(&cfg.dir)?;
    let mut ids: Vec<u64> = fs::read_dir(&cfg.dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
        .collect();
    ids.sort_unstable();
    let cursor = read_cursor(&cfg.dir);
    let mut state = State::default();
    let mut report = OpenReport::default();
    for id in ids {
        let path = segment_path(&cfg.dir, id);
        if cursor.is_some_and(|c| id < c.segment) {
            fs::remove_file(&path)?; // delivered before the crash, not yet deleted
            continue;
        }
        let (len, cut) = recover_segment(&path)?;
        report.truncated_bytes += cut;
        state.segments.insert(id, len);
    }
    let first = state.segments.keys().next().copied();
    state.committed = match (cursor, first) {
        (Some(c), Some(f)) if c.segment == f && c.offset <= state.segments[&f] => c,
        (_, Some(f)) => Position {
            segment: f,
            offset: 0,
        },
        (Some(c), None) => Position {
            segment: c.segment,
            offset: 0,
        },
        (None, None) => Position::default(),
    };
    // New records go to a fresh segment after the last one.
    let next_id = state
        .segments
        .keys()
        .next_back()
        .map_or(state.committed.segment, |l| l + 1)
        .max(1);
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
    report.pending_bytes = state.total_bytes().saturating_sub(state.committed.offset);
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
        buf: Vec::with_capacity(64 * 1024),
    };
    let reader = SpoolReader {
        dir: cfg.dir,
        shared,
        position: None,
        file: None,
    };
    Ok((writer, reader, report))
}

/// The appending half, owned by the spool stage.
#[derive(Debug)]
pub struct SpoolWriter {
    cfg: SpoolConfig,
    shared: Arc<Shared>,
    file: Option<BufWriter<File>>,
    segment: u64,
    written: u64,
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

    /// Bytes on disk, delivered segments excluded.
    pub fn total_bytes(&self) -> u64 {
        self.shared.lock().total_bytes()
    }

    /// True when `need` more bytes fit under the limit.
    pub fn has_room(&self, need: u64) -> bool {
        let s = self.shared.lock();
        s.total_bytes() + need <= self.cfg.max_bytes || !s.has_data_after(s.committed)
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
        if let Some(mut f) = self.file.take() {
            f.flush()?;
            f.get_ref().sync_data()?;
            self.publish_synced();
            self.segment += 1;
        }
        let path = segment_path(&self.cfg.dir, self.segment);
        let f = OpenOptions::new().create(true).append(true).open(&path)?;
        // The new file's directory entry must survive a power cut too.
        File::open(&self.cfg.dir)?.sync_all()?;
        self.written = 0;
        self.file = Some(BufWriter::with_capacity(256 * 1024, f));
        self.shared.lock().segments.insert(self.segment, 0);
        Ok(())
    }

    /// Makes everything appended so far durable and visible to the reader.
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some(f) = self.file.as_mut() {
            f.flush()?;
            f.get_ref().sync_data()?;
        }
        self.publish_synced();
        Ok(())
    }

    fn publish_synced(&self) {
        let mut s = self.shared.lock();
        let end = Position {
            segment: self.segment,
            offset: self.written,
        };
        if end > s.synced && s.sync_times.back().is_none_or(|(p, _)| *p < end) {
            s.sync_times.push_back((end, std::time::Instant::now()));
        }
        s.synced = end;
        drop(s);
        self.shared.synced.notify_one();
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
        self.shared.synced.notify_one();
    }
}

/// The reading half, owned by the batch stage.
#[derive(Debug)]
pub struct SpoolReader {
    dir: PathBuf,
    shared: Arc<Shared>,
    /// Where the next read starts (None: at the committed position).
    position: Option<Position>,
    file: Option<(u64, io::BufReader<File>)>,
}

impl SpoolReader {
    fn start(&self) -> Position {
        self.position
            .unwrap_or_else(|| self.shared.lock().committed)
    }

    /// True when everything synced has been read.
    pub fn caught_up(&self) -> bool {
        let p = self.start();
        !self.shared.lock().has_data_after(p)
    }

    /// Waits until there is synced data past the read position; `false` when the writer is
    /// gone and everything has been read.
    pub async fn wait(&self) -> bool {
        loop {
            let notified = self.shared.synced.notified();
            if !self.caught_up() {
                return true;
            }
            if self.shared.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return false;
            }
            notified.await;
        }
    }

    /// Reads up to `max_records` whole records (at least one if any is synced) without waiting,
    /// stopping once `max_lines` readings are gathered. Returns them and the position after them.
    pub fn read(
        &mut self,
        max_records: usize,
        max_lines: usize,
    ) -> io::Result<(Vec<Record>, Position)> {
        let mut out = Vec::new();
        let mut pos = self.start();
        let mut lines = 0usize;
        while out.len() < max_records && lines < max_lines {
            let (synced, seg_len, next_seg) = {
                let s = self.shared.lock();
                let len = s.segments.get(&pos.segment).copied();
                let next = s
                    .segments
                    .range(pos.segment + 1..)
                    .next()
                    .map(|(id, _)| *id);
                (s.synced, len, next)
            };
            let limit = if pos.segment == synced.segment {
                synced.offset
            } else {
                seg_len.unwrap_or(0)
            };
            if pos.offset >= limit {
                // End of this segment: move on if a later one exists and this one is finished.
                match next_seg {
                    Some(next) if pos.segment < synced.segment => {
                        pos = Position {
                            segment: next,
                            offset: 0,
                        };
                        self.file = None;
                        continue;
                    }
                    _ => break,
                }
            }
            let reader = match &mut self.file {
                Some((id, r)) if *id == pos.segment => r,
                _ => {
                    let mut f = File::open(segment_path(&self.dir, pos.segment))?;
                    f.seek(SeekFrom::Start(pos.offset))?;
                    self.file = Some((pos.segment, io::BufReader::with_capacity(256 * 1024, f)));
                    &mut self.file.as_mut().expect("just set").1
                }
            };
            match read_record(reader)? {
                Some((record, n)) => {
                    pos.offset += n;
                    lines += record.readings as usize;
                    out.push(record);
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "spool segment ends before its synced length",
                    ));
                }
            }
        }
        self.position = Some(pos);
        Ok((out, pos))
    }

    /// Everything before `upto` is in the store: persist the cursor, delete finished segments.
    pub fn commit(&mut self, upto: Position) -> io::Result<()> {
        let doomed: Vec<u64> = {
            let mut s = self.shared.lock();
            s.committed = upto;
            while s.sync_times.front().is_some_and(|(p, _)| *p <= upto) {
                s.sync_times.pop_front();
            }
            let doomed: Vec<u64> = s
                .segments
                .range(..upto.segment)
                .map(|(id, _)| *id)
                .collect();
            for id in &doomed {
                s.segments.remove(id);
            }
            doomed
        };
        write_cursor(&self.dir, upto)?;
        for id in doomed {
            if let Err(e) = fs::remove_file(segment_path(&self.dir, id)) {
                warn!(segment = id, error = %e, "spool: cannot delete a delivered segment");
            }
        }
        self.shared.freed.notify_one();
        Ok(())
    }

    /// Bytes not yet committed, approximately (for logs and tests).
    pub fn pending_bytes(&self) -> u64 {
        self.shared.pending_bytes()
    }

    /// How long the oldest reading not yet in the store has waited (zero when none).
    pub fn oldest_pending_age(&self) -> std::time::Duration {
        self.shared.oldest_pending_age()
    }
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
