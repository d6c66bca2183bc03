//! The gang's wire protocol: message kinds, words and strings on TCP streams, socket timeouts,
//! connecting with retries, and the errors a peer can cause.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

pub(crate) const MAGIC: u32 = 0x4654_524e; // "FTRN"

/// 2: every connection opens with the gang key's challenge–response (`handshake`).
pub(crate) const VERSION: u32 = 2;

pub(crate) const HELLO: u32 = 1;

pub(crate) const TABLE: u32 = 2;

pub(crate) const REJECT: u32 = 3;

pub(crate) const RING: u32 = 4;

pub(crate) const CHALLENGE: u32 = 5;

/// Why the gang could not form or a collective failed.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    /// Rank 0 could not be reached or peers did not arrive in time.
    #[error("rendezvous failed: {0}")]
    Rendezvous(String),
    /// Rank 0 refused this worker (wrong attempt, duplicate rank, different world size).
    #[error("rank 0 refused this worker: {0}")]
    Refused(String),
    /// A peer could not prove it holds the job's gang key.
    #[error("gang authentication failed: {0}")]
    Unauthenticated(String),
    /// A peer closed its connection or stopped answering.
    #[error("peer {peer} lost during {during}: {source}")]
    PeerLost {
        /// Rank of the peer.
        peer: u32,
        /// What was going on.
        during: &'static str,
        /// The socket error.
        source: std::io::Error,
    },
}

pub(crate) fn lost(peer: u32, during: &'static str, source: std::io::Error) -> CommError {
    CommError::PeerLost {
        peer,
        during,
        source,
    }
}

/// Loopback rendezvous stays on loopback; anything else listens on all interfaces (pod IPs).
pub(crate) fn bind_address(rendezvous_host: &str) -> IpAddr {
    let loopback = rendezvous_host == "localhost"
        || rendezvous_host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

pub(crate) fn configure(stream: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))
}

pub(crate) fn connect_with_retry(addr: &str, deadline: Instant) -> std::io::Result<TcpStream> {
    loop {
        let attempt = addr.to_socket_addrs().and_then(|mut addrs| {
            addrs
                .next()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
                .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)))
        });
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

pub(crate) fn write_words(stream: &mut impl Write, words: &[u32]) -> std::io::Result<()> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    stream.write_all(&bytes)
}

pub(crate) fn read_words<const N: usize>(stream: &mut impl Read) -> std::io::Result<[u32; N]> {
    let mut buf = [0u8; 4];
    let mut out = [0u32; N];
    for w in &mut out {
        stream.read_exact(&mut buf)?;
        *w = u32::from_le_bytes(buf);
    }
    Ok(out)
}

pub(crate) fn write_string(stream: &mut impl Write, s: &str) -> std::io::Result<()> {
    write_words(stream, &[s.len() as u32])?;
    stream.write_all(s.as_bytes())
}

pub(crate) fn read_string(stream: &mut impl Read) -> std::io::Result<String> {
    let [len] = read_words::<1>(stream)?;
    if len > 4096 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "string too long",
        ));
    }
    let mut buf = vec![0u8; len as usize];
    stream.read_exact(&mut buf)?;
    String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
