//! A fault-injecting HTTP proxy for S3 tests: it sits between the trainer and a real S3 server on
//! 127.0.0.1 and, request by request, passes the request on or breaks it the way networks and
//! object stores break: 503 SlowDown, 500 InternalError, a response cut off mid-body, an upload
//! cut off mid-body, added latency, a connection that never answers, a store that is down.
//!
//! Each request gets a connection of its own (the proxy rewrites `Connection` to `close`), so a
//! fault hits exactly one request. SigV4 does not sign `Connection`, so signatures stay valid.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What happens to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Passed to the server unchanged.
    Pass,
    /// Answered `503 SlowDown` without reaching the server (S3's throttling answer).
    SlowDown,
    /// Answered `500 InternalError` without reaching the server.
    InternalError,
    /// Answered `403 AccessDenied` without reaching the server (a refusal the client does not
    /// retry).
    AccessDenied,
    /// Passed on; the response is cut after half its body and the connection closed.
    CutResponse,
    /// Half the request body reaches the server, then both connections close.
    CutRequest,
    /// Passed on after this much added latency.
    Latency(Duration),
    /// Accepted and never answered, until the client gives up.
    Stall,
}

/// A request as the fault plan sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// 0-based index among all requests the proxy received.
    pub index: u64,
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
}

/// What the proxy saw and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests received (refused connections not included).
    pub requests: u64,
    /// Requests that got a fault other than `Pass`.
    pub faults: u64,
    /// Connections refused while the store was down.
    pub refused: u64,
}

type Plan = Box<dyn Fn(&Request) -> Fault + Send + Sync>;

struct Shared {
    upstream: SocketAddr,
    plan: Mutex<Plan>,
    down_until: Mutex<Option<Instant>>,
    counts: Mutex<Counts>,
    stop: AtomicBool,
}

/// The proxy; it stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// Longest request or response head the proxy reads.
const MAX_HEAD: usize = 64 * 1024;
/// How long a stalled request is held before the proxy gives up on the client.
const STALL_LIMIT: Duration = Duration::from_secs(300);

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 in front of `upstream` (`http://host:port`), passing
    /// everything until a plan is set.
    pub fn start(upstream: &str) -> io::Result<Self> {
        let upstream = upstream
            .strip_prefix("http://")
            .unwrap_or(upstream)
            .trim_end_matches('/')
            .parse::<SocketAddr>()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            plan: Mutex::new(Box::new(|_| Fault::Pass)),
            down_until: Mutex::new(None),
            counts: Mutex::new(Counts::default()),
            stop: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        let acceptor = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&accepting);
                std::thread::spawn(move || {
                    let _ = serve(&shared, stream);
                });
            }
        });
        Ok(Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The endpoint to give the client: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Decides each later request's fault.
    pub fn set_plan(&self, plan: impl Fn(&Request) -> Fault + Send + Sync + 'static) {
        if let Ok(mut current) = self.shared.plan.lock() {
            *current = Box::new(plan);
        }
    }

    /// Refuses every connection (closes it at once) for `outage`, starting now.
    pub fn down_for(&self, outage: Duration) {
        if let Ok(mut until) = self.shared.down_until.lock() {
            *until = Some(Instant::now() + outage);
        }
    }

    /// What happened so far.
    pub fn counts(&self) -> Counts {
        self.shared
            .counts
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor so that it sees the stop flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn serve(shared: &Shared, mut client: TcpStream) -> io::Result<()> {
    let down = shared
        .down_until
        .lock()
        .map(|until| until.is_some_and(|t| Instant::now() < t))
        .unwrap_or(false);
    if down {
        if let Ok(mut counts) = shared.counts.lock() {
            counts.refused += 1;
        }
        return client.shutdown(Shutdown::Both);
    }
    let (head, mut body_start) = read_head(&mut client)?;
    let Some(request_line) = head.lines().next() else {
        return Ok(());
    };
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let index = {
        let mut counts = shared.counts.lock().map_err(|_| io::ErrorKind::Other)?;
        counts.requests += 1;
        counts.requests - 1
    };
    let request = Request {
        index,
        method: method.clone(),
        path,
    };
    let fault = shared
        .plan
        .lock()
        .map(|plan| plan(&request))
        .unwrap_or(Fault::Pass);
    if fault != Fault::Pass
        && let Ok(mut counts) = shared.counts.lock()
    {
        counts.faults += 1;
    }
    let body_length = content_length(&head).unwrap_or(0);
    match fault {
        Fault::SlowDown | Fault::InternalError | Fault::AccessDenied => {
            drain(&mut client, &mut body_start, body_length)?;
            let (status, code) = match fault {
                Fault::SlowDown => ("503 Slow Down", "SlowDown"),
                Fault::InternalError => ("500 Internal Server Error", "InternalError"),
                _ => ("403 Forbidden", "AccessDenied"),
            };
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
            );
            write!(
                client,
                "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
                xml.len()
            )?;
            return client.shutdown(Shutdown::Both);
        }
        Fault::Stall => {
            client.set_read_timeout(Some(STALL_LIMIT))?;
            let mut sink = [0u8; 8192];
            // Holds the connection until the client closes it (its timeout) or the limit.
            while matches!(client.read(&mut sink), Ok(n) if n > 0) {}
            return Ok(());
        }
        Fault::Latency(extra) => std::thread::sleep(extra),
        Fault::Pass | Fault::CutResponse | Fault::CutRequest => {}
    }
    let mut server = TcpStream::connect(shared.upstream)?;
    server.write_all(with_connection_close(&head).as_bytes())?;
    if fault == Fault::CutRequest {
        let half = body_length / 2;
        let first = body_start.len().min(half);
        server.write_all(&body_start[..first])?;
        let mut rest = vec![0u8; half - first];
        client.read_exact(&mut rest)?;
        server.write_all(&rest)?;
        let _ = server.shutdown(Shutdown::Both);
        return client.shutdown(Shutdown::Both);
    }
    server.write_all(&body_start)?;
    body_start.clear();
    let mut to_server = client.try_clone()?;
    let mut server_in = server.try_clone()?;
    let uploader = std::thread::spawn(move || {
        let _ = io::copy(&mut to_server, &mut server_in);
    });
    let result = if fault == Fault::CutResponse {
        forward_half(&mut server, &mut client, method == "HEAD")
    } else {
        io::copy(&mut server, &mut client).map(|_| ())
    };
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    let _ = uploader.join();
    result
}

/// Reads up to the end of the head; returns it and the body bytes read past it.
fn read_head(stream: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end + 4]).into_owned();
            return Ok((head, buffer[end + 4..].to_vec()));
        }
        if buffer.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// The head with any `Connection` header replaced by `Connection: close`.
