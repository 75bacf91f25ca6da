//! `deliver` against a scripted sink, under paused time: every wait is measured exactly.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::sink::{LineError, WriteFuture, PARTIAL_LIST_MAX};

/// Every body a scripted sink was sent, with when it arrived.
type Calls = Arc<Mutex<Vec<(Instant, String)>>>;

/// Answers from a script (then from a rule), and remembers when each body arrived.
struct Scripted {
    answers: VecDeque<Result<(), SinkError>>,
    rule: fn(&str) -> Result<(), SinkError>,
    calls: Calls,
}

impl Scripted {
    fn new(answers: Vec<Result<(), SinkError>>) -> (Scripted, Calls) {
        Self::with_rule(answers, |_| Ok(()))
    }

    fn with_rule(
        answers: Vec<Result<(), SinkError>>,
        rule: fn(&str) -> Result<(), SinkError>,
    ) -> (Scripted, Calls) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let sink = Scripted {
            answers: answers.into(),
            rule,
            calls: calls.clone(),
        };
        (sink, calls)
    }
}

impl Sink for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }

    fn write<'a>(&'a mut self, body: &'a [u8]) -> WriteFuture<'a> {
        let body = String::from_utf8(body.to_vec()).unwrap();
        let answer = self
            .answers
            .pop_front()
            .unwrap_or_else(|| (self.rule)(&body));
        self.calls.lock().unwrap().push((Instant::now(), body));
        Box::pin(async move { answer })
    }
}

fn limits() -> BatchLimits {
    BatchLimits {
        max_lines: 5000,
        max_bytes: 4 << 20,
        max_age: Duration::from_secs(1),
        retry_max: Duration::from_secs(5),
    }
}

fn lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("m,sensor_id=s{i} v={i}i 1"))
        .collect()
}

fn refs(lines: &[String]) -> Vec<(usize, &str)> {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| (i, l.as_str()))
        .collect()
}

/// `deliver` with the default limits and no deadline.
async fn deliver_all(
    sink: &mut Scripted,
    lines: &[String],
    t: &Telemetry,
) -> Result<Vec<RefusedLine>, Abandoned> {
    deliver_with(sink, lines, &limits(), &mut Pace::default(), t).await
}

async fn deliver_with(
    sink: &mut Scripted,
    lines: &[String],
    limits: &BatchLimits,
    pace: &mut Pace,
    t: &Telemetry,
) -> Result<Vec<RefusedLine>, Abandoned> {
    deliver(
        sink,
        &refs(lines),
        limits,
        pace,
        t,
        &CancellationToken::new(),
    )
    .await
}

/// Delivers with the drain deadline falling `after` from now.
async fn deliver_until(
    sink: &mut Scripted,
    lines: &[String],
    t: &Telemetry,
    after: Duration,
) -> Result<Vec<RefusedLine>, Abandoned> {
    let abandon = CancellationToken::new();
    let cancel = abandon.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        cancel.cancel();
    });
    deliver(
        sink,
        &refs(lines),
        &limits(),
        &mut Pace::default(),
        t,
        &abandon,
    )
    .await
}

/// The lines of the bodies the sink took, in the order it took them.
fn lines_taken(calls: &Calls, took: impl Fn(&str) -> bool) -> Vec<String> {
    calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, body)| took(body))
        .flat_map(|(_, body)| body.lines().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

fn retry(after: Option<Duration>) -> Result<(), SinkError> {
    Err(SinkError::Retry {
        message: "store answered 503".into(),
        after,
    })
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_is_waited_exactly_then_the_same_body_is_sent() {
    let (mut sink, calls) = Scripted::new(vec![retry(Some(Duration::from_secs(7)))]);
    let l = lines(3);
    let t = Telemetry::default();
    let refused = deliver_all(&mut sink, &l, &t).await;
    assert_eq!(refused, Ok(vec![]));
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].0 - calls[0].0, Duration::from_secs(7));
    assert_eq!(calls[0].1, calls[1].1);
    assert_eq!(t.snapshot().write_retries, 1);
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_store_is_retried_with_capped_exponential_backoff() {
    let (mut sink, calls) = Scripted::new(vec![retry(None), retry(None), retry(None), retry(None)]);
    let l = lines(2);
    let limits = BatchLimits {
        retry_max: Duration::from_millis(500),
        ..limits()
    };
    let t = Telemetry::default();
    deliver_with(&mut sink, &l, &limits, &mut Pace::default(), &t)
        .await
        .unwrap();
    let calls = calls.lock().unwrap();
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].0 - w[0].0).collect();
    // 200 ms, 400 ms, then the 500 ms cap, each with up to 30 % jitter.
    for (gap, base) in gaps.iter().zip([200u64, 400, 500, 500]) {
        let base = Duration::from_millis(base);
        assert!(*gap >= base && *gap <= base.mul_f64(1.3), "{gaps:?}");
    }
    assert!(
        !t.health
            .not_ready_reasons()
            .contains(&"store unreachable or failing"),
        "the last write succeeded"
    );
}

