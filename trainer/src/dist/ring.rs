//! The ring all-reduce (reduce-scatter then all-gather) over plain TCP, in fp32 or with bfloat16
//! on the wire. Every socket has a timeout, so a dead peer becomes a clean error instead of a hang.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::dist::rendezvous::{
    RendezvousConfig, accept_ring_peer, connect_ring_peer, join_rendezvous, serve_rendezvous,
};
use crate::dist::wire::{CommError, bind_address, lost};
use ferrotrain_crds::GradientCompression;

/// A formed ring: connections to the next and previous rank.
pub struct Ring {
    rank: u32,
    world: u32,
    next: Option<TcpStream>,
    prev: Option<TcpStream>,
    scratch: Vec<f32>,
    /// bfloat16 chunks on their way out and in.
    wire: Vec<u16>,
    /// How long a collective waits for a peer that makes no progress.
    timeout: Duration,
}

impl Ring {
    /// A ring of one: collectives are no-ops.
    pub fn single() -> Self {
        Self {
            rank: 0,
            world: 1,
            next: None,
            prev: None,
            scratch: Vec::new(),
            wire: Vec::new(),
            timeout: Duration::MAX,
        }
    }

    /// This rank.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// World size.
    pub fn world_size(&self) -> u32 {
        self.world
    }

    /// Forms the ring: every rank registers with rank 0, learns the others' data addresses and
    /// connects to its successor.
    pub fn connect(cfg: &RendezvousConfig) -> Result<Self, CommError> {
        if cfg.world_size <= 1 {
            return Ok(Self::single());
        }
        let bind_ip = bind_address(&cfg.addr);
        let data_listener = TcpListener::bind((bind_ip, 0)).map_err(|e| {
            CommError::Rendezvous(format!("cannot open a data port on {bind_ip}: {e}"))
        })?;
        let data_port = data_listener
            .local_addr()
            .map_err(|e| CommError::Rendezvous(e.to_string()))?
            .port();
        let deadline = Instant::now() + cfg.rendezvous_timeout;
        let table = if cfg.rank == 0 {
            serve_rendezvous(cfg, bind_ip, data_port, deadline)?
        } else {
            join_rendezvous(cfg, data_port, deadline)?
        };
        let next_rank = (cfg.rank + 1) % cfg.world_size;
        let prev_rank = (cfg.rank + cfg.world_size - 1) % cfg.world_size;
        // Accepting runs beside connecting: each handshake waits for the other side's answer,
        // and every rank connects before it would otherwise accept.
        let give_up = AtomicBool::new(false);
        let (next, prev) = std::thread::scope(|scope| {
            let accepting =
                scope.spawn(|| accept_ring_peer(data_listener, cfg, prev_rank, deadline, &give_up));
            let next = connect_ring_peer(cfg, next_rank, &table[next_rank as usize], deadline);
            if next.is_err() {
                give_up.store(true, Ordering::SeqCst);
            }
            let prev = accepting.join().unwrap_or_else(|_| {
                Err(CommError::Rendezvous(
                    "the thread accepting the ring connection failed".into(),
                ))
            });
            (next, prev)
        });
        let (next, prev) = (next?, prev?);
        Ok(Self {
            rank: cfg.rank,
            world: cfg.world_size,
            next: Some(next),
            prev: Some(prev),
            scratch: Vec::new(),
            wire: Vec::new(),
            timeout: cfg.peer_timeout,
        })
    }

    /// Replaces every rank's `bytes` with rank 0's, passed along the ring.
    pub fn broadcast(&mut self, bytes: &mut Vec<u8>) -> Result<(), CommError> {
        let (Some(next), Some(prev)) = (&self.next, &self.prev) else {
            return Ok(());
        };
        let prev_rank = (self.rank + self.world - 1) % self.world;
        if self.rank != 0 {
            let mut prev = prev;
            let mut len = [0u8; 8];
            prev.read_exact(&mut len)
                .map_err(|e| lost(prev_rank, "broadcast", e))?;
            bytes.resize(u64::from_le_bytes(len) as usize, 0);
            prev.read_exact(bytes)
                .map_err(|e| lost(prev_rank, "broadcast", e))?;
        }
        if self.rank + 1 != self.world {
            let mut next = next;
            let sent = next
                .write_all(&(bytes.len() as u64).to_le_bytes())
                .and_then(|_| next.write_all(bytes));
            sent.map_err(|e| lost(self.rank + 1, "broadcast", e))?;
        }
        Ok(())
    }

