//! Mutual authentication of every connection between ranks: a challenge–response with
//! HMAC-SHA-256 over both sides' nonces, the job, the attempt and both ranks, keyed by the job's
//! gang key (a Secret only the job's pods mount). The key never crosses the wire; a peer without
//! it, of another job, or replaying a handshake of another connection or attempt is refused.
//!
//! The connector opens with its hello and a nonce; the acceptor answers with its nonce and its
//! proof; the connector checks that proof (so a rank never trusts a table or gradients from an
//! impostor) and sends its own. Distinct labels for the two proofs keep one side's proof from
//! ever serving as the other's.

use std::io::{Read, Write};
use std::time::Duration;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::dist::wire::{
    CHALLENGE, CommError, MAGIC, REJECT, VERSION, read_string, read_words, write_string,
    write_words,
};

/// Bytes in a nonce and in a proof.
const NONCE_BYTES: usize = 32;

/// Shortest key material accepted (256 bits).
pub const MIN_KEY_BYTES: usize = 32;

/// Longest key material read from a file.
const MAX_KEY_BYTES: usize = 4096;

/// How long an accepted connection has to complete its handshake. A silent or slow client is
/// dropped after this, and handshakes run beside each other, so none can hold the gang up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The job's shared secret and the job it belongs to.
#[derive(Clone)]
pub struct GangKey {
    key: hmac::Key,
    job: String,
}

impl std::fmt::Debug for GangKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GangKey").field("job", &self.job).finish()
    }
}

/// Why a gang key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("gang key {path} is unreadable: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The key is too short or too long.
    #[error("gang key {path} holds {len} bytes; it must hold {MIN_KEY_BYTES} to {MAX_KEY_BYTES}")]
    Length {
        /// The file.
        path: String,
        /// Its length after trimming.
        len: usize,
    },
}

impl GangKey {
    /// A key from secret material (at least [`MIN_KEY_BYTES`]) for the job `job` (its UID, or
    /// namespace/name where there is none).
    pub fn new(material: &[u8], job: &str) -> Option<Self> {
        (material.len() >= MIN_KEY_BYTES).then(|| Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, material),
            job: job.to_string(),
        })
    }

    /// The key in the file at `path` (surrounding whitespace ignored).
    pub fn from_file(path: &str, job: &str) -> Result<Self, KeyError> {
        let read = std::fs::File::open(path).and_then(|f| {
            let mut bytes = Vec::new();
            f.take(MAX_KEY_BYTES as u64 + 1).read_to_end(&mut bytes)?;
            Ok(bytes)
        });
        let bytes = read.map_err(|source| KeyError::Unreadable {
            path: path.into(),
            source,
        })?;
        let material = bytes.trim_ascii();
        if material.len() > MAX_KEY_BYTES {
            return Err(KeyError::Length {
                path: path.into(),
                len: material.len(),
            });
        }
        Self::new(material, job).ok_or(KeyError::Length {
            path: path.into(),
            len: material.len(),
        })
    }

    /// A fresh random key (tests and benchmarks).
    pub fn random(job: &str) -> Option<Self> {
        let mut material = [0u8; 32];
        SystemRandom::new().fill(&mut material).ok()?;
        Self::new(&material, job)
    }

    /// What a proof covers: who proves, the job, the hello, who accepts and both nonces.
    fn transcript(
        &self,
        role: Role,
        hello: &Hello,
        acceptor_rank: u32,
        nonces: &Nonces,
    ) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(128 + self.job.len());
        bytes.extend_from_slice(role.label());
        bytes.extend_from_slice(&(self.job.len() as u32).to_le_bytes());
        bytes.extend_from_slice(self.job.as_bytes());
        for word in hello.words().into_iter().chain([acceptor_rank]) {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        bytes.extend_from_slice(&nonces.connector);
        bytes.extend_from_slice(&nonces.acceptor);
        bytes
    }

    fn proof(&self, role: Role, hello: &Hello, acceptor_rank: u32, nonces: &Nonces) -> hmac::Tag {
        hmac::sign(
            &self.key,
            &self.transcript(role, hello, acceptor_rank, nonces),
        )
    }

    /// Constant-time comparison with the expected proof.
    fn verify(
        &self,
        role: Role,
        hello: &Hello,
        acceptor_rank: u32,
        nonces: &Nonces,
        proof: &[u8],
    ) -> bool {
        let transcript = self.transcript(role, hello, acceptor_rank, nonces);
        hmac::verify(&self.key, &transcript, proof).is_ok()
    }
}

