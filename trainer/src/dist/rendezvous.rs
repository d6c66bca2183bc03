//! Rendezvous through rank 0: every rank registers its data port with rank 0, which checks the
//! attempt, world size and ranks and answers with the table of every rank's address; then each
//! rank accepts its predecessor's ring connection.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::dist::wire::{
    CommError, HELLO, MAGIC, REJECT, RING, TABLE, VERSION, configure, connect_with_retry, lost,
    read_string, read_words, write_string, write_words,
};

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
    listener
        .set_nonblocking(true)
        .map_err(|e| CommError::Rendezvous(e.to_string()))?;
    let world = cfg.world_size as usize;
    let mut table: Vec<Option<String>> = vec![None; world];
    table[0] = Some(format!("{}:{data_port}", cfg.addr));
    let mut peers: Vec<TcpStream> = Vec::new();
    while peers.len() < world - 1 {
        match listener.accept() {
            Ok((mut stream, from)) => {
                let _ = stream.set_nonblocking(false);
                let _ = configure(&stream, cfg.peer_timeout);
                match read_words::<6>(&mut stream) {
                    Ok([MAGIC, VERSION, HELLO, attempt, rank, port_and_world]) => {
                        let (port, world_size) =
                            ((port_and_world & 0xffff) as u16, port_and_world >> 16);
                        let refusal = if attempt != cfg.attempt {
                            Some(format!(
                                "attempt {attempt} is not the current attempt {}",
                                cfg.attempt
                            ))
                        } else if world_size != cfg.world_size {
                            Some(format!(
                                "world size {world_size} differs from rank 0's {}",
                                cfg.world_size
                            ))
                        } else if rank == 0
                            || rank as usize >= world
                            || table[rank as usize].is_some()
                        {
                            Some(format!("rank {rank} is invalid or already registered"))
                        } else {
                            None
                        };
                        match refusal {
                            Some(reason) => {
                                let _ = write_words(&mut stream, &[MAGIC, REJECT])
                                    .and_then(|_| write_string(&mut stream, &reason));
                            }
                            None => {
                                table[rank as usize] =
                                    Some(SocketAddr::new(from.ip(), port).to_string());
                                peers.push(stream);
                            }
                        }
                    }
                    // Not one of ours (a probe, or a different protocol version): ignore it.
                    _ => continue,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> = (1..world).filter(|r| table[*r].is_none()).collect();
                    return Err(CommError::Rendezvous(format!(
                        "ranks {missing:?} did not arrive within {}s",
                        cfg.rendezvous_timeout.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(CommError::Rendezvous(format!("accept failed: {e}"))),
        }
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
    let port_and_world = u32::from(data_port) | (cfg.world_size << 16);
    write_words(
        &mut stream,
        &[MAGIC, VERSION, HELLO, cfg.attempt, cfg.rank, port_and_world],
    )
    .map_err(|e| lost(0, "rendezvous", e))?;
    match read_words::<2>(&mut stream).map_err(|e| lost(0, "rendezvous", e))? {
        [MAGIC, TABLE] => {
            let [n] = read_words::<1>(&mut stream).map_err(|e| lost(0, "rendezvous", e))?;
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

pub(crate) fn accept_ring_peer(
    listener: &TcpListener,
    cfg: &RendezvousConfig,
    expected: u32,
    deadline: Instant,
) -> Result<TcpStream, CommError> {
    listener
        .set_nonblocking(true)
        .map_err(|e| CommError::Rendezvous(e.to_string()))?;
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let _ = stream.set_nonblocking(false);
                configure(&stream, cfg.peer_timeout)
                    .map_err(|e| lost(expected, "ring setup", e))?;
                match read_words::<4>(&mut stream) {
                    Ok([MAGIC, RING, attempt, rank])
                        if attempt == cfg.attempt && rank == expected =>
                    {
                        return Ok(stream);
                    }
                    // A stale or foreign connection: drop it and keep waiting for the real peer.
                    _ => continue,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(CommError::Rendezvous(format!(
                        "rank {expected} never connected to this rank"
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(CommError::Rendezvous(format!("accept failed: {e}"))),
        }
    }
}