    /// Sums `data` element-wise across all ranks; every rank ends with the same result.
    pub fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        self.all_reduce(data, GradientCompression::None)
    }

    /// [`Ring::all_reduce_sum`] with the values on the wire encoded as `encoding`: with bf16, each
    /// partial sum travels as bfloat16 and is added in fp32, and the finished sums are rounded to
    /// bfloat16 on every rank alike, so all ranks still end with the same values.
    pub fn all_reduce(
        &mut self,
        data: &mut [f32],
        encoding: GradientCompression,
    ) -> Result<(), CommError> {
        let (Some(next), Some(prev)) = (&self.next, &self.prev) else {
            return Ok(());
        };
        let w = self.world as usize;
        let r = self.rank as usize;
        let len = data.len();
        let bounds = move |i: usize| (len * i / w, len * (i + 1) / w);
        let (prev_rank, next_rank) = (
            (self.rank + self.world - 1) % self.world,
            (self.rank + 1) % self.world,
        );
        let largest = (0..w).map(|i| bounds(i).1 - bounds(i).0).max().unwrap_or(0);
        self.scratch.resize(largest, 0.0);
        let peers = Peers {
            next,
            prev,
            next_rank,
            prev_rank,
            timeout: self.timeout,
            one_thread: largest * std::mem::size_of::<f32>() < PARALLEL_COPY_BYTES,
        };
        let (scratch, wire) = (&mut self.scratch, &mut self.wire);
        let mut run = |peers: &Peers<'_>| match encoding {
            GradientCompression::None => {
                reduce_scatter_all_gather(peers, data, scratch, r, w, bounds)
            }
            GradientCompression::Bf16 => {
                wire.resize(2 * largest, 0);
                reduce_scatter_all_gather_bf16(peers, data, wire, r, w, bounds)
            }
        };
        if !peers.one_thread {
            return run(&peers);
        }
        // Non-blocking while one thread moves both directions; blocking again afterwards.
        let result = peers.set_nonblocking(true).and_then(|()| run(&peers));
        let restored = peers.set_nonblocking(false);
        result.and(restored)
    }
}

/// Chunks from this size on are sent and received by two threads (see [`Peers::exchange`]).
const PARALLEL_COPY_BYTES: usize = 4 << 20;

/// The two ring connections of a collective.
struct Peers<'a> {
    next: &'a TcpStream,
    prev: &'a TcpStream,
    next_rank: u32,
    prev_rank: u32,
    timeout: Duration,
    /// Chunks are small: this thread sends and receives, on non-blocking sockets.
    one_thread: bool,
}

