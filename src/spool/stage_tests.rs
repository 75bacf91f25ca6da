//! The spool stage under paused time: acks leave only after the group's fsync, in arrival
//! order; a full spool holds them until the batch stage commits.

use crate::spool::small_disk::SmallDisk;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::run;
use crate::ack::{Ack, AckToken, Acker};
use crate::deadletter::{self, DeadLetters};
use crate::model::{Message, Normalised, Record, Reject, RejectCode};
use crate::settings::SpoolSettings;
use crate::spool::{open, SpoolConfig, SpoolReader};
use crate::telemetry::Telemetry;

/// Records the packet ids it is asked to acknowledge.
#[derive(Default)]
struct Recorder(Mutex<Vec<u16>>);

impl Acker for Recorder {
    fn ack(&self, token: AckToken) {
        self.0.lock().unwrap().push(token.pkid);
    }
}

struct Rig {
    _dir: Option<tempfile::TempDir>,
    state: std::path::PathBuf,
    input: mpsc::Sender<Normalised>,
    reader: SpoolReader,
    acks: Arc<Recorder>,
    telemetry: Arc<Telemetry>,
    stage: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn settings(max_bytes: u64) -> SpoolSettings {
    SpoolSettings {
        max_bytes,
        segment_bytes: max_bytes / 2,
        sync_interval: Duration::from_millis(20),
        sync_bytes: 1 << 20,
    }
}

fn rig(settings: SpoolSettings, max_inflight: usize) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_path_buf();
    Rig {
        _dir: Some(dir),
        ..rig_at(state, settings, max_inflight)
    }
}

/// The stage with its spool and dead letters under `state`.
fn rig_at(state: std::path::PathBuf, settings: SpoolSettings, max_inflight: usize) -> Rig {
    let (writer, reader, _) = open(SpoolConfig {
        dir: state.join("spool"),
        max_bytes: settings.max_bytes,
        segment_bytes: settings.segment_bytes,
    })
    .unwrap();
    let dead = Arc::new(Mutex::new(DeadLetters::open(&state).unwrap()));
    let (input, rx) = mpsc::channel(64);
    let telemetry = Arc::new(Telemetry::default());
    let stage = tokio::spawn(run(
        rx,
        writer,
        dead,
        settings,
        max_inflight,
        telemetry.clone(),
        CancellationToken::new(),
    ));
    Rig {
        _dir: None,
        state,
        input,
        reader,
        acks: Arc::default(),
        telemetry,
        stage,
    }
}

impl Rig {
    fn message(&self, pkid: u16, lines: usize, reject: Option<Reject>) -> Normalised {
        let topic = format!("sf/dpw/bins/{pkid}");
        Normalised {
            message: Message {
                topic: topic.clone(),
                payload: b"{}".to_vec(),
                received_at: Utc::now(),
            },
            record: (lines > 0).then(|| Record {
                topic,
                readings: lines as u32,
                lines: format!("waste_container,sensor_id=dpw-{pkid} fill_ratio=0.5 1\n")
                    .repeat(lines),
            }),
            rejects: reject.into_iter().collect(),
            city: Some("sf".into()),
            source: Some("vendor_webhook".into()),
            queued: None,
            ack: Ack::new(
                AckToken {
                    pkid,
                    qos: 1,
                    generation: 0,
                },
                self.acks.clone(),
            ),
        }
    }

    fn acked(&self) -> Vec<u16> {
        self.acks.0.lock().unwrap().clone()
    }
}

