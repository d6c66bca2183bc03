//! Gangs of ranks as threads of the benchmark process, joined by a ring on the loopback
//! interface: what every benchmark that trains uses.

use std::time::Duration;

use anyhow::Context;
use ferrotrain_crds::TrainerSpec;
use ferrotrain_trainer::data::load::Splits;
use ferrotrain_trainer::dist::handshake::GangKey;
use ferrotrain_trainer::dist::rendezvous::RendezvousConfig;
use ferrotrain_trainer::dist::ring::Ring;
use ferrotrain_trainer::train::job::{Job, Outcome, Summary};
use ferrotrain_trainer::train::steps::train;

/// Rank `rank` of a ring of `ranks` on 127.0.0.1:`port`.
pub fn loopback_ring(rank: u32, ranks: u32, port: u16) -> anyhow::Result<Ring> {
    Ok(Ring::connect(&RendezvousConfig {
        rank,
        world_size: ranks,
        attempt: 1,
        addr: "127.0.0.1".into(),
        port,
        rendezvous_timeout: Duration::from_secs(30),
        peer_timeout: Duration::from_secs(60),
        key: GangKey::new(&[7; 32], "bench").context("gang key")?,
    })?)
}

/// Trains `yaml` on `data` with `ranks` ranks of `threads_per_rank` compute threads each (0: the
/// default); the summary of rank 0.
pub fn gang(
    data: &Splits,
    rt: &tokio::runtime::Runtime,
    ranks: u32,
    threads_per_rank: usize,
    yaml: &str,
) -> anyhow::Result<Summary> {
    let spec: TrainerSpec = serde_yaml::from_str(yaml)?;
    let port = ferrotrain_crds::loopback_port::pick()?;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..ranks)
            .map(|rank| {
                let spec = spec.clone();
                let handle = rt.handle().clone();
                scope.spawn(move || -> anyhow::Result<Summary> {
                    let mut ring = loopback_ring(rank, ranks, port)?;
                    let job = Job {
                        threads: threads_per_rank,
                        ..Job::new(spec)
                    };
                    match train(job, data, &mut ring, &handle)? {
                        Outcome::Completed(s) | Outcome::Preempted(s) => Ok(s),
                    }
                })
            })
            .collect();
        let mut summaries = Vec::new();
        for h in handles {
            summaries.push(h.join().map_err(|_| anyhow::anyhow!("rank panicked"))??);
        }
        summaries.into_iter().next().context("no ranks")
    })
}