impl Peers<'_> {
    fn set_nonblocking(&self, on: bool) -> Result<(), CommError> {
        self.next
            .set_nonblocking(on)
            .map_err(|e| lost(self.next_rank, "all-reduce", e))?;
        self.prev
            .set_nonblocking(on)
            .map_err(|e| lost(self.prev_rank, "all-reduce", e))
    }

    /// Sends `outgoing` to the next rank while receiving `incoming` from the previous one, so
    /// that neither side blocks on a full socket buffer. A chunk of a few hundred kilobytes (a
    /// small model's gradient) moves on this thread, which saves a thread start per ring step;
    /// a large one is sent by a second thread, so that the kernel copies both directions on two
    /// cores at once.
    fn exchange(&self, out: &[u8], inb: &mut [u8]) -> Result<(), CommError> {
        if self.one_thread {
            return self.pump(out, inb);
        }
        std::thread::scope(|scope| {
            let sender = scope.spawn(move || {
                let mut next = self.next;
                next.write_all(out)
            });
            let mut prev = self.prev;
            let received = prev.read_exact(inb);
            let sent = sender
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("sender thread panicked")));
            received.map_err(|e| lost(self.prev_rank, "all-reduce", e))?;
            sent.map_err(|e| lost(self.next_rank, "all-reduce", e))
        })
    }

    /// Writes `out` to the next rank and reads `inb` from the previous one on non-blocking
    /// sockets, whatever each takes, waiting in poll(2) only when neither can move.
    fn pump(&self, out: &[u8], inb: &mut [u8]) -> Result<(), CommError> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::io::ErrorKind;
        use std::os::fd::AsFd;
        let (mut sent, mut received) = (0, 0);
        let (mut next, mut prev) = (self.next, self.prev);
        while sent < out.len() || received < inb.len() {
            let wrote = if sent < out.len() {
                moved_bytes(
                    next.write(&out[sent..]),
                    self.next_rank,
                    ErrorKind::WriteZero,
                )?
            } else {
                0
            };
            let read = if received < inb.len() {
                let result = prev.read(&mut inb[received..]);
                moved_bytes(result, self.prev_rank, ErrorKind::UnexpectedEof)?
            } else {
                0
            };
            (sent, received) = (sent + wrote, received + read);
            if wrote + read > 0 {
                continue;
            }
            let mut fds = Vec::with_capacity(2);
            if sent < out.len() {
                fds.push(PollFd::new(self.next.as_fd(), PollFlags::POLLOUT));
            }
            if received < inb.len() {
                fds.push(PollFd::new(self.prev.as_fd(), PollFlags::POLLIN));
            }
            let wait = PollTimeout::try_from(self.timeout).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, wait) {
                // Nothing moved for the whole timeout: the peer we wait to hear from is gone.
                Ok(0) => {
                    let peer = if received < inb.len() {
                        self.prev_rank
                    } else {
                        self.next_rank
                    };
                    return Err(lost(peer, "all-reduce", ErrorKind::TimedOut.into()));
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(lost(self.prev_rank, "all-reduce", e.into())),
            }
        }
        Ok(())
    }
}

/// Bytes one non-blocking write or read moved: none when the socket is not ready; a peer that
/// took or sent nothing at all (`closed`) is lost.
fn moved_bytes(
    result: std::io::Result<usize>,
    peer: u32,
    closed: std::io::ErrorKind,
) -> Result<usize, CommError> {
    use std::io::ErrorKind;
    match result {
        Ok(0) => Err(lost(peer, "all-reduce", closed.into())),
        Ok(n) => Ok(n),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(0),
        Err(e) => Err(lost(peer, "all-reduce", e)),
    }
}

/// Reduce-scatter then all-gather of `data` over the ring, chunk `i` spanning `bounds(i)`.
fn reduce_scatter_all_gather(
    peers: &Peers<'_>,
    data: &mut [f32],
    scratch: &mut [f32],
    r: usize,
    w: usize,
    bounds: impl Fn(usize) -> (usize, usize),
) -> Result<(), CommError> {
    {
        // Reduce-scatter: after w-1 steps rank r holds the full sum of chunk (r+1) mod w.
        for s in 0..w - 1 {
            let send = (r + w - s) % w;
            let recv = (r + w - s - 1) % w;
            let (ss, se) = bounds(send);
            let (rs, re) = bounds(recv);
            let incoming = &mut scratch[..re - rs];
            peers.exchange(
                bytemuck::cast_slice(&data[ss..se]),
                bytemuck::cast_slice_mut(incoming),
            )?;
            for (d, x) in data[rs..re].iter_mut().zip(incoming.iter()) {
                *d += x;
            }
        }
        // All-gather: pass the finished chunks around the ring.
        for s in 0..w - 1 {
            let send = (r + 1 + w - s) % w;
            let recv = (r + w - s) % w;
            let (ss, se) = bounds(send);
            let (rs, re) = bounds(recv);
            let (outgoing, incoming) = disjoint(data, (ss, se), (rs, re));
            peers.exchange(
                bytemuck::cast_slice(outgoing),
                bytemuck::cast_slice_mut(incoming),
            )?;
        }
        Ok(())
    }
}