#[tokio::test(start_paused = true)]
async fn a_400_is_bisected_down_to_the_one_refused_line_and_the_rest_is_written_once_in_order() {
    let (mut sink, calls) = Scripted::with_rule(vec![], |body| {
        if body.contains("sensor_id=s5 ") {
            Err(SinkError::Refused {
                message: "store answered 400: field type conflict".into(),
            })
        } else {
            Ok(())
        }
    });
    let l = lines(8);
    let t = Telemetry::default();
    let refused = deliver_all(&mut sink, &l, &t).await.unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!((refused[0].record, refused[0].line), (5, 5));
    assert!(refused[0].error.to_string().contains("field type conflict"));
    let written = lines_taken(&calls, |b| !b.contains("sensor_id=s5 "));
    let expected: Vec<String> = l.iter().filter(|x| !x.contains("s5 ")).cloned().collect();
    assert_eq!(written, expected);
}

#[tokio::test(start_paused = true)]
async fn a_413_splits_the_batch_until_it_fits_and_nothing_is_refused() {
    let (mut sink, calls) = Scripted::with_rule(vec![], |body| {
        if body.lines().count() > 2 {
            Err(SinkError::TooLarge {
                message: "store answered 413".into(),
            })
        } else {
            Ok(())
        }
    });
    let l = lines(7);
    let t = Telemetry::default();
    let refused = deliver_all(&mut sink, &l, &t).await.unwrap();
    assert!(refused.is_empty());
    let taken = lines_taken(&calls, |b| b.lines().count() <= 2);
    assert_eq!(taken, l);
}

#[tokio::test(start_paused = true)]
async fn refused_credentials_keep_the_data_and_report_not_ready_until_fixed() {
    let auth = || {
        Err(SinkError::Auth {
            message: "store answered 401: unauthorized".into(),
        })
    };
    let (mut sink, calls) = Scripted::new(vec![auth(), auth()]);
    let l = lines(4);
    let t = Telemetry::default();
    let refused = deliver_all(&mut sink, &l, &t).await.unwrap();
    assert!(
        refused.is_empty(),
        "nothing is dead-lettered for a credentials problem"
    );
    assert_eq!(calls.lock().unwrap().len(), 3);
    assert_eq!(t.snapshot().write_retries, 2);
    assert!(!t
        .health
        .not_ready_reasons()
        .contains(&"store refuses credentials, bucket or org"));
}

#[tokio::test(start_paused = true)]
async fn the_drain_deadline_interrupts_a_backoff_and_keeps_the_batch() {
    let (mut sink, calls) = Scripted::with_rule(vec![], |_| retry(None));
    let l = lines(2);
    let t = Telemetry::default();
    let started = Instant::now();
    assert_eq!(
        deliver_until(&mut sink, &l, &t, Duration::from_secs(3)).await,
        Err(Abandoned)
    );
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert!(calls.lock().unwrap().len() >= 3);
    assert!(t
        .health
        .not_ready_reasons()
        .contains(&"store unreachable or failing"));
}

#[tokio::test(start_paused = true)]
async fn a_405_from_a_proxy_keeps_the_data_and_reports_a_configuration_fault() {
    let proxy = || {
        Err(SinkError::Config {
            message: "store answered 405: method not allowed".into(),
        })
    };
    let (mut sink, calls) = Scripted::new(vec![proxy(), proxy()]);
    let l = lines(4);
    let t = Telemetry::default();
    let refused = deliver_all(&mut sink, &l, &t).await.unwrap();
    assert!(refused.is_empty(), "nothing is dead-lettered for a proxy");
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 3, "the whole batch twice more, never bisected");
    assert!(calls.iter().all(|(_, body)| body.lines().count() == 4));
}

