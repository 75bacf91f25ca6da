//! Devices that go silent: when each device (its `sensor_id`) was last heard from, how often it
//! is expected to report, and whether it is silent (no reading for [`SILENT_AFTER`] times that
//! interval). Owns the table and its rules; the normalise stage feeds it, [`run`] judges it on
//! a timer and saves it (`file`), the ops endpoint and `urbanflux devices` show it.
//!
//! The hot path only updates a last-seen entry: one lock per message, no allocation for a
//! device already known. Memory is bounded by `devices.max_tracked`; beyond it new devices are
//! not tracked, and counted. Last seen is the broker receive time as urbanflux saw it: silence
//! is about a device's messages reaching us, whatever the time the payload claims.

mod events;
pub(crate) mod file;
mod report;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::model::Reading;
use crate::schema::{CITIES, DOMAINS};
use crate::settings::DevicesSettings;
use crate::telemetry::Telemetry;

pub use report::report;

/// A device is silent after this many expected intervals without a reading: one late or lost
/// message is not an outage.
pub(crate) const SILENT_AFTER: u32 = 3;

/// Reporting or silent: the `state` label of `urbanflux_devices` and of `/devices`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    Reporting,
    Silent,
}

impl State {
    pub const ALL: [State; 2] = [State::Reporting, State::Silent];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Reporting => "reporting",
            State::Silent => "silent",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// One device as the endpoint, the command and the state file show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub sensor_id: String,
    pub city: &'static str,
    pub domain: &'static str,
    /// Milliseconds since the epoch, UTC.
    pub last_seen_ms: i64,
    pub expect_every: Option<Duration>,
    pub state: State,
}

impl Device {
    pub fn last_seen(&self) -> String {
        chrono::DateTime::<Utc>::from_timestamp_millis(self.last_seen_ms)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
            .unwrap_or_default()
    }

    /// True when, at `now_ms`, nothing was heard for longer than [`SILENT_AFTER`] intervals
    /// counted from `since_ms`.
    fn overdue(since_ms: i64, expect: Option<Duration>, now_ms: i64) -> bool {
        expect.is_some_and(|e| {
            now_ms.saturating_sub(since_ms) as i128 > (e * SILENT_AFTER).as_millis() as i128
        })
    }
}

/// What the table keeps per device, 24 bytes (the key is the sensor id): city and domain as
/// their index in the closed sets, the interval in milliseconds (0: none).
#[derive(Debug, Clone, Copy)]
struct Entry {
    last_seen_ms: i64,
    expect_ms: u64,
    city: u8,
    domain: u8,
    silent: bool,
}

impl Entry {
    fn expect(&self) -> Option<Duration> {
        (self.expect_ms > 0).then(|| Duration::from_millis(self.expect_ms))
    }
}

fn expect_ms(d: Option<Duration>) -> u64 {
    // At least 1 ms, so that an interval is never read back as none.
    d.map_or(0, |d| (d.as_millis() as u64).max(1))
}

#[derive(Debug, Default)]
struct Table {
    /// foldhash: looked up once per reading (SipHash was a visible share of the CPU).
    devices: HashMap<String, Entry, foldhash::fast::RandomState>,
    /// Something to save since the last save.
    changed: bool,
    /// The limit was reached once (it is logged once).
    full: bool,
}

/// Readings of devices that were not tracked because the table is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Untracked {
    pub readings: u64,
    /// The first time the limit was hit in this process.
    pub first: bool,
}

/// What one evaluation found: the transitions and the devices per city, domain and state.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Evaluation {
    pub went_silent: Vec<Device>,
    pub recovered: Vec<Device>,
    /// Every (city, domain, state) of the closed sets, 0 included.
    pub counts: BTreeMap<(&'static str, &'static str, State), u64>,
    /// Devices dropped: not heard from for `devices.forget_after`.
    pub forgotten: usize,
}

/// The last-seen table, shared by the normalise stage, the evaluation task and the endpoint.
#[derive(Debug)]
pub(crate) struct Tracker {
    table: Mutex<Table>,
    max_tracked: usize,
    /// Process start: a device not yet silent gets its intervals counted from here at the
    /// earliest, as nothing could be heard while the daemon was down.
    started_ms: i64,
    /// Devices not heard from for this long are dropped; `None`: never.
    forget_after: Option<Duration>,
}

