//! `urbanflux replay`: runs dead letters again through the current rules, after a fix.
//!
//! Each entry of the given dead-letter files is normalised exactly as the daemon would (same
//! [`Normaliser`], the entry's receive time as broker time); accepted readings are written to
//! the store in batches of `batch.max_lines`, what is still rejected is dead-lettered again in
//! the current store (`state.dir`), and a summary counts entries per outcome and reason. Entries
//! refused by the store itself (`store_rejected`) already hold line protocol: they are written
//! again as they are. The input files are not changed: move them away once the replay is done.
//! Rewrites are idempotent (same series and time overwrite), so a replay can be run twice.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;

use crate::deadletter::{self, DeadLetters, Letter};
use crate::lineproto;
use crate::model::{Message, RejectCode};
use crate::normalise::Normaliser;
use crate::retry::Backoff;
use crate::settings::Settings;
use crate::sink::{Sink, SinkError};

/// Attempts of one store write before the replay gives up (the entries stay in their files).
const WRITE_ATTEMPTS: u32 = 5;
/// First wait after a failed write; doubles each time.
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// Longest wait between two attempts.
const RETRY_MAX: Duration = Duration::from_secs(8);

/// What became of the replayed entries.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    /// Entries read from the files (a message dead-lettered once per bad reading runs once).
    pub entries: usize,
    /// Distinct messages run through the rules.
    pub messages: usize,
    /// Messages whose every reading was accepted.
    pub accepted: usize,
    /// Messages of which some readings were accepted and some still rejected.
    pub partly: usize,
    /// Messages still rejected whole.
    pub rejected: usize,
    /// Lines that are not dead letters (skipped, listed in `problems`).
    pub unreadable: usize,
    /// Readings (lines) written to the store.
    pub written: usize,
    /// Rejects again, by reason.
    pub reasons: BTreeMap<String, usize>,
    pub problems: Vec<String>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "replayed {} dead letters:", self.entries)?;
        writeln!(f, "  messages run      {:>8}", self.messages)?;
        writeln!(f, "  accepted          {:>8}", self.accepted)?;
        writeln!(f, "  partly accepted   {:>8}", self.partly)?;
        writeln!(f, "  still rejected    {:>8}", self.rejected)?;
        if self.unreadable > 0 {
            writeln!(f, "  unreadable lines  {:>8}", self.unreadable)?;
        }
        writeln!(f, "  readings written  {:>8}", self.written)?;
        if !self.reasons.is_empty() {
            writeln!(f, "rejected again, by reason:")?;
            for (reason, n) in &self.reasons {
                writeln!(f, "  {reason:<24}{n:>8}")?;
            }
        }
        Ok(())
    }
}

/// Replays `files` into `sink`; `progress` shows a bar on a terminal.
pub(crate) async fn run(
    settings: &Settings,
    files: &[PathBuf],
    sink: &mut dyn Sink,
    dead: &mut DeadLetters,
    progress: bool,
) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    let mut entries = Vec::new();
    for f in files {
        let read = deadletter::read(f)
            .map_err(|e| anyhow::anyhow!("cannot read dead letters from {}: {e}", f.display()))?;
        for r in read {
            match r {
                Ok(e) => entries.push(e),
                Err(why) => {
                    summary.unreadable += 1;
                    summary.problems.push(why);
                }
            }
        }
    }
    summary.entries = entries.len();
    // A message with several bad readings (a GBFS feed) left one entry per reading, each with
    // the whole payload: run it once, or its good readings and its rejects would multiply.
    let mut seen = std::collections::HashSet::new();
    entries.retain(|e| seen.insert((e.time, e.topic.clone(), e.payload.clone())));
    let normaliser = Normaliser::new(settings);
    summary.messages = entries.len();
    let bar = if progress {
        indicatif::ProgressBar::new(entries.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} dead letters  {per_sec}  eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let max_lines = settings.batch.max_lines.get();
    let mut body = String::new();
    let mut lines = 0;
    let now = Utc::now();
    for e in entries {
        bar.inc(1);
        if e.reason == RejectCode::StoreRejected.as_str() {
            // Already line protocol: the store refused it, try it again as it is.
            let text = String::from_utf8_lossy(&e.payload);
            for l in text.lines().filter(|l| !l.trim().is_empty()) {
                body.push_str(l);
                body.push('\n');
                lines += 1;
            }
            summary.accepted += 1;
        } else {
            let msg = Message {
                topic: e.topic.clone(),
                payload: e.payload,
                received_at: e.time,
            };
            let (outcome, rule) = normaliser.normalise_by_rule(&msg, now);
            for r in &outcome.readings {
                lineproto::encode(r, &mut body);
                lines += 1;
            }
            for reject in &outcome.rejects {
                *summary
                    .reasons
                    .entry(reject.code.as_str().to_string())
                    .or_default() += 1;
            }
            dead.append(&Letter {
                city: rule.and_then(|r| r.city.as_deref()),
                source: rule.map(|r| r.source.as_str()),
                ..Letter::new(e.time, &msg.topic, &msg.payload, &outcome.rejects)
            })?;
            dead.sync()?;
            match (outcome.readings.is_empty(), outcome.rejects.is_empty()) {
                (_, true) => summary.accepted += 1,
                (false, false) => summary.partly += 1,
                (true, false) => summary.rejected += 1,
            }
        }
        if lines >= max_lines {
            write(sink, &body).await?;
            summary.written += lines;
            body.clear();
            lines = 0;
        }
    }
    if lines > 0 {
        write(sink, &body).await?;
        summary.written += lines;
    }
    bar.finish_and_clear();
    Ok(summary)
}