#[tokio::test(start_paused = true)]
async fn a_store_that_refuses_every_line_alike_is_a_configuration_fault_not_bad_lines() {
    let refuse = || {
        Err(SinkError::Refused {
            message: "store answered 400: bucket schema refuses writes".into(),
        })
    };
    // Bisecting 20 lines takes 17 writes to refuse the first 8 one by one; then it is fixed.
    let (mut sink, calls) = Scripted::new((0..17).map(|_| refuse()).collect());
    let l = lines(20);
    let t = Telemetry::default();
    let refused = deliver_all(&mut sink, &l, &t).await.unwrap();
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(t.snapshot().write_retries, 1);
    let taken: Vec<String> = {
        let calls = calls.lock().unwrap();
        calls[17..]
            .iter()
            .flat_map(|(_, b)| b.lines().map(str::to_string).collect::<Vec<_>>())
            .collect()
    };
    assert_eq!(taken, l, "once fixed, every line goes in, in order");
}

#[tokio::test(start_paused = true)]
async fn the_configuration_fault_of_a_same_refusal_shows_in_readiness() {
    let (mut sink, _calls) = Scripted::with_rule(vec![], |_| {
        Err(SinkError::Refused {
            message: "store answered 400: no such schema".into(),
        })
    });
    let l = lines(16);
    let t = Telemetry::default();
    let out = deliver_until(&mut sink, &l, &t, Duration::from_secs(30)).await;
    assert_eq!(out, Err(Abandoned), "kept, not dead-lettered");
    assert!(t
        .health
        .not_ready_reasons()
        .contains(&"store or a proxy refuses the requests (configuration)"));
}

#[tokio::test(start_paused = true)]
async fn a_store_that_times_out_large_bodies_still_drains_in_smaller_writes() {
    // A slow store: more than 500 lines do not make it within the timeout.
    let (mut sink, calls) = Scripted::with_rule(vec![], |body| {
        if body.lines().count() > 500 {
            retry(None)
        } else {
            Ok(())
        }
    });
    let l = lines(5000);
    let t = Telemetry::default();
    let mut pace = Pace::default();
    let refused = deliver_with(&mut sink, &l, &limits(), &mut pace, &t)
        .await
        .unwrap();
    assert!(refused.is_empty());
    assert_eq!(lines_taken(&calls, |b| b.lines().count() <= 500), l);
    let failed = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, b)| b.lines().count() > 500)
        .count();
    // 3 at 5,000, 3 at 2,500, 3 at 1,250, 3 at 625, then each regrowth costs 3 more.
    assert!(failed <= 40, "{failed} failed writes for 5,000 lines");
    // The next batch starts at the pace learned, not at 5,000 again.
    let before = calls.lock().unwrap().len();
    deliver_with(&mut sink, &l[..400], &limits(), &mut pace, &t)
        .await
        .unwrap();
    assert_eq!(calls.lock().unwrap().len(), before + 1);
}

#[tokio::test(start_paused = true)]
async fn the_heartbeat_stays_fresh_across_a_two_minute_retry_after() {
    let (mut sink, calls) = Scripted::new(vec![retry(Some(Duration::from_secs(120)))]);
    let l = lines(3);
    let t = Arc::new(Telemetry::default());
    let watcher = {
        let t = t.clone();
        tokio::spawn(async move {
            let mut stalest = Duration::ZERO;
            for _ in 0..119 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                stalest = stalest.max(t.beats.quiet_for(Stage::Batch));
            }
            stalest
        })
    };
    let started = Instant::now();
    let refused = deliver_all(&mut sink, &l, &t).await;
    assert_eq!(refused, Ok(vec![]));
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(120),
        "the wait is kept"
    );
    assert_eq!(calls.lock().unwrap().len(), 2);
    let stalest = watcher.await.unwrap();
    assert!(
        stalest <= BEAT_EVERY,
        "the batch stage went {stalest:?} without a beat (systemd kills at 60 s)"
    );
}

