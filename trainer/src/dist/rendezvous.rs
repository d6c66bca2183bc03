//! Rendezvous through rank 0: every rank registers its data port with rank 0, which checks the
//! attempt, world size and ranks and answers with the table of every rank's address; then each
//! rank accepts its predecessor's ring connection. Every accepted connection is authenticated on
//! a thread of its own (`handshake`), so a silent or hostile client never holds the gang up.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::dist::handshake::{self, GangKey, HANDSHAKE_TIMEOUT, Hello};
use crate::dist::wire::{
    CommError, HELLO, MAGIC, REJECT, RING, TABLE, configure, connect_with_retry, lost, read_string,
    read_words, write_string, write_words,
};

/// Handshakes in progress at once; connections beyond are closed at once.
const MAX_PENDING_HANDSHAKES: usize = 32;

/// Where and how to meet the other ranks.
#[derive(Clone, Debug)]
pub struct RendezvousConfig {
    /// This rank.
    pub rank: u32,
    /// World size.
    pub world_size: u32,
    /// Gang attempt; peers must match it.
    pub attempt: u32,
    /// Rank 0's host.
    pub addr: String,
    /// Rank 0's rendezvous port.
    pub port: u16,
    /// How long to wait for the gang to form.
    pub rendezvous_timeout: Duration,
    /// How long a collective may wait on a peer.
    pub peer_timeout: Duration,
    /// The job's shared secret: every connection between ranks proves it holds it.
    pub key: GangKey,
}

/// Refuses a hello with a reason, before any proof is exchanged.
type Screen = Arc<dyn Fn(&Hello) -> Option<String> + Send + Sync>;

/// The listener's connections that passed the handshake, with what they said and where they
/// came from.
struct Authenticated {
    listener: TcpListener,
    passed: mpsc::Receiver<(TcpStream, Hello, SocketAddr)>,
    sender: mpsc::Sender<(TcpStream, Hello, SocketAddr)>,
    pending: Arc<AtomicUsize>,
    key: GangKey,
    rank: u32,
    screen: Screen,
}

impl Authenticated {
    fn new(
        listener: TcpListener,
        cfg: &RendezvousConfig,
        screen: impl Fn(&Hello) -> Option<String> + Send + Sync + 'static,
    ) -> Result<Self, CommError> {
        listener
            .set_nonblocking(true)
            .map_err(|e| CommError::Rendezvous(e.to_string()))?;
        let (sender, passed) = mpsc::channel();
        Ok(Self {
            listener,
            passed,
            sender,
            pending: Arc::new(AtomicUsize::new(0)),
            key: cfg.key.clone(),
            rank: cfg.rank,
            screen: Arc::new(screen),
        })
    }

