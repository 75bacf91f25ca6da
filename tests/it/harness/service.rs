//! One child service: spawned with its own log file, ready once its probe says so, stopped by
//! PID (SIGTERM, then SIGKILL), restarted with the same command and port, killed on drop with
//! the tail of its log printed when the test failed.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use super::{free_port, within};

/// How long a graceful stop (SIGTERM) may take before the harness kills and gives up.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(15);
/// Ports tried before a service is declared unable to start (another test may take a free port
/// before the service binds it).
const PORT_ATTEMPTS: usize = 5;
/// Lines of its log a service prints when the test that owns it fails.
const LOG_TAIL_LINES: usize = 120;

/// How to run a service and how to tell that it is ready.
pub struct Launch {
    pub command: Command,
    /// True once the service serves; it is given everything the service logged so far.
    pub ready: Box<dyn Fn(&str) -> bool>,
    pub start_timeout: Duration,
}

pub struct Service {
    name: &'static str,
    launch: Launch,
    dir: TempDir,
    port: u16,
    starts: u32,
    child: Option<Child>,
}

impl Service {
    /// Starts `name` on a free loopback port, in a temporary folder of its own: `launch(dir, port)`
    /// writes what configuration it needs there and says how to run and probe the service.
    pub fn on_free_port(
        name: &'static str,
        mut launch: impl FnMut(&Path, u16) -> Launch,
    ) -> Service {
        let dir = own_folder(name);
        let port = free_port();
        let mut service = Service {
            name,
            launch: launch(dir.path(), port),
            dir,
            port,
            starts: 0,
            child: None,
        };
        let mut last_log = String::new();
        for _attempt in 0..PORT_ATTEMPTS {
            match service.spawn() {
                Ok(()) => return service,
                Err(log) => last_log = log,
            }
            service.port = free_port();
            service.launch = launch(service.dir.path(), service.port);
        }
        panic!("{name} did not start on a free port after {PORT_ATTEMPTS} tries; last log:\n{last_log}");
    }

    /// Starts `name` once (it has no port to retry); panics with its log if it does not get ready.
    pub fn start(name: &'static str, launch: impl FnOnce(&Path) -> Launch) -> Service {
        let dir = own_folder(name);
        let mut service = Service {
            name,
            launch: launch(dir.path()),
            dir,
            port: 0,
            starts: 0,
            child: None,
        };
        if let Err(log) = service.spawn() {
            panic!("{name} did not get ready: {log}");
        }
        service
    }

    /// Spawns the command with a fresh log and waits for the probe; Err(log) if the child exited
    /// first or the start timeout passed.
    fn spawn(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log = self.log_path();
        let file = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let copy = file.try_clone().expect("clone a log file handle");
        let mut child = self
            .launch
            .command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(copy)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", self.launch.command));
        let ready = &self.launch.ready;
        // Ok(Err(..)): the child exited, waiting longer is of no use.
        let outcome = within(self.launch.start_timeout, || {
            if let Some(status) = child.try_wait().expect("poll a child") {
                return Ok(Err(format!("exited with {status}")));
            }
            // Ready, and still running: the probe did not answer for another test's process.
            if ready(&read_lossy(&log)) && child.try_wait().expect("poll a child").is_none() {
                return Ok(Ok(()));
            }
            Err(())
        });
        let why = match outcome {
            Ok(Ok(())) => {
                self.child = Some(child);
                return Ok(());
            }
            Ok(Err(exited)) => exited,
            Err(()) => {
                kill(&mut child);
                format!("not ready within {:?}", self.launch.start_timeout)
            }
        };
        Err(format!("{why}; log:\n{}", read_lossy(&log)))
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}-{}.log", self.name, self.starts))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("{} is not running", self.name))
    }

    /// Everything the service logged since it was (re)started.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// The exit status, once the child has exited by itself.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().expect("poll a child")
    }

    /// SIGTERM by PID and the exit status; SIGKILL and a panic if it does not exit in time.
    /// None if it was not running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Some(status) = child.try_wait().expect("poll a child") {
            return Some(status);
        }
        let pid = child.id().to_string();
        // Through /bin/kill: no libc needed.
        let sent = Command::new("/bin/kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap_or_else(|e| panic!("run /bin/kill -TERM {pid} ({}): {e}", self.name));
        assert!(
            sent.success(),
            "/bin/kill -TERM {pid} ({}): {sent}",
            self.name
        );
        match within(TERMINATE_TIMEOUT, || {
            child.try_wait().expect("poll a child").ok_or(())
        }) {
            Ok(status) => Some(status),
            Err(()) => {
                kill(&mut child);
                panic!(
                    "{} did not exit within {TERMINATE_TIMEOUT:?} of SIGTERM; killed it",
                    self.name
                )
            }
        }
    }

    /// SIGKILL: no shutdown code runs, nothing is flushed on the way out.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Stops gracefully and starts again with the same command, port and folder.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.spawn() {
            panic!("{} did not restart on port {}: {log}", self.name, self.port);
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "--- {} log {} (last {LOG_TAIL_LINES} lines) ---\n{}",
                self.name,
                self.log_path().display(),
                tail(&self.log(), LOG_TAIL_LINES)
            );
        }
    }
}

/// Panics with the install command when `program` is missing: a test that needs a server
/// fails loudly without it.
pub fn installed(program: &str, package: &str) {
    assert!(
        Path::new(program).exists(),
        "{program} not found: apt-get install -y {package}"
    );
}

fn own_folder(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("it-{name}-"))
        .tempdir()
        .expect("tempdir")
}

/// SIGKILL by PID and reap, if the child is still running.
fn kill(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

pub fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a command to its end with `stdin` fed in, within `timeout` (killed and panics otherwise).
pub fn run_with_timeout(command: &mut Command, stdin: &[u8], timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_vec();
    // A child that exits without reading stdin closes the pipe; that is its business, not an error.
    let writer = thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let stdout = read_all(child.stdout.take().expect("piped stdout"));
    let stderr = read_all(child.stderr.take().expect("piped stderr"));
    let Ok(status) = within(timeout, || {
        child.try_wait().expect("poll a child").ok_or(())
    }) else {
        kill(&mut child);
        panic!("{command:?} did not finish within {timeout:?}; killed it");
    };
    let _ = writer.join();
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn read_all(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}
