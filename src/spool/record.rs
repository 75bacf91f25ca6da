//! Records on disk and their recovery: the encoding (`len: u32 LE | crc32: u32 LE | body`), and
//! the scan that opening a segment runs: a torn tail of the last write is cut, a corrupt record
//! elsewhere is searched past and its bytes are moved aside into `spool/quarantine/`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use tracing::warn;

use super::cursor::sync_dir;
use super::log::{segment_path, HEADER, MAX_RECORD, QUARANTINE_DIR};
use crate::model::Record;

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

pub(super) fn decode_body(body: &[u8]) -> Option<Record> {
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
pub(super) fn read_record(r: &mut impl Read) -> io::Result<Option<(Record, u64)>> {
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

/// The length of the whole, valid record at `at` in `data`, if one starts there.
pub(super) fn record_at(data: &[u8], at: usize) -> Option<u64> {
    let header = data.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?);
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let body = data.get(at + HEADER..at + HEADER + len as usize)?;
    (crc32fast::hash(body) == crc && decode_body(body).is_some())
        .then_some(HEADER as u64 + u64::from(len))
}

/// A corrupt byte range of a segment, moved aside into `spool/quarantine/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub segment: u64,
    pub offset: u64,
    pub bytes: u64,
    pub file: PathBuf,
}

/// What scanning one segment found.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// The segment's length once a torn tail is cut.
    pub(super) len: u64,
    /// Bytes cut from the tail.
    pub(super) cut: u64,
    /// Corrupt ranges with whole records after them: (start, end).
    pub(super) bad: Vec<(u64, u64)>,
    /// Offset asked about -> the start of the record (or bad range) holding it.
    pub(super) floors: BTreeMap<u64, u64>,
}

/// Scans a segment record by record. A corrupt record is searched past (the next offset where a
/// length and checksum validate); when nothing valid follows it is a torn tail and is cut, as
/// only the last write can be torn. `inside`: an offset whose record start is wanted.
pub(super) fn scan_segment(path: &Path, inside: &[u64]) -> io::Result<Scan> {
    let data = fs::read(path)?;
    let size = data.len();
    let mut scan = Scan::default();
    let mut at = 0usize;
    let holds = |start: usize, end: usize, floors: &mut BTreeMap<u64, u64>| {
        for &i in inside {
            if start as u64 <= i && i < end as u64 {
                floors.insert(i, start as u64);
            }
        }
    };
    while at < size {
        if let Some(n) = record_at(&data, at) {
            holds(at, at + n as usize, &mut scan.floors);
            at += n as usize;
            continue;
        }
        match (at + 1..size).find(|&o| record_at(&data, o).is_some()) {
            Some(next) => {
                warn!(segment = %path.display(), offset = at, bytes = next - at,
                    "spool: corrupt record in the middle of a segment; the records after it are kept");
                holds(at, next, &mut scan.floors);
                scan.bad.push((at as u64, next as u64));
                at = next;
            }
            None => {
                warn!(segment = %path.display(), offset = at, bytes = size - at,
                    "spool: torn or corrupt record, truncating the tail");
                break;
            }
        }
    }
    holds(at, usize::MAX, &mut scan.floors);
    scan.len = at as u64;
    scan.cut = (size - at) as u64;
    if scan.cut > 0 {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(scan.len)?;
        file.sync_all()?;
    }
    Ok(scan)
}

/// Copies a corrupt range into `<dir>/quarantine/<segment>-<offset>.bad`, once: a later open
/// that finds the same range leaves the copy as it is and returns None.
pub(super) fn quarantine(
    dir: &Path,
    id: u64,
    (from, to): (u64, u64),
) -> io::Result<Option<Quarantined>> {
    let qdir = dir.join(QUARANTINE_DIR);
    let file = qdir.join(format!("{id:020}-{from:012}.bad"));
    if file.exists() {
        return Ok(None);
    }
    fs::create_dir_all(&qdir)?;
    let data = fs::read(segment_path(dir, id))?;
    let tmp = file.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&data[from as usize..to as usize])?;
    f.sync_all()?;
    fs::rename(&tmp, &file)?;
    sync_dir(&qdir)?;
    sync_dir(dir)?;
    Ok(Some(Quarantined {
        segment: id,
        offset: from,
        bytes: to - from,
        file,
    }))
}