async fn write(sink: &mut dyn Sink, body: &str) -> anyhow::Result<()> {
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
    for attempt in 1..=WRITE_ATTEMPTS {
        match sink.write(body.as_bytes()).await {
            Ok(()) => return Ok(()),
            Err(SinkError::Retry { message, after }) if attempt < WRITE_ATTEMPTS => {
                tracing::warn!(error = %message, attempt, "replay: store write failed, will retry");
                tokio::time::sleep(after.unwrap_or_else(|| backoff.next_wait())).await;
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "the store refused a replay batch: {e}; the dead-letter files are unchanged, run the replay again once the store is back"
                ))
            }
        }
    }
    unreachable!("the last attempt returns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Reject;
    use crate::settings::DEFAULT_CONFIG;
    use crate::sink::file::FileSink;

    #[tokio::test]
    async fn a_message_dead_lettered_per_bad_reading_is_replayed_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::from_toml(DEFAULT_CONFIG).unwrap();
        settings.state_dir = dir.path().join("state");
        let feed = r#"{"last_updated":1741963325,"data":{"stations":[
            {"station_id":"a","num_bikes_available":-1,"last_reported":1741963290},
            {"station_id":"b","num_bikes_available":-2,"last_reported":1741963290},
            {"station_id":"c","num_bikes_available":3,"last_reported":1741963290}]}}"#;
        let input = dir.path().join("in.jsonl");
        {
            let mut d = DeadLetters::open(dir.path()).unwrap();
            let r = Reject::new(RejectCode::OutOfRange, "x");
            let received = Utc::now();
            for _ in 0..2 {
                d.append(&Letter::new(
                    received,
                    "sf/baywheels/gbfs/station_status",
                    feed.as_bytes(),
                    std::slice::from_ref(&r),
                ))
                .unwrap();
            }
            d.sync().unwrap();
            std::fs::rename(d.path(), &input).unwrap();
        }
        let mut sink = FileSink::new(dir.path().join("points"));
        let mut dead = DeadLetters::open(&settings.state_dir).unwrap();
        let s = run(&settings, &[input], &mut sink, &mut dead, false)
            .await
            .unwrap();
        assert_eq!(
            (s.entries, s.messages, s.partly, s.written),
            (2, 1, 1, 1),
            "{s}"
        );
        assert_eq!(s.reasons.get("out_of_range"), Some(&2), "{s}");
        // Dead-lettered again as one entry per message, listing both bad stations.
        let path = settings.state_dir.join(deadletter::FILE_NAME);
        assert_eq!(deadletter::read(&path).unwrap().len(), 1);
        let entry: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
        assert_eq!(
            entry["rejects"].as_array().map(Vec::len),
            Some(2),
            "{entry}"
        );
    }
}