#[derive(Clone, Copy)]
enum Role {
    Acceptor,
    Connector,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Acceptor => b"ferrotrain gang v2 acceptor",
            Role::Connector => b"ferrotrain gang v2 connector",
        }
    }
}

/// What a connecting rank says about itself: the kind of connection, its attempt and rank, and
/// one word whose meaning the kind gives (the rendezvous carries its data port and world size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    pub kind: u32,
    pub attempt: u32,
    pub rank: u32,
    pub extra: u32,
}

impl Hello {
    fn words(&self) -> [u32; 4] {
        [self.kind, self.attempt, self.rank, self.extra]
    }
}

struct Nonces {
    connector: [u8; NONCE_BYTES],
    acceptor: [u8; NONCE_BYTES],
}

fn nonce() -> std::io::Result<[u8; NONCE_BYTES]> {
    let mut bytes = [0u8; NONCE_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| std::io::Error::other("no system randomness for a nonce"))?;
    Ok(bytes)
}

/// Connector's side: says `hello`, checks that the acceptor (expected to be `acceptor_rank`)
/// holds the key, and proves that this side does too.
pub(crate) fn connect<S: Read + Write>(
    stream: &mut S,
    key: &GangKey,
    hello: Hello,
    acceptor_rank: u32,
) -> Result<(), HandshakeError> {
    let connector = nonce()?;
    let mut opening = Vec::with_capacity(6 * 4 + NONCE_BYTES);
    for word in [MAGIC, VERSION] {
        opening.extend_from_slice(&word.to_le_bytes());
    }
    for word in hello.words() {
        opening.extend_from_slice(&word.to_le_bytes());
    }
    opening.extend_from_slice(&connector);
    stream.write_all(&opening)?;
    match read_words::<2>(stream)? {
        [MAGIC, CHALLENGE] => {}
        [MAGIC, REJECT] => {
            return Err(HandshakeError::Refused(
                read_string(stream).unwrap_or_default(),
            ));
        }
        other => {
            return Err(HandshakeError::Protocol(format!(
                "unexpected reply {other:?}"
            )));
        }
    }
    let mut acceptor = [0u8; NONCE_BYTES];
    stream.read_exact(&mut acceptor)?;
    let mut proof = [0u8; NONCE_BYTES];
    stream.read_exact(&mut proof)?;
    let nonces = Nonces {
        connector,
        acceptor,
    };
    if !key.verify(Role::Acceptor, &hello, acceptor_rank, &nonces, &proof) {
        return Err(HandshakeError::BadProof);
    }
    let mine = key.proof(Role::Connector, &hello, acceptor_rank, &nonces);
    stream.write_all(mine.as_ref())?;
    Ok(())
}

