//! The dead-letter store: every rejected message or reading, as one JSON line under the state
//! folder (time, topic, payload or payload_base64, reason, detail, and city and source when
//! known), so it can be read, counted and run again (`urbanflux replay`) once the rule is fixed.
//!
//! Bounded: when `deadletter.jsonl` would grow past [`MAX_FILE_BYTES`] it is rotated to
//! `deadletter.1.jsonl` (the older ones shift up to `deadletter.<KEEP_FILES>.jsonl`, the oldest
//! is deleted), so a flood of bad messages costs at most `(KEEP_FILES + 1) * MAX_FILE_BYTES` of
//! disk. Counted per city, source and reason by telemetry, not here.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::model::Reject;

pub const FILE_NAME: &str = "deadletter.jsonl";
/// One dead-letter file holds at most this much: a few hundred thousand typical messages, small
/// enough to open in an editor and replay in one go.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Rotated files kept besides the current one: with the default size, 384 MiB of disk at most.
pub const KEEP_FILES: usize = 5;

/// Rejects listed one by one in an entry; past this, the entry says how many more there were.
const MAX_LISTED: usize = 100;

/// One rejected message, as the caller hands it in: one entry per message whatever the number of
/// its refused readings, so a feed of 87,000 bad stations writes its payload once, not 87,000
/// times.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Letter<'a> {
    pub at: DateTime<Utc>,
    pub topic: &'a str,
    pub payload: &'a [u8],
    /// At least one; the first is the entry's `reason` and `detail`.
    pub rejects: &'a [Reject],
    /// The city and source it is counted under, when known.
    pub city: Option<&'a str>,
    pub source: Option<&'a str>,
}

impl<'a> Letter<'a> {
    pub(crate) fn new(
        at: DateTime<Utc>,
        topic: &'a str,
        payload: &'a [u8],
        rejects: &'a [Reject],
    ) -> Self {
        Letter {
            at,
            topic,
            payload,
            rejects,
            city: None,
            source: None,
        }
    }
}

#[derive(Debug, Serialize)]
struct Entry<'a> {
    time: String,
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    reason: &'static str,
    detail: &'a str,
    /// Every reject when there is more than one (the first `MAX_LISTED`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rejects: Vec<Listed<'a>>,
    #[serde(skip_serializing_if = "is_zero")]
    more_rejects: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    city: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Listed<'a> {
    reason: &'static str,
    detail: &'a str,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// How large the store may grow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_file_bytes: u64,
    pub keep_files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: MAX_FILE_BYTES,
            keep_files: KEEP_FILES,
        }
    }
}

#[derive(Debug)]
pub struct DeadLetters {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    size: u64,
    /// Bytes of the current file known durable (the last successful sync).
    synced: u64,
    /// Counts the files `file` has been (rotation, cut back), for [`DeadLetters::sync_done`].
    generation: u64,
    limits: Limits,
}

/// An fsync of the dead letters, handed out to run off the runtime's thread.
#[derive(Debug)]
pub(crate) struct PendingSync {
    pub(crate) file: File,
    upto: u64,
    generation: u64,
}

impl DeadLetters {
    pub fn open(dir: &Path) -> io::Result<DeadLetters> {
        Self::open_with(dir, Limits::default())
    }

