//! A small tmpfs mounted for one test, to fill a disk for real: mounted on a fresh temporary
//! folder, unmounted on drop. Mounting needs root (CI runs as root); a test that cannot mount
//! fails loudly rather than pass without having filled anything.

use std::fs;
use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

pub struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// `mount -t tmpfs -o size=<size> tmpfs <dir>`; panics if it cannot.
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("it-tmpfs-")
            .tempdir()
            .expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs on {} (the full-disk tests need root, as in CI): {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills all but `leave` bytes with a file named `ballast` (deleting it gives them back).
    pub fn fill_leaving(&self, leave: u64) {
        let free = self.free_bytes();
        let ballast = free.saturating_sub(leave);
        fs::write(self.path().join("ballast"), vec![0xB5u8; ballast as usize])
            .expect("write the ballast file");
    }

    /// Free bytes as `df` sees them.
    pub fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.path())
            .output()
            .expect("run df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("df said {:?}", String::from_utf8_lossy(&out.stdout)))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut c = Command::new("umount");
            if lazy {
                c.arg("-l");
            }
            c.arg(self.dir.path()).status().is_ok_and(|s| s.success())
        };
        // Lazily if a process still holds a file there (a daemon killed a moment ago).
        if !umount(false) && !umount(true) {
            eprintln!(
                "could not unmount the tmpfs on {}",
                self.dir.path().display()
            );
        }
    }
}