/// The ring of [`reduce_scatter_all_gather`] with bfloat16 on the wire; `wire` holds two chunks.
fn reduce_scatter_all_gather_bf16(
    peers: &Peers<'_>,
    data: &mut [f32],
    wire: &mut [u16],
    r: usize,
    w: usize,
    bounds: impl Fn(usize) -> (usize, usize),
) -> Result<(), CommError> {
    let (outgoing, incoming) = wire.split_at_mut(wire.len() / 2);
    let mut step = |send: (usize, usize), recv: (usize, usize), data: &mut [f32], add: bool| {
        let (out, inb) = (
            &mut outgoing[..send.1 - send.0],
            &mut incoming[..recv.1 - recv.0],
        );
        for (o, &v) in out.iter_mut().zip(&data[send.0..send.1]) {
            *o = to_bf16(v);
        }
        peers.exchange(bytemuck::cast_slice(out), bytemuck::cast_slice_mut(inb))?;
        for (d, &x) in data[recv.0..recv.1].iter_mut().zip(inb.iter()) {
            *d = if add { *d + from_bf16(x) } else { from_bf16(x) };
        }
        Ok(())
    };
    for s in 0..w - 1 {
        step(
            bounds((r + w - s) % w),
            bounds((r + w - s - 1) % w),
            data,
            true,
        )?;
    }
    // This rank's finished chunk, rounded as the other ranks will receive it.
    let (fs, fe) = bounds((r + 1) % w);
    for v in &mut data[fs..fe] {
        *v = from_bf16(to_bf16(*v));
    }
    for s in 0..w - 1 {
        step(
            bounds((r + 1 + w - s) % w),
            bounds((r + w - s) % w),
            data,
            false,
        )?;
    }
    Ok(())
}

/// fp32 → bfloat16, rounded to nearest even; NaN stays NaN.
fn to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    let rounding = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

fn from_bf16(v: u16) -> f32 {
    f32::from_bits(u32::from(v) << 16)
}