    pub fn open_with(dir: &Path, limits: Limits) -> io::Result<DeadLetters> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(DeadLetters {
            dir: dir.to_path_buf(),
            path,
            file,
            size,
            synced: size,
            generation: 0,
            limits,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry, not yet durable: call [`DeadLetters::sync`] before releasing anything
    /// that depends on it (an ack, a spool commit). The one way into the store.
    pub(crate) fn append(&mut self, letter: &Letter) -> io::Result<()> {
        let Some(first) = letter.rejects.first() else {
            return Ok(());
        };
        let listed = if letter.rejects.len() > 1 {
            letter
                .rejects
                .iter()
                .take(MAX_LISTED)
                .map(|r| Listed {
                    reason: r.code.as_str(),
                    detail: &r.detail,
                })
                .collect()
        } else {
            Vec::new()
        };
        let text = std::str::from_utf8(letter.payload).ok();
        let entry = Entry {
            time: letter.at.to_rfc3339_opts(SecondsFormat::Millis, true),
            topic: letter.topic,
            payload: text,
            payload_base64: match text {
                Some(_) => None,
                None => Some(base64::engine::general_purpose::STANDARD.encode(letter.payload)),
            },
            reason: first.code.as_str(),
            detail: &first.detail,
            rejects: listed,
            more_rejects: letter.rejects.len().saturating_sub(MAX_LISTED),
            city: letter.city,
            source: letter.source,
        };
        let mut line = serde_json::to_vec(&entry)?;
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.limits.max_file_bytes {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Makes every appended entry durable (group commit with the spool).
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.synced = self.size;
        Ok(())
    }

    /// What an fsync off the runtime's thread needs: a handle on the file and what it will
    /// cover; [`DeadLetters::sync_done`] takes that back once the fsync succeeded.
    pub(crate) fn sync_start(&self) -> io::Result<PendingSync> {
        Ok(PendingSync {
            file: self.file.try_clone()?,
            upto: self.size,
            generation: self.generation,
        })
    }

    /// The fsync of `pending` succeeded. Entries appended since are not covered by it, and a
    /// file replaced since (rotation, cut back) was synced on its own.
    pub(crate) fn sync_done(&mut self, pending: &PendingSync) {
        if pending.generation == self.generation {
            self.synced = self.synced.max(pending.upto);
        }
    }

    /// After a failed write or sync (a full disk): what was appended since the last sync is not
    /// durable and the file's state is unknown (fsyncgate). Cut it back to the synced length on a
    /// fresh handle; the caller appends those entries again once space returns.
    pub(crate) fn discard_unsynced(&mut self) -> io::Result<()> {
        let file = OpenOptions::new().append(true).open(&self.path)?;
        if file.metadata()?.is_file() {
            file.set_len(self.synced)?;
        }
        self.file = file;
        self.size = self.synced;
        self.generation += 1;
        Ok(())
    }

    fn rotated(&self, n: usize) -> PathBuf {
        self.dir.join(format!("deadletter.{n}.jsonl"))
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_all()?;
        if self.limits.keep_files == 0 {
            self.file = File::create(&self.path)?;
        } else {
            let _ = std::fs::remove_file(self.rotated(self.limits.keep_files));
            for n in (1..self.limits.keep_files).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        }
        self.size = 0;
        self.synced = 0;
        self.generation += 1;
        // The renames and the new file must survive a power cut with the entries they hold.
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }
}

/// One entry read back from a dead-letter file.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub time: DateTime<Utc>,
    pub topic: String,
    pub payload: Vec<u8>,
    pub reason: String,
    pub detail: String,
}

#[derive(Debug, Deserialize)]
struct RawEntry {
    time: String,
    topic: String,
    payload: Option<String>,
    payload_base64: Option<String>,
    reason: String,
    #[serde(default)]
    detail: String,
}

/// Reads a dead-letter file: one result per non-empty line (a broken line says why).
pub fn read(path: &Path) -> io::Result<Vec<Result<DeadLetter, String>>> {
    let file = File::open(path)?;
    let mut out = Vec::new();
    for (n, line) in io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(parse(&line).map_err(|why| format!("{}:{}: {why}", path.display(), n + 1)));
    }
    Ok(out)
}

fn parse(line: &str) -> Result<DeadLetter, String> {
    let e: RawEntry = serde_json::from_str(line).map_err(|e| format!("not a dead letter: {e}"))?;
    let time = DateTime::parse_from_rfc3339(&e.time)
        .map_err(|err| format!("time {:?}: {err}", e.time))?
        .with_timezone(&Utc);
    let payload = match (e.payload, e.payload_base64) {
        (Some(text), _) => text.into_bytes(),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|err| format!("payload_base64: {err}"))?,
        (None, None) => return Err("neither payload nor payload_base64".into()),
    };
    Ok(DeadLetter {
        time,
        topic: e.topic,
        payload,
        reason: e.reason,
        detail: e.detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RejectCode;

    #[test]
    fn entries_round_trip_text_and_binary_payloads() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DeadLetters::open(dir.path()).unwrap();
        let r = Reject::new(RejectCode::BinaryPayload, "not UTF-8");
        let now = Utc::now();
        d.append(&Letter::new(
            now,
            "a/b",
            &[0xff, 0x00],
            std::slice::from_ref(&r),
        ))
        .unwrap();
        d.append(&Letter {
            city: Some("sf"),
            source: Some("gbfs"),
            ..Letter::new(now, "a/c", b"{}", std::slice::from_ref(&r))
        })
        .unwrap();
        d.sync().unwrap();
        let back = read(d.path()).unwrap();
        assert_eq!(back.len(), 2);
        let first = back[0].as_ref().unwrap();
        assert_eq!(first.payload, vec![0xff, 0x00]);
        assert_eq!(first.reason, "binary_payload");
        assert_eq!(back[1].as_ref().unwrap().payload, b"{}");
        assert!(
            std::fs::read_to_string(d.path())
                .unwrap()
                .contains(r#""city":"sf","source":"gbfs""#),
            "the labels are written with the entry"
        );
    }

    #[test]
    fn the_store_rotates_and_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_file_bytes: 400,
            keep_files: 2,
        };
        let mut d = DeadLetters::open_with(dir.path(), limits).unwrap();
        let r = Reject::new(RejectCode::MalformedJson, "x".repeat(100));
        for i in 0..20 {
            d.append(&Letter::new(
                Utc::now(),
                &format!("t/{i}"),
                b"{",
                std::slice::from_ref(&r),
            ))
            .unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "deadletter.1.jsonl",
                "deadletter.2.jsonl",
                "deadletter.jsonl"
            ]
        );
        for n in &names {
            assert!(
                std::fs::metadata(dir.path().join(n)).unwrap().len() <= 400,
                "{n}"
            );
        }
        // the newest entry is in the current file, the one before it in deadletter.1
        let last = read(d.path()).unwrap();
        assert_eq!(last.last().unwrap().as_ref().unwrap().topic, "t/19");
    }

    #[test]
    fn a_message_with_many_rejects_is_one_entry_with_its_payload_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DeadLetters::open(dir.path()).unwrap();
        let rejects: Vec<Reject> = (0..MAX_LISTED + 5)
            .map(|i| {
                Reject::new(
                    RejectCode::OutOfRange,
                    format!("station s{i}: -1 is below 0"),
                )
            })
            .collect();
        let payload = "x".repeat(1000);
        d.append(&Letter::new(
            Utc::now(),
            "sf/baywheels/gbfs/station_status",
            payload.as_bytes(),
            &rejects,
        ))
        .unwrap();
        d.sync().unwrap();
        let text = std::fs::read_to_string(d.path()).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert_eq!(text.matches(&payload).count(), 1);
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["reason"], "out_of_range");
        assert_eq!(v["rejects"].as_array().unwrap().len(), MAX_LISTED);
        assert_eq!(v["more_rejects"], 5);
        assert_eq!(read(d.path()).unwrap().len(), 1);
    }
}
