//! A scripted HTTP front for the store, to provoke one fault at a time: it records every request
//! with the instant it arrived, a script chooses the answer, and what the script lets through is
//! forwarded to the real VictoriaMetrics.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::http;

/// A connection the daemon leaves idle this long is closed (reqwest opens another).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// One request as the front saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// When its head had arrived.
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// Header lines as sent (`Name: value`).
    pub headers: Vec<String>,
    /// The body, gunzipped when it came gzipped.
    pub body: String,
    /// The status it was answered with.
    pub status: u16,
}

impl Request {
    /// The value of header `name` (case-insensitive), if it was sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// What the front answers one request.
pub enum Reply {
    /// Forward it to the store and relay the store's status and body.
    Forward,
    /// Answer it here: status, extra header lines, body.
    Answer(u16, Vec<String>, String),
}

/// The script: the request and how many came before it.
type Script = dyn Fn(&Request, usize) -> Reply + Send + Sync;

pub struct StoreFront {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    closed: Arc<AtomicBool>,
}

impl StoreFront {
    /// Listens on a free loopback port in front of the store on `upstream`.
    pub fn start(
        upstream: u16,
        script: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static,
    ) -> StoreFront {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the store front");
        let port = listener.local_addr().expect("its address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let script: Arc<Script> = Arc::new(script);
        let (seen, done) = (requests.clone(), closed.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (seen, script) = (seen.clone(), script.clone());
                thread::spawn(move || {
                    let _ = serve(stream, upstream, &seen, &*script);
                });
            }
        });
        StoreFront {
            port,
            requests,
            closed,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every request so far, in order of arrival.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("the request log").clone()
    }
}

impl Drop for StoreFront {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag and ends.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Serves the requests of one keep-alive connection until the client closes it, asks for that
/// (`Connection: close`) or goes idle.
fn serve(
    mut stream: TcpStream,
    upstream: u16,
    seen: &Mutex<Vec<Request>>,
    script: &Script,
) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    while let Some(request) = read_request(&mut stream)? {
        let (index, reply) = {
            let mut seen = seen.lock().expect("the request log");
            let reply = script(&request, seen.len());
            seen.push(request.clone());
            (seen.len() - 1, reply)
        };
        let (status, headers, body) = match reply {
            Reply::Answer(status, headers, body) => (status, headers, body),
            Reply::Forward => {
                let (status, body) =
                    http::request(upstream, &request.method, &request.path, &request.body, &[])?;
                (status, Vec::new(), body)
            }
        };
        seen.lock().expect("the request log")[index].status = status;
        let mut head = format!(
            "HTTP/1.1 {status} Scripted\r\nContent-Length: {}\r\n",
            body.len()
        );
        for line in headers {
            head.push_str(&line);
            head.push_str("\r\n");
        }
        write!(stream, "{head}\r\n{body}")?;
        if request
            .header("Connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            return Ok(());
        }
    }
    Ok(())
}

/// Reads one HTTP/1.1 request (its body by Content-Length); None once the client closed.
fn read_request(stream: &mut TcpStream) -> io::Result<Option<Request>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Ok(None);
        }
        head.push(byte[0]);
    }
    let at = Instant::now();
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let mut start = lines.next().unwrap_or_default().split_whitespace();
    let method = start.next().unwrap_or_default().to_owned();
    let path = start.next().unwrap_or_default().to_owned();
    let headers: Vec<String> = lines.filter(|l| !l.is_empty()).map(str::to_owned).collect();
    let mut request = Request {
        at,
        method,
        path,
        headers,
        body: String::new(),
        status: 0,
    };
    let length = request
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut raw = vec![0u8; length];
    stream.read_exact(&mut raw)?;
    request.body = if request.header("content-encoding") == Some("gzip") {
        let mut text = String::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_string(&mut text)?;
        text
    } else {
        String::from_utf8_lossy(&raw).into_owned()
    };
    Ok(Some(request))
}