fn with_connection_close(head: &str) -> String {
    let mut out = String::new();
    for line in head.trim_end_matches("\r\n").split("\r\n") {
        let is_connection = line
            .split_once(':')
            .is_some_and(|(name, _)| name.trim().eq_ignore_ascii_case("connection"));
        if !is_connection {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

fn drain(client: &mut TcpStream, already: &mut Vec<u8>, length: usize) -> io::Result<()> {
    let remaining = length.saturating_sub(already.len());
    io::copy(&mut client.take(remaining as u64), &mut io::sink())?;
    already.clear();
    Ok(())
}

/// Forwards the response head and half of its body, then stops.
fn forward_half(server: &mut TcpStream, client: &mut TcpStream, head_only: bool) -> io::Result<()> {
    let (head, body_start) = read_head(server)?;
    let length = if head_only {
        0
    } else {
        content_length(&head).unwrap_or(body_start.len())
    };
    client.write_all(head.as_bytes())?;
    let half = length / 2;
    let first = body_start.len().min(half);
    client.write_all(&body_start[..first])?;
    io::copy(&mut server.take((half - first) as u64), client)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot HTTP server that answers every request with `body`.
    fn origin(body: &'static str) -> (String, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            for stream in listener.incoming().take(4) {
                let Ok(mut stream) = stream else { continue };
                let _ = read_head(&mut stream);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (format!("http://{addr}"), server)
    }

    fn get(endpoint: &str) -> io::Result<String> {
        let mut stream = TcpStream::connect(endpoint.trim_start_matches("http://"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET /b/k HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    }

    #[test]
    fn requests_pass_or_break_as_the_plan_says() {
        let (upstream, _server) = origin("0123456789");
        let proxy = FaultProxy::start(&upstream).expect("proxy");
        let passed = get(&proxy.endpoint()).expect("pass");
        assert!(passed.ends_with("\r\n\r\n0123456789"), "{passed}");
        proxy.set_plan(|r| {
            if r.index == 1 {
                Fault::SlowDown
            } else {
                Fault::CutResponse
            }
        });
        let slow = get(&proxy.endpoint()).expect("slow down");
        assert!(slow.starts_with("HTTP/1.1 503"), "{slow}");
        assert!(slow.contains("<Code>SlowDown</Code>"), "{slow}");
        let cut = get(&proxy.endpoint()).expect("cut");
        assert!(cut.contains("Content-Length: 10"), "{cut}");
        assert!(cut.ends_with("\r\n\r\n01234"), "half the body: {cut}");
        proxy.down_for(Duration::from_secs(30));
        let refused = get(&proxy.endpoint()).unwrap_or_default();
        assert_eq!(refused, "", "a down store answers nothing");
        assert_eq!(
            proxy.counts(),
            Counts {
                requests: 3,
                faults: 2,
                refused: 1
            }
        );
    }

    #[test]
    fn the_connection_header_becomes_close() {
        let head =
            "PUT /b/k HTTP/1.1\r\nHost: x\r\nconnection: keep-alive\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(
            with_connection_close(head),
            "PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(content_length(head), Some(3));
    }
}