/// Lets the stage run everything it can without moving the clock. The fsyncs run on blocking
/// threads, in real time: a few real milliseconds let them finish.
async fn settle() {
    for _ in 0..20 {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// [`settle`] until `done` holds, for at most 5 real seconds (a slow disk's fsync).
async fn settle_until(mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !done() && std::time::Instant::now() < deadline {
        settle().await;
    }
}

#[tokio::test(start_paused = true)]
async fn acks_wait_for_the_group_fsync_and_leave_in_arrival_order() {
    let mut rig = rig(settings(1 << 20), 100);
    for pkid in [7, 3, 9] {
        rig.input.send(rig.message(pkid, 2, None)).await.unwrap();
    }
    settle().await;
    assert!(
        rig.acked().is_empty(),
        "nothing is acknowledged before the fsync"
    );
    assert!(rig.reader.caught_up(), "the reader sees nothing unsynced");
    tokio::time::sleep(Duration::from_millis(21)).await;
    settle().await;
    assert_eq!(rig.acked(), vec![7, 3, 9]);
    let (records, _) = rig.reader.read(usize::MAX, usize::MAX).unwrap();
    assert_eq!(records.iter().map(|r| r.readings).sum::<u32>(), 6);
    drop(rig.input);
    rig.stage.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_full_inflight_window_commits_at_once_without_waiting_for_the_timer() {
    let rig = rig(settings(1 << 20), 2);
    rig.input.send(rig.message(1, 1, None)).await.unwrap();
    rig.input.send(rig.message(2, 1, None)).await.unwrap();
    let started = tokio::time::Instant::now();
    settle_until(|| rig.acked().len() == 2).await;
    assert_eq!(rig.acked(), vec![1, 2]);
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "the timer was not waited for"
    );
}

/// A window of 4: the group commit starts at 2, and the next messages are appended while its
/// fsync runs; every ack leaves once, in order, after its own group's fsync.
#[tokio::test(start_paused = true)]
async fn groups_are_appended_while_the_last_one_is_synced_and_acked_in_order() {
    let mut rig = rig(settings(1 << 20), 4);
    for pkid in 1..=9 {
        rig.input.send(rig.message(pkid, 1, None)).await.unwrap();
    }
    // How the nine fall into groups depends on how long each fsync takes; a last group below
    // the due size waits for the timer.
    for _ in 0..3 {
        settle_until(|| rig.acked().len() == 9).await;
        tokio::time::sleep(Duration::from_millis(21)).await;
    }
    assert_eq!(rig.acked(), (1..=9).collect::<Vec<u16>>());
    let (records, _) = rig.reader.read(usize::MAX, usize::MAX).unwrap();
    assert_eq!(records.len(), 9);
}

#[tokio::test(start_paused = true)]
async fn a_rejected_message_is_dead_lettered_durably_before_its_ack() {
    let rig = rig(settings(1 << 20), 100);
    let reject = Reject::new(RejectCode::OutOfRange, "field fill_ratio: 1.7 is above 1");
    rig.input
        .send(rig.message(4, 0, Some(reject)))
        .await
        .unwrap();
    settle().await;
    assert!(rig.acked().is_empty());
    tokio::time::sleep(Duration::from_millis(21)).await;
    settle().await;
    assert_eq!(rig.acked(), vec![4]);
    let letters = deadletter::read(&rig.state.join(deadletter::FILE_NAME)).unwrap();
    assert_eq!(letters.len(), 1);
    let letter = letters[0].as_ref().unwrap();
    assert_eq!(
        (letter.reason.as_str(), letter.topic.as_str()),
        ("out_of_range", "sf/dpw/bins/4")
    );
    assert_eq!(
        rig.telemetry
            .snapshot()
            .rejected
            .get(&("sf", RejectCode::OutOfRange)),
        Some(&1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_spool_holds_the_acks_until_the_batch_stage_commits() {
    // Each record is about 1.2 KB: the 4 KiB spool takes three, the fourth waits for room.
    let mut rig = rig(settings(4096), 100);
    for pkid in 1..=5 {
        rig.input.send(rig.message(pkid, 20, None)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    settle().await;
    let held = rig.acked();
    assert!(!held.is_empty() && held.len() < 5, "acked {held:?}");
    assert!(rig
        .telemetry
        .health
        .not_ready_reasons()
        .contains(&"spool full"));
    // The store took everything so far: the batch stage commits, room returns.
    for _ in 0..5 {
        if rig.acked().len() == 5 {
            break;
        }
        let (_, upto) = rig.reader.read(usize::MAX, usize::MAX).unwrap();
        rig.reader.commit(upto).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        settle().await;
    }
    assert_eq!(rig.acked(), vec![1, 2, 3, 4, 5]);
    assert!(!rig
        .telemetry
        .health
        .not_ready_reasons()
        .contains(&"spool full"));
}

#[tokio::test(start_paused = true)]
async fn a_full_disk_holds_the_acks_keeps_the_stage_alive_and_resumes_once_space_returns() {
    let disk = SmallDisk::mount("128k");
    let mut rig = rig_at(disk.0.path().to_path_buf(), settings(1 << 30), 16);
    // About 1.2 KB each: 200 of them do not fit in 128 KiB.
    let messages: Vec<Normalised> = (1..=200).map(|p| rig.message(p, 20, None)).collect();
    let input = rig.input.clone();
    let feeder = tokio::spawn(async move {
        for m in messages {
            input.send(m).await.unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    settle().await;
    let held = rig.acked();
    assert!(held.len() < 200, "acked all {} on a full disk", held.len());
    assert!(rig
        .telemetry
        .health
        .not_ready_reasons()
        .contains(&"disk full"));
    assert!(!rig.stage.is_finished(), "a full disk stopped the stage");
    // The store takes what is spooled: delivered segments go, space returns, intake resumes.
    let mut delivered = 0u32;
    for _ in 0..200 {
        if rig.acked().len() == 200 {
            break;
        }
        let (records, upto) = rig.reader.read(usize::MAX, usize::MAX).unwrap();
        delivered += records.iter().map(|r| r.readings).sum::<u32>();
        rig.reader.commit(upto).unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        settle().await;
    }
    feeder.await.unwrap();
    assert_eq!(
        rig.acked(),
        (1..=200).collect::<Vec<u16>>(),
        "all, in order"
    );
    let (rest, _) = rig.reader.read(usize::MAX, usize::MAX).unwrap();
    delivered += rest.iter().map(|r| r.readings).sum::<u32>();
    assert!(delivered >= 200 * 20, "{delivered} readings delivered");
    assert!(!rig
        .telemetry
        .health
        .not_ready_reasons()
        .contains(&"disk full"));
}
