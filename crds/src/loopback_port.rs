//! The rendezvous port of a gang on one machine (`ferrotrain run`, the test suites): a free port
//! below the kernel's ephemeral range. A port from `bind(0)` comes from that range, which the
//! kernel also hands out as the local port of outgoing connections: in the second between the
//! choice and rank 0's listen, any connection on the machine could take it, and the gang failed
//! to rendezvous.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the search starts: above the ports services usually listen on.
const LOWEST: u16 = 20_000;
/// Linux's default ephemeral range starts here; used where the range cannot be read.
const DEFAULT_EPHEMERAL_START: u16 = 32_768;

/// Each pick in this process starts the search at another place, so that gangs started at once
/// in parallel threads or processes rarely try the same port first.
static PICKS: AtomicU32 = AtomicU32::new(0);

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_START)
}

/// A port on 127.0.0.1 that is free now and that no outgoing connection can take. Where the
/// ephemeral range leaves no room below it, a port the kernel picks.
pub fn pick() -> std::io::Result<u16> {
    let span = u32::from(ephemeral_start().saturating_sub(LOWEST));
    if span > 0 {
        let turn = PICKS.fetch_add(1, Ordering::Relaxed);
        let start = std::process::id()
            .wrapping_mul(7_919)
            .wrapping_add(turn.wrapping_mul(2_591))
            % span;
        for offset in 0..span {
            let port = LOWEST + ((start + offset) % span) as u16;
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_picked_port_is_free_and_outside_the_ephemeral_range() {
        let ephemeral = ephemeral_start();
        assert!(
            ephemeral > LOWEST,
            "this machine's range starts at {ephemeral}"
        );
        for _ in 0..32 {
            let port = pick().expect("a port");
            assert!(
                (LOWEST..ephemeral).contains(&port),
                "port {port} is in the ephemeral range from {ephemeral}"
            );
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("the port is free");
        }
    }

    #[test]
    fn a_taken_port_is_passed_over() {
        let first = pick().expect("a port");
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, first)).expect("hold it");
        for _ in 0..64 {
            assert_ne!(pick().expect("a port"), first);
        }
        drop(held);
    }
}