fn record(i: usize) -> Record {
    Record {
        topic: format!("sf/dpw/bins/{i}"),
        readings: 1,
        lines: format!("m,sensor_id=s{i} v={i}i 1\n"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_line_whose_dead_letter_cannot_be_written_keeps_the_batch_uncommitted() {
    let dir = tempfile::tempdir().unwrap();
    let spool_cfg = crate::spool::SpoolConfig {
        dir: dir.path().join("spool"),
        max_bytes: 1 << 20,
        segment_bytes: 1 << 16,
    };
    let (mut writer, reader, _) = crate::spool::open(spool_cfg.clone()).unwrap();
    for i in 0..5 {
        writer.append(&record(i)).unwrap();
    }
    writer.sync().unwrap();
    // Every dead-letter write fails as on a full disk: /dev/full answers ENOSPC.
    let letters = dir.path().join("letters");
    std::fs::create_dir(&letters).unwrap();
    std::os::unix::fs::symlink("/dev/full", letters.join(crate::deadletter::FILE_NAME)).unwrap();
    let dead = Arc::new(Mutex::new(DeadLetters::open(&letters).unwrap()));
    let (sink, calls) = Scripted::with_rule(vec![], |body| {
        if body.contains("sensor_id=s2 ") {
            Err(SinkError::Refused {
                message: "store answered 400: field type conflict".into(),
            })
        } else {
            Ok(())
        }
    });
    let t = Arc::new(Telemetry::default());
    let abandon = CancellationToken::new();
    let stage = tokio::spawn(run(
        reader,
        Box::new(sink),
        true,
        limits(),
        dead,
        t.clone(),
        abandon.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(t.health.not_ready_reasons().contains(&"disk full"));
    abandon.cancel();
    stage.await.unwrap().unwrap();
    let bodies_with_s0 = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, b)| b.contains("sensor_id=s0 "))
        .count();
    assert!(
        bodies_with_s0 >= 2,
        "the batch is read and written again, not committed"
    );
    drop(writer);
    let (_w, mut r, _) = crate::spool::open(spool_cfg).unwrap();
    let (again, _) = r.read(usize::MAX, usize::MAX).unwrap();
    assert_eq!(
        again,
        (0..5).map(record).collect::<Vec<_>>(),
        "nothing was committed out of the spool"
    );
}

/// batch.max_bytes cuts a batch of long lines before batch.max_lines does.
#[tokio::test(start_paused = true)]
async fn a_batch_holds_at_most_max_bytes_of_line_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, reader, _) = crate::spool::open(crate::spool::SpoolConfig {
        dir: dir.path().join("spool"),
        max_bytes: 1 << 20,
        segment_bytes: 1 << 16,
    })
    .unwrap();
    // 24 to 26 bytes each: 40 of them are about 1 KiB.
    for i in 0..100 {
        writer.append(&record(i)).unwrap();
    }
    writer.sync().unwrap();
    let (sink, calls) = Scripted::with_rule(vec![], |_| Ok(()));
    let dead = Arc::new(Mutex::new(DeadLetters::open(dir.path()).unwrap()));
    let abandon = CancellationToken::new();
    let stage = tokio::spawn(run(
        reader,
        Box::new(sink),
        true,
        BatchLimits {
            max_bytes: 1024,
            ..limits()
        },
        dead,
        Arc::new(Telemetry::default()),
        abandon.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    abandon.cancel();
    drop(writer);
    stage.await.unwrap().unwrap();
    let bodies: Vec<String> = calls
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    assert!(bodies.len() >= 3, "{} writes", bodies.len());
    let lines: usize = bodies.iter().map(|b| b.lines().count()).sum();
    assert_eq!(lines, 100, "every record, once");
    for b in &bodies {
        // Whole records until the budget is reached: at most one record past it.
        assert!(b.len() < 1024 + 30, "a body of {} bytes", b.len());
    }
}

/// An InfluxDB 3 store: refuses every line whose field is a string (`v="x"`), writes the
/// others, and lists at most [`PARTIAL_LIST_MAX`] refused lines, as `/api/v3/write_lp` does.
fn influxdb3(body: &str) -> Result<(), SinkError> {
    let lines: Vec<LineError> = body
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("v=\"x\""))
        .map(|(i, _)| LineError {
            line: i + 1,
            message: "invalid column type for column 'v', expected iox::column_type::field::integer, got iox::column_type::field::string".into(),
        })
        .take(PARTIAL_LIST_MAX)
        .collect();
    if lines.is_empty() {
        return Ok(());
    }
    Err(SinkError::Partial {
        message: "store answered 400: partial write of line protocol occurred".into(),
        lines,
    })
}

/// `n` lines, those whose index `bad` picks carrying a string field.
fn lines_with_bad(n: usize, bad: impl Fn(usize) -> bool) -> Vec<String> {
    (0..n)
        .map(|i| match bad(i) {
            true => format!("m,sensor_id=s{i} v=\"x\" 1"),
            false => format!("m,sensor_id=s{i} v={i}i 1"),
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_partial_write_dead_letters_the_listed_lines_and_sends_nothing_again() {
    let (mut sink, calls) = Scripted::with_rule(vec![], influxdb3);
    let l = lines_with_bad(6, |i| i == 1 || i == 4);
    let t = Telemetry::default();
    let refused = deliver_all(&mut sink, &l, &t).await.unwrap();
    let at: Vec<(usize, usize)> = refused.iter().map(|r| (r.record, r.line)).collect();
    assert_eq!(at, vec![(1, 1), (4, 4)]);
    assert_eq!(
        refused[0].error.to_string(),
        "store answered 400: invalid column type for column 'v', expected iox::column_type::field::integer, got iox::column_type::field::string"
    );
    // One write: the four good lines were written by it, nothing is sent again.
    assert_eq!(calls.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_full_list_of_refused_lines_is_bisected_until_every_refused_line_is_named() {
    let (mut sink, calls) = Scripted::with_rule(vec![], influxdb3);
    // 250 refused lines among 400: the first answer lists only 100 of them.
    let l = lines_with_bad(400, |i| i % 8 < 5);
    let t = Telemetry::default();
    let refused = deliver_all(&mut sink, &l, &t).await.unwrap();
    let got: Vec<usize> = refused.iter().map(|r| r.line).collect();
    let want: Vec<usize> = (0..400).filter(|i| i % 8 < 5).collect();
    assert_eq!(got, want, "each refused line once, in order");
    let calls = calls.lock().unwrap();
    assert!(calls.len() > 1, "the full list was not bisected");
    // Bisection stops at parts whose list is complete: 400 -> 200 -> 100 lines.
    assert!(
        calls.iter().all(|(_, b)| b.lines().count() >= 100),
        "{}",
        calls.len()
    );
}

#[tokio::test(start_paused = true)]
async fn fewer_than_a_full_list_is_not_bisected() {
    let (mut sink, calls) = Scripted::with_rule(vec![], influxdb3);
    let l = lines_with_bad(400, |i| i % 5 == 0);
    let t = Telemetry::default();
    let refused = deliver_all(&mut sink, &l, &t).await.unwrap();
    assert_eq!(refused.len(), 80);
    assert_eq!(calls.lock().unwrap().len(), 1);
}

/// A sink with `concurrency` writes in flight: forks share the record of calls, and a body
/// whose first line is `sensor_id=s0` takes 3 s to answer, any other 1 s.
struct Concurrent {
    concurrency: usize,
    calls: Calls,
    done: Calls,
}

impl Sink for Concurrent {
    fn name(&self) -> &'static str {
        "concurrent"
    }

    fn write<'a>(&'a mut self, body: &'a [u8]) -> WriteFuture<'a> {
        let body = String::from_utf8(body.to_vec()).unwrap();
        self.calls
            .lock()
            .unwrap()
            .push((Instant::now(), body.clone()));
        let slow = body.starts_with("m,sensor_id=s0 ");
        let done = self.done.clone();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(if slow { 3 } else { 1 })).await;
            let answer = influxdb3(&body);
            done.lock().unwrap().push((Instant::now(), body));
            answer
        })
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }

    fn fork(&self) -> Option<Box<dyn Sink>> {
        Some(Box::new(Concurrent {
            concurrency: self.concurrency,
            calls: self.calls.clone(),
            done: self.done.clone(),
        }))
    }
}

#[tokio::test(start_paused = true)]
async fn parts_written_side_by_side_come_back_in_batch_order() {
    let mut sink = Concurrent {
        concurrency: 2,
        calls: Calls::default(),
        done: Calls::default(),
    };
    let l = lines_with_bad(10, |i| i == 2 || i == 7);
    let t = Telemetry::default();
    let start = Instant::now();
    let refused = deliver(
        &mut sink,
        &refs(&l),
        &limits(),
        &mut Pace::default(),
        &t,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    // Both parts left at once; the second answered first, yet the refused lines are in order
    // and deliver waited for the slow first part.
    let calls = sink.calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|(at, _)| *at == start));
    assert_eq!(calls[0].1.lines().count(), 5);
    let done = sink.done.lock().unwrap();
    assert!(done[0].1.starts_with("m,sensor_id=s5 "), "{}", done[0].1);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    let at: Vec<usize> = refused.iter().map(|r| r.line).collect();
    assert_eq!(at, vec![2, 7]);
}

#[tokio::test(start_paused = true)]
async fn one_write_in_flight_sends_the_batch_whole() {
    let mut sink = Concurrent {
        concurrency: 1,
        calls: Calls::default(),
        done: Calls::default(),
    };
    let l = lines(10);
    let t = Telemetry::default();
    deliver(
        &mut sink,
        &refs(&l),
        &limits(),
        &mut Pace::default(),
        &t,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let calls = sink.calls.lock().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].1.lines().count(), 10);
}
