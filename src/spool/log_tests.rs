//! The segment log: order, recovery, limits, checksums.

use super::*;
use crate::spool::record::read_record;
use crate::spool::small_disk::SmallDisk;

fn cfg(dir: &Path, max: u64, seg: u64) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes: max,
        segment_bytes: seg,
    }
}

fn rec(i: usize) -> Record {
    Record {
        topic: format!("t/{i}"),
        readings: 1,
        lines: format!("m,city=paris f={i}i {i}\n"),
    }
}

#[test]
fn records_come_back_in_order_across_segments_and_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut w, mut r, _) = open(cfg(dir.path(), 1 << 20, 200)).unwrap();
        for i in 0..20 {
            w.append(&rec(i)).unwrap();
        }
        w.sync().unwrap();
        let (got, pos) = r.read(5, usize::MAX).unwrap();
        assert_eq!(got, (0..5).map(rec).collect::<Vec<_>>());
        r.commit(pos).unwrap();
    }
    // Reopen: the five committed records are gone, the other fifteen come back.
    let (_w, mut r, report) = open(cfg(dir.path(), 1 << 20, 200)).unwrap();
    assert_eq!(report.truncated_bytes, 0);
    let (got, _) = r.read(100, usize::MAX).unwrap();
    assert_eq!(got, (5..20).map(rec).collect::<Vec<_>>());
}

#[test]
fn the_reader_never_sees_unsynced_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, mut r, _) = open(cfg(dir.path(), 1 << 20, 1 << 16)).unwrap();
    w.append(&rec(1)).unwrap();
    assert!(r.caught_up());
    assert!(r.read(10, usize::MAX).unwrap().0.is_empty());
    w.sync().unwrap();
    assert!(!r.caught_up());
    assert_eq!(r.read(10, usize::MAX).unwrap().0, vec![rec(1)]);
}

#[test]
fn an_fsync_running_aside_covers_what_was_appended_before_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, mut r, _) = open(cfg(dir.path(), 1 << 20, 1 << 16)).unwrap();
    w.append(&rec(1)).unwrap();
    let first = w.sync_start().unwrap();
    // Appended while the first fsync runs: not covered by it.
    w.append(&rec(2)).unwrap();
    let second = w.sync_start().unwrap();
    first.file.as_ref().unwrap().sync_data().unwrap();
    second.file.as_ref().unwrap().sync_data().unwrap();
    // The later fsync ends first: it covers both; the earlier one then moves nothing back.
    w.sync_done(&second);
    w.sync_done(&first);
    assert_eq!(r.read(10, usize::MAX).unwrap().0, vec![rec(1), rec(2)]);
    w.append(&rec(3)).unwrap();
    let third = w.sync_start().unwrap();
    w.append(&rec(4)).unwrap();
    third.file.as_ref().unwrap().sync_data().unwrap();
    w.sync_done(&third);
    assert_eq!(
        r.read(10, usize::MAX).unwrap().0,
        vec![rec(3)],
        "rec 4 is not synced"
    );
}

#[test]
fn a_torn_tail_is_truncated_and_reported_and_the_rest_survives() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut w, _r, _) = open(cfg(dir.path(), 1 << 20, 1 << 16)).unwrap();
        for i in 0..3 {
            w.append(&rec(i)).unwrap();
        }
        w.sync().unwrap();
    }
    // Simulate a write cut short by SIGKILL or power loss: half a record at the end.
    let seg = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let mut half = Vec::new();
    encode(&rec(99), &mut half);
    half.truncate(half.len() / 2);
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&half).unwrap();
    drop(f);
    let (_w, mut r, report) = open(cfg(dir.path(), 1 << 20, 1 << 16)).unwrap();
    assert_eq!(report.truncated_bytes, half.len() as u64);
    assert_eq!(
        r.read(10, usize::MAX).unwrap().0,
        (0..3).map(rec).collect::<Vec<_>>()
    );
}

#[test]
fn a_flipped_bit_fails_the_checksum() {
    let mut buf = Vec::new();
    encode(&rec(7), &mut buf);
    buf[HEADER + 3] ^= 0x10;
    assert!(read_record(&mut &buf[..]).is_err());
}

#[test]
fn the_limit_is_enforced_until_the_store_takes_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, mut r, _) = open(cfg(dir.path(), 400, 100)).unwrap();
    let need = SpoolWriter::encoded_len(&rec(0));
    let mut n = 0;
    while w.has_room(need) && n < 100 {
        w.append(&rec(n)).unwrap();
        n += 1;
    }
    w.sync().unwrap();
    assert!(n < 100 && !w.has_room(need), "the spool never filled");
    let (got, pos) = r.read(usize::MAX, usize::MAX).unwrap();
    assert_eq!(got.len(), n);
    r.commit(pos).unwrap();
    assert!(w.has_room(need));
}