/// Acceptor's side, as rank `acceptor_rank`: reads the connector's hello, lets `screen` refuse
/// it with a reason (sent back before any proof), then runs the challenge–response. Returns the
/// authenticated hello.
pub(crate) fn accept<S: Read + Write>(
    stream: &mut S,
    key: &GangKey,
    acceptor_rank: u32,
    screen: impl FnOnce(&Hello) -> Option<String>,
) -> Result<Hello, HandshakeError> {
    let [magic, version, kind, attempt, rank, extra] = read_words::<6>(stream)?;
    if magic != MAGIC || version != VERSION {
        return Err(HandshakeError::Protocol(format!(
            "not a Ferrotrain gang peer of protocol version {VERSION} (magic {magic:#x}, version {version})"
        )));
    }
    let hello = Hello {
        kind,
        attempt,
        rank,
        extra,
    };
    let mut connector = [0u8; NONCE_BYTES];
    stream.read_exact(&mut connector)?;
    if let Some(reason) = screen(&hello) {
        write_words(stream, &[MAGIC, REJECT])?;
        write_string(stream, &reason)?;
        return Err(HandshakeError::Refused(reason));
    }
    let nonces = Nonces {
        connector,
        acceptor: nonce()?,
    };
    let proof = key.proof(Role::Acceptor, &hello, acceptor_rank, &nonces);
    let mut challenge = Vec::with_capacity(8 + 2 * NONCE_BYTES);
    for word in [MAGIC, CHALLENGE] {
        challenge.extend_from_slice(&word.to_le_bytes());
    }
    challenge.extend_from_slice(&nonces.acceptor);
    challenge.extend_from_slice(proof.as_ref());
    stream.write_all(&challenge)?;
    let mut answer = [0u8; NONCE_BYTES];
    stream.read_exact(&mut answer)?;
    if !key.verify(Role::Connector, &hello, acceptor_rank, &nonces, &answer) {
        return Err(HandshakeError::BadProof);
    }
    Ok(hello)
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// The other side sent something that is not our protocol.
    #[error("{0}")]
    Protocol(String),
    /// The acceptor refused the hello (another attempt, world size or rank).
    #[error("{0}")]
    Refused(String),
    /// The other side does not hold this job's gang key (or replayed another handshake).
    #[error("the peer could not prove it holds this job's gang key")]
    BadProof,
    /// The connection failed or timed out.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl HandshakeError {
    /// As a gang error, blaming `peer` for a broken connection.
    pub(crate) fn into_comm(self, peer: u32, during: &'static str) -> CommError {
        match self {
            HandshakeError::Io(e) => CommError::PeerLost {
                peer,
                during,
                source: e,
            },
            HandshakeError::Refused(reason) => CommError::Refused(reason),
            HandshakeError::BadProof => CommError::Unauthenticated(format!(
                "rank {peer} could not prove it holds this job's gang key during {during}"
            )),
            HandshakeError::Protocol(m) => CommError::Rendezvous(format!("rank {peer}: {m}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// One end of an in-memory duplex: reads what the other end wrote.
    struct Pipe {
        inbox: std::sync::mpsc::Receiver<Vec<u8>>,
        outbox: std::sync::mpsc::Sender<Vec<u8>>,
        pending: VecDeque<u8>,
        sent: Vec<u8>,
    }

    fn pipes() -> (Pipe, Pipe) {
        let (a_tx, a_rx) = std::sync::mpsc::channel();
        let (b_tx, b_rx) = std::sync::mpsc::channel();
        let end = |inbox, outbox| Pipe {
            inbox,
            outbox,
            pending: VecDeque::new(),
            sent: Vec::new(),
        };
        (end(a_rx, b_tx), end(b_rx, a_tx))
    }

    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            while self.pending.is_empty() {
                match self.inbox.recv_timeout(Duration::from_secs(2)) {
                    Ok(bytes) => self.pending.extend(bytes),
                    Err(_) => return Ok(0),
                }
            }
            let n = buf.len().min(self.pending.len());
            for (slot, byte) in buf.iter_mut().zip(self.pending.drain(..n)) {
                *slot = byte;
            }
            Ok(n)
        }
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.sent.extend_from_slice(buf);
            let _ = self.outbox.send(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn hello(attempt: u32) -> Hello {
        Hello {
            kind: crate::dist::wire::RING,
            attempt,
            rank: 1,
            extra: 0,
        }
    }

    fn key(material: u8) -> GangKey {
        GangKey::new(&[material; 32], "job-uid").expect("key")
    }

    /// Runs both sides; returns (connector's result, acceptor's result, connector's bytes sent).
    fn handshake(
        connector_key: GangKey,
        acceptor_key: GangKey,
        said: Hello,
        acceptor_attempt: u32,
    ) -> (
        Result<(), HandshakeError>,
        Result<Hello, HandshakeError>,
        Vec<u8>,
    ) {
        let (mut a, mut b) = pipes();
        let acceptor = std::thread::spawn(move || {
            accept(&mut b, &acceptor_key, 0, |h| {
                (h.attempt != acceptor_attempt).then(|| format!("attempt {}", h.attempt))
            })
        });
        let connected = connect(&mut a, &connector_key, said, 0);
        (connected, acceptor.join().expect("thread"), a.sent)
    }

    #[test]
    fn both_sides_with_the_key_agree() {
        let (connected, accepted, _) = handshake(key(7), key(7), hello(3), 3);
        assert!(connected.is_ok(), "{connected:?}");
        assert_eq!(accepted.expect("accepted"), hello(3));
    }

    #[test]
    fn a_wrong_key_is_refused_on_both_sides() {
        let (connected, accepted, _) = handshake(key(1), key(2), hello(3), 3);
        assert!(matches!(connected, Err(HandshakeError::BadProof)));
        // The connector hung up without a proof: the acceptor never admits it.
        assert!(accepted.is_err());
    }

    #[test]
    fn another_job_with_the_same_key_material_is_refused() {
        let other = GangKey::new(&[7; 32], "other-uid").expect("key");
        let (connected, accepted, _) = handshake(other, key(7), hello(3), 3);
        assert!(matches!(connected, Err(HandshakeError::BadProof)));
        assert!(accepted.is_err());
    }

    #[test]
    fn a_client_without_the_protocol_is_dropped() {
        let (mut a, mut b) = pipes();
        let acceptor = std::thread::spawn(move || accept(&mut b, &key(7), 0, |_| None));
        a.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        assert!(matches!(
            acceptor.join().expect("thread"),
            Err(HandshakeError::Protocol(_))
        ));
    }

    /// A recorded handshake replayed verbatim (same attempt or an earlier one) never passes: the
    /// acceptor's fresh nonce makes the recorded proof worthless.
    #[test]
    fn a_replayed_handshake_is_refused() {
        let (connected, accepted, recorded) = handshake(key(7), key(7), hello(3), 3);
        assert!(connected.is_ok() && accepted.is_ok());
        for acceptor_attempt in [3, 4] {
            let (mut a, mut b) = pipes();
            let acceptor = std::thread::spawn(move || {
                accept(&mut b, &key(7), 0, |h| {
                    (h.attempt != acceptor_attempt).then(|| "another attempt".to_string())
                })
            });
            a.write_all(&recorded).expect("replay");
            let result = acceptor.join().expect("thread");
            assert!(
                matches!(
                    result,
                    Err(HandshakeError::BadProof | HandshakeError::Refused(_))
                ),
                "attempt {acceptor_attempt}: {result:?}"
            );
        }
    }

    #[test]
    fn key_material_is_bounded_below() {
        assert!(GangKey::new(&[1; 31], "j").is_none());
        let dir = std::env::temp_dir().join(format!("ferrotrain-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let short = dir.join("short");
        std::fs::write(&short, "abc\n").expect("write");
        let err = GangKey::from_file(&short.display().to_string(), "j").expect_err("short");
        assert!(err.to_string().contains("holds 3 bytes"), "{err}");
        let good = dir.join("good");
        std::fs::write(&good, format!("{}\n", "ab".repeat(32))).expect("write");
        assert!(GangKey::from_file(&good.display().to_string(), "j").is_ok());
        let _ = std::fs::remove_dir_all(dir);
        assert!(!format!("{:?}", key(9)).contains("9"));
    }
}
