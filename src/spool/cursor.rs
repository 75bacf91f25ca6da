//! The spool cursor: where the reader resumes. Written in place, never grown, so that committing
//! needs no new block on a full disk: a preallocated file of two slots, each record
//! `magic | seq | segment | offset | crc32`, written alternately with `pwrite` + `fdatasync`. On
//! open the valid slot with the highest `seq` wins; a torn slot fails its checksum and the other
//! one (one commit older: a few duplicates) is used.
//!
//! After a failed `fdatasync` the cursor's page is in an unknown state (fsyncgate): the caller
//! treats the commit as not done, and the next commit writes a whole record again rather than
//! retrying the fsync.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::log::Position;

pub(crate) const FILE_NAME: &str = "cursor.slots";
/// The sink whose cursor is [`FILE_NAME`] (the single sink of `[influx]` before `[[sink]]`), so
/// that an upgrade resumes where it was; any other sink's is `cursor.<name>.slots`.
pub(crate) use crate::settings::DEFAULT_SINK;

/// The cursor file of the sink called `name`.
pub(crate) fn file_name(name: &str) -> String {
    if name == DEFAULT_SINK {
        FILE_NAME.to_string()
    } else {
        format!("cursor.{name}.slots")
    }
}

/// The sink a cursor file belongs to, for a file name that is a cursor.
pub(crate) fn sink_of(file: &str) -> Option<&str> {
    if file == FILE_NAME {
        return Some(DEFAULT_SINK);
    }
    file.strip_prefix("cursor.")?.strip_suffix(".slots")
}
/// The text cursor of earlier versions (`<segment> <offset>`), read once if no slot is valid.
const LEGACY_FILE: &str = "cursor";
const MAGIC: u32 = 0x5546_4331; // "UFC1"
const RECORD: usize = 32;
/// Slots a sector apart: a device writes a sector whole, so a torn write of one slot leaves
/// the other as it was (and a page written whole holds both, old or new).
const SLOT_STRIDE: u64 = 512;
const FILE_BYTES: u64 = 2 * SLOT_STRIDE;

#[derive(Debug)]
pub(crate) struct Cursor {
    file: File,
    seq: u64,
}

fn encode(seq: u64, p: Position) -> [u8; RECORD] {
    let mut b = [0u8; RECORD];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..12].copy_from_slice(&seq.to_le_bytes());
    b[12..20].copy_from_slice(&p.segment.to_le_bytes());
    b[20..28].copy_from_slice(&p.offset.to_le_bytes());
    let crc = crc32fast::hash(&b[..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8; RECORD]) -> Option<(u64, Position)> {
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    if u32_at(0) != MAGIC || u32_at(28) != crc32fast::hash(&b[..28]) {
        return None;
    }
    let (seq, segment, offset) = (u64_at(4), u64_at(12), u64_at(20));
    Some((seq, Position { segment, offset }))
}

fn read_legacy(dir: &Path) -> Option<Position> {
    let text = fs::read_to_string(dir.join(LEGACY_FILE)).ok()?;
    let mut it = text.split_whitespace();
    Some(Position {
        segment: it.next()?.parse().ok()?,
        offset: it.next()?.parse().ok()?,
    })
}

/// Creates the preallocated file (zeros written, so its blocks exist) and its directory entry.
fn create(dir: &Path, name: &str) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let f = File::create(&tmp)?;
    f.write_all_at(&vec![0u8; FILE_BYTES as usize], 0)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Cursor {
    /// Opens the cursor of the default sink (see [`Cursor::open_named`]).
    #[cfg(test)]
    pub(crate) fn open(dir: &Path) -> io::Result<(Cursor, Option<Position>)> {
        Cursor::open_named(dir, DEFAULT_SINK)
    }

    /// Opens the cursor of sink `sink` in `dir` (creating it the first time) and the position it
    /// holds. Only the default sink takes over a text cursor of an earlier version.
    pub(crate) fn open_named(dir: &Path, sink: &str) -> io::Result<(Cursor, Option<Position>)> {
        let name = file_name(sink);
        let path = dir.join(&name);
        if !path.exists() {
            create(dir, &name)?;
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let mut best: Option<(u64, Position)> = None;
        for slot in 0..2 {
            let mut b = [0u8; RECORD];
            if file.read_exact_at(&mut b, slot * SLOT_STRIDE).is_err() {
                continue;
            }
            if let Some((seq, p)) = decode(&b) {
                if best.is_none_or(|(s, _)| seq > s) {
                    best = Some((seq, p));
                }
            }
        }
        let mut cursor = Cursor {
            file,
            seq: best.map_or(0, |(s, _)| s),
        };
        let position = match best {
            Some((_, p)) => Some(p),
            None if sink != DEFAULT_SINK => None,
            None => {
                let legacy = read_legacy(dir);
                if let Some(p) = legacy {
                    cursor.write(p)?;
                    let _ = fs::remove_file(dir.join(LEGACY_FILE));
                    sync_dir(dir)?;
                }
                legacy
            }
        };
        Ok((cursor, position))
    }

    /// Writes `p` into the older slot and makes it durable. An error means "not committed".
    pub(crate) fn write(&mut self, p: Position) -> io::Result<()> {
        let seq = self.seq + 1;
        let slot = seq % 2;
        self.file
            .write_all_at(&encode(seq, p), slot * SLOT_STRIDE)?;
        self.file.sync_data()?;
        self.seq = seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(segment: u64, offset: u64) -> Position {
        Position { segment, offset }
    }

    #[test]
    fn the_newest_whole_slot_wins_and_a_torn_one_falls_back_to_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, p) = Cursor::open(dir.path()).unwrap();
        assert_eq!(p, None);
        assert_eq!(
            fs::metadata(dir.path().join(FILE_NAME)).unwrap().len(),
            FILE_BYTES,
            "preallocated: writing never needs a new block"
        );
        c.write(at(1, 100)).unwrap();
        c.write(at(1, 250)).unwrap();
        drop(c);
        assert_eq!(Cursor::open(dir.path()).unwrap().1, Some(at(1, 250)));
        // Tear the newest slot (seq 2, slot 0): half of it overwritten.
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(FILE_NAME))
            .unwrap();
        f.write_all_at(&[0xAB; 10], 14).unwrap();
        drop(f);
        let (mut c, p) = Cursor::open(dir.path()).unwrap();
        assert_eq!(p, Some(at(1, 100)), "the older whole slot");
        c.write(at(2, 8)).unwrap();
        drop(c);
        assert_eq!(Cursor::open(dir.path()).unwrap().1, Some(at(2, 8)));
    }

    #[test]
    fn a_text_cursor_of_an_earlier_version_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(LEGACY_FILE), "3 4096\n").unwrap();
        let (_c, p) = Cursor::open(dir.path()).unwrap();
        assert_eq!(p, Some(at(3, 4096)));
        assert!(!dir.path().join(LEGACY_FILE).exists());
        assert_eq!(Cursor::open(dir.path()).unwrap().1, Some(at(3, 4096)));
    }
}