/// The ids of the segment files, oldest first.
fn segment_ids(dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn a_flipped_byte_in_an_older_segment_quarantines_that_record_and_keeps_all_after_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut w, _r, _) = open(cfg(dir.path(), 1 << 20, 200)).unwrap();
        for i in 0..20 {
            w.append(&rec(i)).unwrap();
        }
        w.sync().unwrap();
    }
    let ids = segment_ids(dir.path());
    assert!(ids.len() >= 3, "{ids:?}");
    // The middle record of the first segment: its body gets one byte flipped.
    let older = segment_path(dir.path(), ids[0]);
    let mut bytes = fs::read(&older).unwrap();
    let len = SpoolWriter::encoded_len(&rec(0)) as usize;
    let per_segment = bytes.len() / len;
    let middle = per_segment / 2;
    bytes[middle * len + HEADER + 3] ^= 0x40;
    fs::write(&older, &bytes).unwrap();

    let (_w, mut r, report) = open(cfg(dir.path(), 1 << 20, 200)).unwrap();
    assert_eq!(report.truncated_bytes, 0, "nothing is cut");
    assert_eq!(report.quarantined.len(), 1, "{report:?}");
    let q = &report.quarantined[0];
    assert_eq!(
        (q.segment, q.offset, q.bytes),
        (ids[0], (middle * len) as u64, len as u64)
    );
    assert_eq!(
        fs::read(&q.file).unwrap(),
        bytes[middle * len..(middle + 1) * len],
        "the bad range is kept aside, byte for byte"
    );
    let (got, _) = r.read(100, usize::MAX).unwrap();
    let expected: Vec<Record> = (0..20).filter(|i| *i != middle).map(rec).collect();
    assert_eq!(got, expected, "every other record is delivered, in order");
    // A second open finds the same range and does not count it again.
    drop((_w, r));
    let (_w, _r, again) = open(cfg(dir.path(), 1 << 20, 200)).unwrap();
    assert!(again.quarantined.is_empty());
}

#[test]
fn a_cursor_inside_a_record_resumes_at_its_start_with_a_duplicate_not_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let len = SpoolWriter::encoded_len(&rec(0));
    {
        let (mut w, mut r, _) = open(cfg(dir.path(), 1 << 20, 1 << 16)).unwrap();
        for i in 0..5 {
            w.append(&rec(i)).unwrap();
        }
        w.sync().unwrap();
        let (_, _) = r.read(2, usize::MAX).unwrap();
        // As a torn cursor write could leave it: in the middle of record 2.
        r.commit(Position {
            segment: 1,
            offset: 2 * len + 5,
        })
        .unwrap();
    }
    let (_w, mut r, report) = open(cfg(dir.path(), 1 << 20, 1 << 16)).unwrap();
    assert!(report.cursor_moved);
    let (got, _) = r.read(100, usize::MAX).unwrap();
    assert_eq!(got, (2..5).map(rec).collect::<Vec<_>>());
}

#[test]
fn committing_rewrites_the_cursor_in_place_without_growing_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, mut r, _) = open(cfg(dir.path(), 1 << 20, 200)).unwrap();
    let cursor = dir.path().join(super::super::cursor::FILE_NAME);
    let size = fs::metadata(&cursor).unwrap().len();
    for i in 0..30 {
        w.append(&rec(i)).unwrap();
        w.sync().unwrap();
        let (_, pos) = r.read(1, usize::MAX).unwrap();
        r.commit(pos).unwrap();
    }
    assert_eq!(fs::metadata(&cursor).unwrap().len(), size);
    assert!(!dir.path().join("cursor.tmp").exists());
}