/// A label value of a closed set, or "other" (never for a reading that normalise accepted).
fn closed(value: &str, set: &[&'static str]) -> &'static str {
    label(slot(value, set), set)
}

/// The index of `value` in `set`; `set.len()` for "other".
fn slot(value: &str, set: &[&'static str]) -> u8 {
    set.iter().position(|s| *s == value).unwrap_or(set.len()) as u8
}

fn label(slot: u8, set: &[&'static str]) -> &'static str {
    set.get(usize::from(slot)).copied().unwrap_or("other")
}

impl Tracker {
    pub(crate) fn new(max_tracked: usize, started_ms: i64, known: Vec<Device>) -> Tracker {
        let mut devices = HashMap::with_capacity_and_hasher(
            known.len().min(max_tracked),
            foldhash::fast::RandomState::default(),
        );
        for d in known.into_iter().take(max_tracked) {
            devices.insert(
                d.sensor_id,
                Entry {
                    last_seen_ms: d.last_seen_ms,
                    expect_ms: expect_ms(d.expect_every),
                    city: slot(d.city, CITIES),
                    domain: slot(d.domain, DOMAINS),
                    silent: d.state == State::Silent,
                },
            );
        }
        Tracker {
            table: Mutex::new(Table {
                devices,
                ..Table::default()
            }),
            max_tracked,
            started_ms,
            forget_after: None,
        }
    }

    /// Drops devices not heard from for `after` at each evaluation.
    pub(crate) fn forgetting_after(mut self, after: Duration) -> Tracker {
        self.forget_after = Some(after);
        self
    }

    pub(crate) fn max_tracked(&self) -> usize {
        self.max_tracked
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic elsewhere leaves a table that is still consistent (entries are Copy).
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One message's readings heard at `at_ms`; `expected` is aligned with `readings`.
    pub(crate) fn seen(
        &self,
        readings: &[Reading],
        expected: &[Option<Duration>],
        at_ms: i64,
    ) -> Untracked {
        let mut untracked = Untracked::default();
        let mut table = self.lock();
        for (i, r) in readings.iter().enumerate() {
            let Some(sensor) = r.tag("sensor_id") else {
                continue;
            };
            let city = slot(r.tag("city").unwrap_or_default(), CITIES);
            let domain = slot(r.tag("domain").unwrap_or_default(), DOMAINS);
            let expect = expect_ms(expected.get(i).copied().flatten());
            table.changed = true;
            if let Some(e) = table.devices.get_mut(sensor) {
                e.last_seen_ms = e.last_seen_ms.max(at_ms);
                e.city = city;
                e.domain = domain;
                e.expect_ms = expect;
                continue;
            }
            if table.devices.len() >= self.max_tracked {
                untracked.readings += 1;
                untracked.first |= !table.full;
                table.full = true;
                continue;
            }
            table.devices.insert(
                sensor.to_string(),
                Entry {
                    last_seen_ms: at_ms,
                    expect_ms: expect,
                    city,
                    domain,
                    silent: false,
                },
            );
        }
        untracked
    }

    /// Judges every device at `now_ms`: silent after [`SILENT_AFTER`] intervals without a
    /// reading, reporting again once a reading came.
    pub(crate) fn evaluate(&self, now_ms: i64) -> Evaluation {
        let mut out = Evaluation::default();
        for city in CITIES {
            for domain in DOMAINS {
                for state in State::ALL {
                    out.counts.insert((city, domain, state), 0);
                }
            }
        }
        let mut table = self.lock();
        if let Some(after) = self.forget_after {
            let before = table.devices.len();
            let cutoff = now_ms.saturating_sub(after.as_millis() as i64);
            table.devices.retain(|_, e| e.last_seen_ms >= cutoff);
            out.forgotten = before - table.devices.len();
        }
        let mut changed = out.forgotten > 0;
        for (id, e) in table.devices.iter_mut() {
            let since = if e.silent {
                e.last_seen_ms
            } else {
                e.last_seen_ms.max(self.started_ms)
            };
            let silent = Device::overdue(since, e.expect(), now_ms);
            if silent != e.silent {
                e.silent = silent;
                changed = true;
                let d = device(id.clone(), e);
                if silent {
                    out.went_silent.push(d);
                } else {
                    out.recovered.push(d);
                }
            }
            let state = if e.silent {
                State::Silent
            } else {
                State::Reporting
            };
            let key = (label(e.city, CITIES), label(e.domain, DOMAINS), state);
            *out.counts.entry(key).or_default() += 1;
        }
        table.changed |= changed;
        out
    }

    /// Every tracked device, by sensor id. Only the copy is made under the lock.
    pub(crate) fn devices(&self) -> Vec<Device> {
        let copied: Vec<(String, Entry)> = {
            let table = self.lock();
            table
                .devices
                .iter()
                .map(|(id, e)| (id.clone(), *e))
                .collect()
        };
        let mut all: Vec<Device> = copied.into_iter().map(|(id, e)| device(id, &e)).collect();
        all.sort_by(|a, b| a.sensor_id.cmp(&b.sensor_id));
        all
    }

    /// True (and cleared) when something changed since the last call.
    fn take_changed(&self) -> bool {
        std::mem::take(&mut self.lock().changed)
    }

    fn mark_changed(&self) {
        self.lock().changed = true;
    }
}

fn device(sensor_id: String, e: &Entry) -> Device {
    Device {
        sensor_id,
        city: label(e.city, CITIES),
        domain: label(e.domain, DOMAINS),
        last_seen_ms: e.last_seen_ms,
        expect_every: e.expect(),
        state: if e.silent {
            State::Silent
        } else {
            State::Reporting
        },
    }
}

/// Opens the tracker with what `<state.dir>/devices.json` holds (nothing when it is missing or
/// unreadable; the next save replaces it).
pub(crate) fn open(
    settings: &DevicesSettings,
    dir: &std::path::Path,
    telemetry: &Telemetry,
) -> Tracker {
    let path = dir.join(file::STATE_FILE);
    let known = match file::load(&path) {
        Ok(Some(saved)) => {
            telemetry.devices_loaded(&path, saved.devices.len());
            saved.devices
        }
        Ok(None) => Vec::new(),
        Err(e) => {
            telemetry.devices_state_unreadable(&path, &e);
            Vec::new()
        }
    };
    Tracker::new(settings.max_tracked.get(), now_ms(), known)
        .forgetting_after(settings.forget_after)
}

pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Judges the devices every `devices.evaluate_every` and saves the table every
/// `devices.save_every` when it changed, until `stop`; then saves a last time.
pub(crate) async fn run(
    tracker: Arc<Tracker>,
    settings: DevicesSettings,
    dir: PathBuf,
    telemetry: Arc<Telemetry>,
    stop: CancellationToken,
) {
    let path = dir.join(file::STATE_FILE);
    let mut evaluate = tokio::time::interval(settings.evaluate_every);
    evaluate.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut save = tokio::time::interval(settings.save_every);
    save.set_missed_tick_behavior(MissedTickBehavior::Delay);
    save.tick().await;
    loop {
        tokio::select! {
            // The pipeline has drained: the last readings are in the table.
            _ = stop.cancelled() => break,
            // Time to judge the devices.
            _ = evaluate.tick() => telemetry.devices_evaluated(&tracker.evaluate(now_ms())),
            // Time to save, if anything changed.
            _ = save.tick() => save_changed(&tracker, &path, &telemetry).await,
        }
    }
    telemetry.devices_evaluated(&tracker.evaluate(now_ms()));
    save_changed(&tracker, &path, &telemetry).await;
}

async fn save_changed(tracker: &Arc<Tracker>, path: &std::path::Path, telemetry: &Telemetry) {
    if !tracker.take_changed() {
        return;
    }
    let devices = tracker.devices();
    let target = path.to_path_buf();
    let saved = tokio::task::spawn_blocking(move || file::save(&target, &devices))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    if let Err(e) = saved {
        tracker.mark_changed();
        telemetry.devices_not_saved(path, &e);
    }
}

/// The table `urbanflux devices` prints, silent devices first.
pub fn table(devices: &[Device]) -> String {
    let mut rows: Vec<[String; 6]> = vec![[
        "SENSOR_ID".into(),
        "CITY".into(),
        "DOMAIN".into(),
        "STATE".into(),
        "LAST_SEEN".into(),
        "EXPECT_EVERY".into(),
    ]];
    let mut sorted: Vec<&Device> = devices.iter().collect();
    sorted.sort_by(|a, b| (b.state, &a.sensor_id).cmp(&(a.state, &b.sensor_id)));
    for d in sorted {
        rows.push([
            d.sensor_id.clone(),
            d.city.into(),
            d.domain.into(),
            d.state.as_str().into(),
            d.last_seen(),
            d.expect_every
                .map(|e| humantime::format_duration(e).to_string())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let silent = devices.iter().filter(|d| d.state == State::Silent).count();
    out.push_str(&format!("{} devices, {silent} silent\n", devices.len()));
    out
}

#[cfg(test)]
#[cfg(test)]
mod tests;
