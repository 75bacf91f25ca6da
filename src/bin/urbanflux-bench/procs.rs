//! The processes the benchmark starts (mosquitto, VictoriaMetrics, `urbanflux run`), their
//! temporary folders, and what /proc says about them. Every child is stopped by its PID: by
//! its guard's Drop (also on panic) or by the global timeout.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a server may take to accept connections after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// PIDs of the children alive now, for the global timeout (which cannot reach the guards).
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Temporary folders not kept (`--keep`), for the same reason.
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Kills every child still alive, by PID, then removes the temporary folders not kept; the
/// global timeout calls it before exiting (exit runs no Drop).
pub fn kill_all_live() {
    let pids: Vec<u32> = LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for pid in pids {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
    // SIGKILL is asynchronous: let the children close their files first.
    std::thread::sleep(Duration::from_millis(300));
    for dir in DIRS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// A child process stopped (SIGKILL by PID, then reaped) when dropped.
pub struct Guard {
    pub name: &'static str,
    child: Child,
}

impl Guard {
    pub fn spawn(name: &'static str, mut command: Command, log: &Path) -> Result<Guard> {
        let out = fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id());
        Ok(Guard { name, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the child has already exited (a refused configuration, a port taken).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early: {status}", self.name);
        }
        Ok(())
    }

    /// SIGTERM by PID, then up to `grace` for it to exit, then SIGKILL.
    pub fn terminate(&mut self, grace: Duration) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let pid = self.child.id();
        let _ = self.child.kill();
        let _ = self.child.wait();
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| *p != pid);
    }
}

/// A temporary folder, removed when dropped unless kept (`--keep`).
pub struct TempDir {
    pub path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new(label: &str, keep: bool) -> Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "urbanflux-bench-{}-{label}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        if !keep {
            DIRS.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(path.clone());
        }
        Ok(TempDir { path, keep })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
            DIRS.lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|d| *d != self.path);
        }
    }
}

/// A loopback port free right now (another process may still take it: the start checks fail then).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_accepting(guard: &mut Guard, port: u16) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        guard.check_alive()?;
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} does not accept on port {port}", guard.name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// mosquitto with the settings of README "Broker settings urbanflux needs", no persistence.
pub fn start_mosquitto(dir: &Path) -> Result<(Guard, u16)> {
    let port = free_port()?;
    let conf = dir.join("mosquitto.conf");
    fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 1000\n\
             max_queued_messages 0\nmax_queued_bytes 0\npersistence false\n"
        ),
    )?;
    let mut command = Command::new("/usr/sbin/mosquitto");
    command.arg("-c").arg(&conf);
    let mut guard = Guard::spawn("mosquitto", command, &dir.join("mosquitto.log"))?;
    wait_accepting(&mut guard, port)?;
    Ok((guard, port))
}

/// VictoriaMetrics; latencyOffset 0 so that fresh points are queryable at once.
pub fn start_victoria(dir: &Path) -> Result<(Guard, u16)> {
    let port = free_port()?;
    Ok((start_victoria_on(dir, port)?, port))
}

/// VictoriaMetrics on `port`, its data under `dir` (again after a stop: the same data).
pub fn start_victoria_on(dir: &Path, port: u16) -> Result<Guard> {
    let mut command = Command::new("/usr/bin/victoria-metrics");
    command
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg(format!("-storageDataPath={}", dir.join("vm").display()))
        .arg("-retentionPeriod=100y")
        .arg("-search.latencyOffset=0s")
        .arg("-search.disableCache")
        // --sensors 600000: counting them all needs more than the default 300,000 series.
        .arg("-search.maxUniqueTimeseries=5000000");
    let mut guard = Guard::spawn("victoria-metrics", command, &dir.join("victoria.log"))?;
    wait_accepting(&mut guard, port)?;
    Ok(guard)
}

/// `urbanflux run` on this broker and store, state under `dir`, ops endpoint on a free port.
pub fn start_daemon(
    binary: &Path,
    config: &Path,
    dir: &Path,
    mqtt_port: u16,
    store_port: u16,
    extra_env: &[(&str, String)],
) -> Result<(Guard, u16)> {
    let ops = free_port()?;
    let mut command = Command::new(binary);
    command.envs(extra_env.iter().map(|(k, v)| (k, v)));
    command
        .arg("run")
        .arg("--config")
        .arg(config)
        .env(
            "URBANFLUX__MQTT__URL",
            format!("mqtt://127.0.0.1:{mqtt_port}"),
        )
        .env("URBANFLUX__MQTT__CLIENT_ID", "urbanflux-bench")
        .env(
            "URBANFLUX__INFLUX__URL",
            format!("http://127.0.0.1:{store_port}"),
        )
        .env("URBANFLUX__STATE__DIR", dir.join("state"))
        .env("URBANFLUX__OPS__LISTEN", format!("127.0.0.1:{ops}"))
        .env("URBANFLUX__LOG__LEVEL", "warn");
    let guard = Guard::spawn("urbanflux", command, &dir.join("urbanflux.log"))?;
    Ok((guard, ops))
}

/// utime + stime of a process, in microseconds.
pub fn cpu_micros(pid: u32, ticks_per_s: u64) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (in parentheses, may hold spaces): state is field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("odd /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state (field 3).
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) * 1_000_000 / ticks_per_s)
}

/// Peak resident set (VmHWM) in KiB.
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("odd VmHWM")?
        .parse()?)
}

/// Clock ticks per second of /proc/PID/stat (`getconf CLK_TCK`, 100 on Linux when absent).
pub fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}
