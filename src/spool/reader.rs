//! The reading half of the spool: one per sink, each reading only what is synced and committing
//! its own position (its cursor) once its store took what it read.

use super::cursor::{sync_dir, Cursor};
use super::log::*;
use super::record::read_record;
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use tracing::warn;

/// The reading half, owned by the batch stage.
#[derive(Debug)]
pub struct SpoolReader {
    pub(super) dir: PathBuf,
    pub(super) shared: Arc<Shared>,
    /// Which of `State::committed` is this reader's.
    pub(super) index: usize,
    /// Where the next read starts (None: at the committed position).
    pub(super) position: Option<Position>,
    pub(super) file: Option<(u64, io::BufReader<File>)>,
    pub(super) cursor: Cursor,
}

impl SpoolReader {
    fn start(&self) -> Position {
        self.position
            .unwrap_or_else(|| self.shared.lock().committed[self.index])
    }

    /// Forgets what was read since the last commit: the next read starts at the committed
    /// position again (a batch that could not be committed).
    pub fn rewind(&mut self) {
        self.position = None;
        self.file = None;
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
    #[cfg(test)]
    pub fn read(
        &mut self,
        max_records: usize,
        max_lines: usize,
    ) -> io::Result<(Vec<Record>, Position)> {
        self.read_within(max_records, max_lines, usize::MAX)
    }

    /// [`SpoolReader::read`] for a batch: whole records (at least one if any is synced) until
    /// `max_lines` readings or `max_bytes` of line protocol are gathered.
    pub fn read_batch(
        &mut self,
        max_lines: usize,
        max_bytes: usize,
    ) -> io::Result<(Vec<Record>, Position)> {
        self.read_within(usize::MAX, max_lines, max_bytes)
    }

    fn read_within(
        &mut self,
        max_records: usize,
        max_lines: usize,
        max_bytes: usize,
    ) -> io::Result<(Vec<Record>, Position)> {
        let mut out = Vec::new();
        let mut pos = self.start();
        let mut lines = 0usize;
        let mut bytes = 0usize;
        while out.len() < max_records && lines < max_lines && bytes < max_bytes {
            let (synced, seg_len, next_seg, skip) = {
                let s = self.shared.lock();
                let skip = s.skips.get(&pos).copied();
                let len = s.segments.get(&pos.segment).copied();
                let next = s
                    .segments
                    .range(pos.segment + 1..)
                    .next()
                    .map(|(id, _)| *id);
                (s.synced, len, next, skip)
            };
            if let Some(end) = skip {
                // A quarantined range: the records after it are read, not it.
                pos.offset = end;
                self.file = None;
                continue;
            }
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
                    bytes += record.lines.len();
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
    /// On error nothing is committed (the cursor write comes first).
    pub fn commit(&mut self, upto: Position) -> io::Result<()> {
        self.cursor.write(upto)?;
        let doomed: Vec<u64> = {
            let mut s = self.shared.lock();
            s.committed[self.index] = upto;
            // Only what every reader passed is deleted.
            let low = s.low();
            while s.sync_times.front().is_some_and(|(p, _)| *p <= low) {
                s.sync_times.pop_front();
            }
            let doomed: Vec<u64> = s.segments.range(..low.segment).map(|(id, _)| *id).collect();
            for id in &doomed {
                s.segments.remove(id);
            }
            s.skips.retain(|p, _| p.segment >= low.segment);
            doomed
        };
        if !doomed.is_empty() {
            for id in doomed {
                if let Err(e) = fs::remove_file(segment_path(&self.dir, id)) {
                    warn!(segment = id, error = %e, "spool: cannot delete a delivered segment");
                }
            }
            // The deletions must survive a power cut too, or they come back as duplicates.
            if let Err(e) = sync_dir(&self.dir) {
                warn!(error = %e, "spool: cannot fsync the spool folder after deleting segments");
            }
        }
        self.shared.freed.notify_one();
        Ok(())
    }

    /// Bytes the slowest reader has not committed: what the spool keeps (the spool gauges).
    pub fn spool_pending_bytes(&self) -> u64 {
        self.shared.pending_bytes()
    }

    /// Age of the oldest reading some reader has not committed.
    pub fn spool_oldest_age(&self) -> std::time::Duration {
        self.shared.oldest_pending_age()
    }

    /// Bytes this reader has not committed, approximately (for logs and tests).
    pub fn pending_bytes(&self) -> u64 {
        let s = self.shared.lock();
        s.bytes_after(s.committed[self.index])
    }

    /// How long the oldest reading not yet in this reader's store has waited (zero when none).
    pub fn oldest_pending_age(&self) -> std::time::Duration {
        let s = self.shared.lock();
        s.age_after(s.committed[self.index])
    }
}