    /// The next authenticated connection, or `None` at the deadline or once `give_up` is set.
    fn next(
        &self,
        deadline: Instant,
        give_up: &AtomicBool,
    ) -> Result<Option<(TcpStream, Hello)>, CommError> {
        loop {
            if let Ok((stream, hello, _)) = self.passed.try_recv() {
                return Ok(Some((stream, hello)));
            }
            match self.listener.accept() {
                Ok((stream, from)) => self.authenticate(stream, from),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline || give_up.load(Ordering::SeqCst) {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(CommError::Rendezvous(format!("accept failed: {e}"))),
            }
        }
    }

    fn authenticate(&self, mut stream: TcpStream, from: SocketAddr) {
        if self.pending.fetch_add(1, Ordering::SeqCst) >= MAX_PENDING_HANDSHAKES {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(peer = %from, "too many handshakes in progress; connection closed");
            return;
        }
        let (key, rank, screen) = (self.key.clone(), self.rank, self.screen.clone());
        let (sender, pending) = (self.sender.clone(), self.pending.clone());
        std::thread::spawn(move || {
            let outcome = stream
                .set_nonblocking(false)
                .and_then(|()| configure(&stream, HANDSHAKE_TIMEOUT))
                .map_err(handshake::HandshakeError::from)
                .and_then(|()| handshake::accept(&mut stream, &key, rank, |h| screen(h)));
            pending.fetch_sub(1, Ordering::SeqCst);
            match outcome {
                Ok(hello) => {
                    let _ = sender.send((stream, hello, from));
                }
                Err(e) => {
                    tracing::warn!(peer = %from, error = %e, "refused a connection to the gang");
                }
            }
        });
    }
}

/// Rank 0: collect every other rank's hello, then send everyone the table of data addresses.
pub(crate) fn serve_rendezvous(
    cfg: &RendezvousConfig,
    bind_ip: IpAddr,
    data_port: u16,
    deadline: Instant,
) -> Result<Vec<String>, CommError> {
    let listener = TcpListener::bind((bind_ip, cfg.port)).map_err(|e| {
        CommError::Rendezvous(format!(
            "rank 0 cannot listen on {bind_ip}:{}: {e}",
            cfg.port
        ))
    })?;
    let (attempt, world_size) = (cfg.attempt, cfg.world_size);
    let incoming = Authenticated::new(listener, cfg, move |hello| {
        let said_world = hello.extra >> 16;
        if hello.kind != HELLO {
            Some("rank 0 expects a rendezvous hello".into())
        } else if hello.attempt != attempt {
            Some(format!(
                "attempt {} is not the current attempt {attempt}",
                hello.attempt
            ))
        } else if said_world != world_size {
            Some(format!(
                "world size {said_world} differs from rank 0's {world_size}"
            ))
        } else if hello.rank == 0 || hello.rank >= world_size {
            Some(format!("rank {} is invalid", hello.rank))
        } else {
            None
        }
    })?;
    let world = cfg.world_size as usize;
    let mut table: Vec<Option<String>> = vec![None; world];
    table[0] = Some(format!("{}:{data_port}", cfg.addr));
    let mut peers: Vec<TcpStream> = Vec::new();
    while peers.len() < world - 1 {
        let Some((mut stream, hello)) = incoming.next(deadline, &AtomicBool::new(false))? else {
            let missing: Vec<usize> = (1..world).filter(|r| table[*r].is_none()).collect();
            return Err(CommError::Rendezvous(format!(
                "ranks {missing:?} did not arrive within {}s",
                cfg.rendezvous_timeout.as_secs()
            )));
        };
        let rank = hello.rank as usize;
        let from = stream.peer_addr();
        if table[rank].is_some() {
            let _ = write_words(&mut stream, &[MAGIC, REJECT]).and_then(|_| {
                write_string(&mut stream, &format!("rank {rank} is already registered"))
            });
            continue;
        }
        let Ok(from) = from else { continue };
        let _ = configure(&stream, cfg.peer_timeout);
        table[rank] = Some(SocketAddr::new(from.ip(), (hello.extra & 0xffff) as u16).to_string());
        peers.push(stream);
    }
    let table: Vec<String> = table.into_iter().map(Option::unwrap_or_default).collect();
    for mut peer in peers {
        let sent = write_words(&mut peer, &[MAGIC, TABLE, table.len() as u32])
            .and_then(|_| table.iter().try_for_each(|a| write_string(&mut peer, a)));
        sent.map_err(|e| CommError::Rendezvous(format!("sending the table failed: {e}")))?;
    }
    Ok(table)
}

/// Rank k > 0: register with rank 0 and receive the table.
pub(crate) fn join_rendezvous(
    cfg: &RendezvousConfig,
    data_port: u16,
    deadline: Instant,
) -> Result<Vec<String>, CommError> {
    let target = format!("{}:{}", cfg.addr, cfg.port);
    let mut stream = connect_with_retry(&target, deadline)
        .map_err(|e| CommError::Rendezvous(format!("cannot reach rank 0 at {target}: {e}")))?;
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    configure(&stream, wait).map_err(|e| lost(0, "rendezvous", e))?;
    let hello = Hello {
        kind: HELLO,
        attempt: cfg.attempt,
        rank: cfg.rank,
        extra: u32::from(data_port) | (cfg.world_size << 16),
    };
    handshake::connect(&mut stream, &cfg.key, hello, 0)
        .map_err(|e| e.into_comm(0, "rendezvous"))?;
    match read_words::<2>(&mut stream).map_err(|e| lost(0, "rendezvous", e))? {
        [MAGIC, TABLE] => {
            let [n] = read_words::<1>(&mut stream).map_err(|e| lost(0, "rendezvous", e))?;
            if n != cfg.world_size {
                return Err(CommError::Rendezvous(format!(
                    "rank 0 sent a table of {n} ranks for a world of {}",
                    cfg.world_size
                )));
            }
            (0..n)
                .map(|_| read_string(&mut stream).map_err(|e| lost(0, "rendezvous", e)))
                .collect()
        }
        [MAGIC, REJECT] => Err(CommError::Refused(
            read_string(&mut stream).unwrap_or_default(),
        )),
        other => Err(CommError::Rendezvous(format!(
            "unexpected reply {other:?} from rank 0"
        ))),
    }
}

/// Connects to the ring's next rank `next_rank` at `addr` and proves this rank's membership.
pub(crate) fn connect_ring_peer(
    cfg: &RendezvousConfig,
    next_rank: u32,
    addr: &str,
    deadline: Instant,
) -> Result<TcpStream, CommError> {
    let mut next = connect_with_retry(addr, deadline).map_err(|e| {
        CommError::Rendezvous(format!("cannot reach rank {next_rank} at {addr}: {e}"))
    })?;
    configure(&next, cfg.peer_timeout).map_err(|e| lost(next_rank, "ring setup", e))?;
    let hello = Hello {
        kind: RING,
        attempt: cfg.attempt,
        rank: cfg.rank,
        extra: 0,
    };
    handshake::connect(&mut next, &cfg.key, hello, next_rank)
        .map_err(|e| e.into_comm(next_rank, "ring setup"))?;
    Ok(next)
}

/// Waits for the ring's previous rank `expected` to connect and authenticate.
pub(crate) fn accept_ring_peer(
    listener: TcpListener,
    cfg: &RendezvousConfig,
    expected: u32,
    deadline: Instant,
    give_up: &AtomicBool,
) -> Result<TcpStream, CommError> {
    let attempt = cfg.attempt;
    let incoming = Authenticated::new(listener, cfg, move |hello| {
        (hello.kind != RING || hello.attempt != attempt || hello.rank != expected).then(|| {
            format!(
                "this rank waits for rank {expected} of attempt {attempt}, not rank {} of attempt {}",
                hello.rank, hello.attempt
            )
        })
    })?;
    let Some((stream, _)) = incoming.next(deadline, give_up)? else {
        return Err(CommError::Rendezvous(format!(
            "rank {expected} never connected to this rank"
        )));
    };
    configure(&stream, cfg.peer_timeout).map_err(|e| lost(expected, "ring setup", e))?;
    Ok(stream)
}