#[test]
fn a_full_disk_cuts_the_unsynced_records_back_and_a_new_segment_takes_them_later() {
    let disk = SmallDisk::mount("256k");
    let dir = disk.0.path().join("spool");
    let (mut w, mut r, _) = open(cfg(&dir, 1 << 30, 1 << 30)).unwrap();
    let big = |i: usize| Record {
        topic: format!("t/{i}"),
        readings: 1,
        lines: format!("m,city=paris f={i}i {i}\n{}", "x".repeat(4000)),
    };
    // Fill: synced groups of four records until a write or a sync finds no space.
    let mut synced = 0;
    let error = loop {
        let group = (synced..synced + 4).try_for_each(|i| w.append(&big(i)).map(|_| ()));
        match group.and_then(|()| w.sync()) {
            Ok(()) => synced += 4,
            Err(e) => break e,
        }
        assert!(
            synced < 1000,
            "a 256 KiB disk took {synced} records of 4 KB"
        );
    };
    assert!(crate::spool::is_disk_full(&error), "{error:?}");
    let full_segment = w.segment;
    w.discard_unsynced().unwrap();
    assert_eq!(
        fs::metadata(segment_path(&dir, full_segment))
            .unwrap()
            .len(),
        (0..synced)
            .map(|i| SpoolWriter::encoded_len(&big(i)))
            .sum::<u64>(),
        "cut back to what was synced"
    );
    let (got, upto) = r.read(usize::MAX, usize::MAX).unwrap();
    assert_eq!(got, (0..synced).map(big).collect::<Vec<_>>());
    // The store took them: the segment goes, space returns, the group goes into a new segment.
    r.commit(upto).unwrap();
    for i in synced..synced + 4 {
        w.append(&big(i)).unwrap();
    }
    w.sync().unwrap();
    assert!(
        w.segment > full_segment,
        "never synced again: a new segment"
    );
    r.commit(upto).unwrap();
    let (again, _) = r.read(usize::MAX, usize::MAX).unwrap();
    assert_eq!(again, (synced..synced + 4).map(big).collect::<Vec<_>>());
}

fn segment_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_str().unwrap().ends_with(".seg")
        })
        .count()
}

#[test]
fn two_readers_each_keep_their_cursor_and_segments_stay_until_both_passed_them() {
    let dir = tempfile::tempdir().unwrap();
    let sinks = ["influx", "research"];
    {
        let (mut w, mut readers, _) = open_for(cfg(dir.path(), 1 << 20, 200), &sinks).unwrap();
        for i in 0..20 {
            w.append(&rec(i)).unwrap();
        }
        w.sync().unwrap();
        let segments = segment_files(dir.path());
        assert!(segments > 3, "{segments} segments: records span several");
        // The default sink takes everything; the research sink only the first twelve.
        let (got, pos) = readers[0].read(100, usize::MAX).unwrap();
        assert_eq!(got, (0..20).map(rec).collect::<Vec<_>>());
        readers[0].commit(pos).unwrap();
        assert_eq!(
            segment_files(dir.path()),
            segments,
            "nothing deleted: research has not read any"
        );
        assert_eq!(readers[0].pending_bytes(), 0);
        assert!(readers[1].pending_bytes() > 0);
        let (got, pos) = readers[1].read(12, usize::MAX).unwrap();
        assert_eq!(got, (0..12).map(rec).collect::<Vec<_>>());
        readers[1].commit(pos).unwrap();
        let kept = segment_files(dir.path());
        assert!(kept < segments, "what both passed is deleted");
        assert!(kept > 1, "what research still needs is kept");
    }
    assert!(dir.path().join("cursor.slots").exists());
    assert!(dir.path().join("cursor.research.slots").exists());
    // Reopening resumes each where it was.
    {
        let (_w, mut readers, report) = open_for(cfg(dir.path(), 1 << 20, 200), &sinks).unwrap();
        assert!(report.ignored_cursors.is_empty());
        assert!(readers[0].read(100, usize::MAX).unwrap().0.is_empty());
        let (got, pos) = readers[1].read(100, usize::MAX).unwrap();
        assert_eq!(got, (12..20).map(rec).collect::<Vec<_>>());
        readers[1].commit(pos).unwrap();
        assert!(segment_files(dir.path()) <= 1, "both passed everything");
    }
}

#[test]
fn the_slowest_reader_bounds_the_room_and_an_unknown_cursor_pins_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut w, mut readers, _) =
            open_for(cfg(dir.path(), 400, 100), &["influx", "research"]).unwrap();
        while w.has_room(40) {
            w.append(&rec(1)).unwrap();
        }
        w.sync().unwrap();
        let (_, pos) = readers[0].read(100, usize::MAX).unwrap();
        readers[0].commit(pos).unwrap();
        assert!(!w.has_room(40), "research still needs it all: no room");
    }
    // research removed from the configuration: its cursor is ignored, the spool frees.
    let (mut w, mut readers, report) = open_for(cfg(dir.path(), 400, 100), &["influx"]).unwrap();
    assert_eq!(report.ignored_cursors, vec!["research".to_string()]);
    assert!(w.has_room(40));
    w.append(&rec(2)).unwrap();
    w.sync().unwrap();
    assert_eq!(readers[0].read(100, usize::MAX).unwrap().0, vec![rec(2)]);
    assert!(
        dir.path().join("cursor.research.slots").exists(),
        "left behind"
    );
}
