//! The dead-letter store: every rejected message or reading, as one JSON line under the state
//! folder (time, topic, payload or payload_base64, reason, detail), so it can be read, counted
//! and run again once the rule is fixed.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::model::Reject;

pub const FILE_NAME: &str = "deadletter.jsonl";

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
}

#[derive(Debug)]
pub struct DeadLetters {
    path: PathBuf,
    file: File,
}

impl DeadLetters {
    pub fn open(dir: &Path) -> io::Result<DeadLetters> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(DeadLetters { path, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry and syncs it: a dead letter is a durable outcome, it may release the ack.
    pub fn write(
        &mut self,
        at: DateTime<Utc>,
        topic: &str,
        payload: &[u8],
        reject: &Reject,
    ) -> io::Result<()> {
        self.append(at, topic, payload, reject)?;
        self.sync()
    }

    /// Makes every appended entry durable (group commit with the spool).
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Appends one entry without syncing it; call `sync` before releasing its ack.
    pub fn append(
        &mut self,
        at: DateTime<Utc>,
        topic: &str,
        payload: &[u8],
        reject: &Reject,
    ) -> io::Result<()> {
        let text = std::str::from_utf8(payload).ok();
        let entry = Entry {
            time: at.to_rfc3339_opts(SecondsFormat::Millis, true),
            topic,
            payload: text,
            payload_base64: match text {
                Some(_) => None,
                None => Some(base64::engine::general_purpose::STANDARD.encode(payload)),
            },
            reason: reject.code.as_str(),
            detail: &reject.detail,
        };
        let mut line = serde_json::to_vec(&entry)?;
        line.push(b'\n');
        self.file.write_all(&line)
    }
}