fn disjoint(
    data: &mut [f32],
    (ss, se): (usize, usize),
    (rs, re): (usize, usize),
) -> (&[f32], &mut [f32]) {
    if ss < rs {
        let (left, right) = data.split_at_mut(rs);
        (&left[ss..se], &mut right[..re - rs])
    } else {
        let (left, right) = data.split_at_mut(ss);
        (&right[..se - ss], &mut left[rs..re])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::handshake::GangKey;

    fn free_port() -> u16 {
        ferrotrain_crds::loopback_port::pick().expect("free port")
    }

    fn config(rank: u32, world: u32, attempt: u32, port: u16) -> RendezvousConfig {
        RendezvousConfig {
            rank,
            world_size: world,
            attempt,
            addr: "127.0.0.1".into(),
            port,
            rendezvous_timeout: Duration::from_secs(10),
            peer_timeout: Duration::from_secs(5),
            key: test_key(),
        }
    }

    fn test_key() -> GangKey {
        GangKey::new(&[42; 32], "ring-test").expect("key")
    }

    fn run_ring(world: u32, len: usize) -> Vec<Vec<f32>> {
        run_ring_with(world, len, GradientCompression::None)
    }

    fn run_ring_with(world: u32, len: usize, encoding: GradientCompression) -> Vec<Vec<f32>> {
        let port = free_port();
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                std::thread::spawn(move || {
                    let mut ring =
                        Ring::connect(&config(rank, world, 1, port)).expect("ring forms");
                    let mut data: Vec<f32> =
                        (0..len).map(|i| (i as f32) * (rank as f32 + 1.0)).collect();
                    ring.all_reduce(&mut data, encoding).expect("all-reduce");
                    let mut message = if rank == 0 {
                        b"from rank 0".to_vec()
                    } else {
                        Vec::new()
                    };
                    ring.broadcast(&mut message).expect("broadcast");
                    assert_eq!(message, b"from rank 0");
                    data
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(from_bf16(0x3f80), 1.0);
        // Exactly half a bfloat16 step above 1 goes to the even neighbour (1), more goes up.
        assert_eq!(to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        assert_eq!(to_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20)), 0x3f81);
        assert_eq!(to_bf16(-2.5), 0xc020);
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        assert_eq!(from_bf16(to_bf16(f32::MAX)), f32::INFINITY);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(
            to_bf16(1e-40),
            0x0001,
            "subnormals keep their nearest bfloat16"
        );
    }

    /// With bf16 on the wire every rank still ends with the same values, each within the
    /// rounding of a few bfloat16 steps of the exact sum.
    #[test]
    fn a_bf16_all_reduce_agrees_on_every_rank() {
        for (world, len) in [(2, 10), (3, 1001), (4, 7), (2, 300_000)] {
            let results = run_ring_with(world, len, GradientCompression::Bf16);
            let factor: f32 = (1..=world).map(|r| r as f32).sum();
            for data in &results {
                assert_eq!(data, &results[0], "world {world} len {len}: ranks differ");
            }
            for (i, &got) in results[0].iter().enumerate() {
                let exact = i as f32 * factor;
                assert_eq!(got, from_bf16(to_bf16(got)), "a finished sum is a bfloat16");
                assert!(
                    (got - exact).abs() <= exact * world as f32 * 2f32.powi(-8),
                    "world {world} element {i}: {got} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn all_reduce_sums_across_ranks() {
        // Beyond the socket buffers (the poll path waits), and chunks of 6 MB (two threads).
        for (world, len) in [
            (2, 10),
            (3, 7),
            (4, 1001),
            (3, 2),
            (2, 300_000),
            (2, 3_000_000),
        ] {
            let results = run_ring(world, len);
            let factor: f32 = (1..=world).map(|r| r as f32).sum();
            for data in &results {
                let expected: Vec<f32> = (0..len).map(|i| i as f32 * factor).collect();
                assert_eq!(data, &expected, "world {world} len {len}");
            }
        }
    }

    #[test]
    fn a_worker_of_another_attempt_is_refused() {
        let port = free_port();
        let rank0 = std::thread::spawn(move || {
            let mut cfg = config(0, 2, 2, port);
            cfg.rendezvous_timeout = Duration::from_secs(2);
            Ring::connect(&cfg).err().map(|e| e.to_string())
        });
        let stale = Ring::connect(&config(1, 2, 1, port));
        assert!(
            matches!(stale, Err(CommError::Refused(ref m)) if m.contains("attempt 1")),
            "{:?}",
            stale.err()
        );
        let rank0 = rank0.join().expect("thread");
        assert!(rank0.is_some_and(|e| e.contains("did not arrive")));
    }

    /// Outsiders knock on rank 0 before the real rank 1 arrives: a client of the old protocol, a
    /// silent one, one that answers the challenge without the key, a holder of another job's key,
    /// and a holder of this key replaying an earlier attempt. None gets a place in the gang, none
    /// delays it past the handshake timeout, and the sums are bit-identical to an undisturbed run.
    #[test]
    fn outsiders_cannot_join_and_the_gang_result_is_unchanged() {
        use crate::dist::handshake::{Hello, connect};
        use crate::dist::wire::{CHALLENGE, HELLO, MAGIC, VERSION, read_words, write_words};
        use std::io::Write as _;

        let (world, len) = (2, 1001);
        let undisturbed = run_ring(world, len);
        let port = free_port();
        let ranks: Vec<_> = [0, 1]
            .into_iter()
            .map(|rank| {
                std::thread::spawn(move || {
                    if rank == 1 {
                        // Arrives after the outsiders have tried.
                        std::thread::sleep(Duration::from_millis(800));
                    }
                    let mut ring = Ring::connect(&config(rank, world, 2, port))?;
                    let mut data: Vec<f32> =
                        (0..len).map(|i| (i as f32) * (rank as f32 + 1.0)).collect();
                    ring.all_reduce_sum(&mut data)?;
                    Ok::<_, CommError>(data)
                })
            })
            .collect();
        let target = format!("127.0.0.1:{port}");
        let reach = || {
            crate::dist::wire::connect_with_retry(&target, Instant::now() + Duration::from_secs(5))
                .expect("rank 0 listens")
        };
        let claim = |attempt| Hello {
            kind: HELLO,
            attempt,
            rank: 1,
            extra: 40000 | (world << 16),
        };
        let closed_without_table = |stream: &mut TcpStream| {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
            assert!(rest.is_empty(), "an outsider received {rest:?}");
        };

        // The protocol before authentication: a hello with no nonce.
        let mut old = reach();
        write_words(&mut old, &[MAGIC, 1, HELLO, 2, 1, 40000 | (world << 16)]).expect("write");
        // Connected and silent.
        let _silent = reach();
        // Answers the challenge with a made-up proof.
        let mut forger = reach();
        let mut opening = Vec::new();
        for word in [MAGIC, VERSION, HELLO, 2, 1, 40000 | (world << 16)] {
            opening.extend_from_slice(&word.to_le_bytes());
        }
        opening.extend_from_slice(&[9; 32]);
        forger.write_all(&opening).expect("write");
        let [magic, kind] = read_words::<2>(&mut forger).expect("challenge");
        assert_eq!((magic, kind), (MAGIC, CHALLENGE));
        let mut challenge = [0u8; 64];
        forger.read_exact(&mut challenge).expect("nonce and proof");
        forger.write_all(&[0; 32]).expect("forged proof");
        closed_without_table(&mut forger);
        // Another job's key: it cannot verify rank 0, and rank 0 never sees a proof.
        let foreign = GangKey::new(&[1; 32], "ring-test").expect("key");
        let mut other_job = reach();
        let refused = connect(&mut other_job, &foreign, claim(2), 0);
        assert!(refused.is_err(), "{refused:?}");
        // The right key, an earlier attempt.
        let mut stale = reach();
        let refused = connect(&mut stale, &test_key(), claim(1), 0);
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("attempt 1")),
            "{refused:?}"
        );
        closed_without_table(&mut old);

        let results: Vec<Vec<f32>> = ranks
            .into_iter()
            .map(|h| h.join().expect("thread").expect("the real gang forms"))
            .collect();
        for (rank, data) in results.iter().enumerate() {
            let same_bits = data
                .iter()
                .zip(&undisturbed[rank])
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same_bits && data.len() == len, "rank {rank} differs");
        }
    }

    #[test]
    fn a_peer_that_stops_answering_times_out() {
        let port = free_port();
        let peer = std::thread::spawn(move || {
            let ring = Ring::connect(&config(1, 2, 1, port)).expect("ring forms");
            // Holds its connections open and never takes part; its end after 8 s would be an
            // end of file, not the 5 s timeout of the test configuration.
            std::thread::sleep(Duration::from_secs(8));
            drop(ring);
        });
        let mut ring = Ring::connect(&config(0, 2, 1, port)).expect("ring forms");
        let mut data = vec![1.0f32; 1 << 20];
        let err = ring
            .all_reduce_sum(&mut data)
            .expect_err("the peer never answers");
        assert!(
            matches!(&err, CommError::PeerLost { peer: 1, source, .. } if source.kind() == std::io::ErrorKind::TimedOut),
            "{err}"
        );
        peer.join().expect("thread");
    }

    #[test]
    fn a_dead_peer_is_an_error_not_a_hang() {
        let port = free_port();
        let peer = std::thread::spawn(move || {
            let ring = Ring::connect(&config(1, 2, 1, port)).expect("ring forms");
            drop(ring);
        });
        let mut ring = Ring::connect(&config(0, 2, 1, port)).expect("ring forms");
        peer.join().expect("thread");
        let mut data = vec![1.0f32; 1024];
        let err = ring.all_reduce_sum(&mut data).expect_err("peer is gone");
        assert!(matches!(err, CommError::PeerLost { peer: 1, .. }), "{err}");
    }
}
