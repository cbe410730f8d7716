//! `brokk-load`: the end-to-end load generator behind `benches/e2e/run.sh`.
//!
//! One process, one thread, one current-thread tokio runtime: every client of a
//! scenario is a task on it, so the generator's cost is a single CPU that the run
//! reports (`/proc/self/stat`), and it can be pinned away from the broker's CPU.
//! The generator speaks MQTT through its own small codec ([`wire`]), not brokk's.
//!
//! What it does not do: TLS, WebSocket, QoS 2, retained messages, sessions that
//! survive a reconnect, or anything but loopback-style single-machine runs.

pub mod account;
pub mod client;
pub mod conns;
pub mod flow;
pub mod payload;
pub mod procfs;
pub mod report;
pub mod sink;
pub mod wire;

use std::time::Duration;

use flow::{FlowSpec, Topology};
use wire::Version;

/// What a named scenario runs.
#[derive(Debug, Clone)]
pub enum Kind {
    /// A message flow.
    Flow {
        /// Who talks to whom.
        topology: Topology,
        /// Protocol version.
        version: Version,
        /// 0 or 1.
        qos: u8,
        /// Per-publisher bound on undelivered messages (0: none).
        max_lag: u64,
        /// Fixed total rate (msg/s), for latency.
        rate: Option<f64>,
    },
    /// Idle connections held open.
    Idle,
    /// Connect / CONNACK / DISCONNECT churn.
    Churn {
        /// Connect loops running at once.
        concurrency: usize,
    },
}

/// A named scenario of the suite.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name used on the command line and in the table.
    pub name: &'static str,
    /// What it runs.
    pub kind: Kind,
    /// Part of `--quick`.
    pub quick: bool,
}

impl Scenario {
    /// The `kind=` of its records, which selects the table's metrics.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            Kind::Flow { rate: Some(_), .. } => "latency",
            Kind::Flow { .. } => "flow",
            Kind::Idle => "idle",
            Kind::Churn { .. } => "connrate",
        }
    }

    /// The protocol version it speaks (a broker with one port per version needs it).
    pub fn version(&self) -> Version {
        match &self.kind {
            Kind::Flow { version, .. } => *version,
            _ => Version::V5,
        }
    }
}

/// Every scenario, in table order. 64-byte payloads throughout.
///
/// QoS 0 and QoS 1 flows are both paced by a per-publisher lag bound: a publisher
/// pauses while that many of its messages have not reached every subscriber. The
/// backlog a broker must hold is then small (a few hundred KiB at most), so a broker
/// that keeps up should lose nothing even at QoS 0, and any loss is reported.
pub fn suite() -> Vec<Scenario> {
    let flow = |topology, version, qos, max_lag| Kind::Flow {
        topology,
        version,
        qos,
        max_lag,
        rate: None,
    };
    let fanin = Topology::FanIn { pubs: 8 };
    let fanout = Topology::FanOut { subs: 100 };
    let pairs = Topology::Pairs { n: 100 };
    let s = |name, kind, quick| Scenario { name, kind, quick };
    vec![
        s("fanin-q0-v5", flow(fanin, Version::V5, 0, 256), true),
        s("fanin-q0-v4", flow(fanin, Version::V4, 0, 256), false),
        s("fanin-q1-v5", flow(fanin, Version::V5, 1, 256), true),
        s("fanin-q1-v4", flow(fanin, Version::V4, 1, 256), false),
        s("fanout-q0-v5", flow(fanout, Version::V5, 0, 1000), false),
        s("fanout-q1-v5", flow(fanout, Version::V5, 1, 1000), true),
        s("pairs-q0-v5", flow(pairs, Version::V5, 0, 100), false),
        s("pairs-q1-v5", flow(pairs, Version::V5, 1, 100), true),
        s(
            "latency-q1-v5-10k",
            Kind::Flow {
                topology: Topology::Pairs { n: 4 },
                version: Version::V5,
                qos: 1,
                max_lag: 0,
                rate: Some(10_000.0),
            },
            true,
        ),
        // Not quick: the cluster bench (benches/cluster/run.sh) asks for it.
        s(
            "latency-q0-v5-10k",
            Kind::Flow {
                topology: Topology::Pairs { n: 4 },
                version: Version::V5,
                qos: 0,
                max_lag: 0,
                rate: Some(10_000.0),
            },
            false,
        ),
        s("idle-conns", Kind::Idle, true),
        s("connect-rate", Kind::Churn { concurrency: 64 }, true),
    ]
}

/// The flow a scenario runs with these timings.
pub fn flow_spec(
    kind: &Kind,
    warmup: Duration,
    duration: Duration,
    drain: Duration,
) -> Option<FlowSpec> {
    let Kind::Flow {
        topology,
        version,
        qos,
        max_lag,
        rate,
    } = *kind
    else {
        return None;
    };
    Some(FlowSpec {
        topology,
        version,
        qos,
        payload: 64,
        warmup,
        duration,
        drain,
        // the inflight limit the peers are configured with (run.sh), so that every
        // broker gets the same window; brokk's own Receive Maximum is larger
        window: 100,
        max_lag,
        rate,
        batch: if rate.is_some() { 1 } else { 64 },
        latency: rate.is_some(),
        persistent: false,
        subscriber_addr: None,
        settle: Duration::ZERO,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_names_are_unique_and_quick_is_a_subset() {
        let all = suite();
        let mut names: Vec<_> = all.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert!(all.iter().filter(|s| s.quick).count() < all.len());
        for s in &all {
            let d = Duration::from_secs(1);
            assert_eq!(
                flow_spec(&s.kind, d, d, d).is_some(),
                matches!(s.kind, Kind::Flow { .. })
            );
        }
    }

    /// The whole generator against the in-process sink, publish and receive path:
    /// something is sent, acked and received, and nothing is misaccounted.
    #[test]
    fn generator_runs_against_the_sink() {
        let (addr, _) = sink::spawn(None);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ms = Duration::from_millis;
        for (topology, qos) in [
            (Topology::PublishOnly { pubs: 2 }, 1),
            (Topology::SinkFlood, 1),
            (Topology::SinkFlood, 0),
        ] {
            let spec = FlowSpec {
                topology,
                version: Version::V5,
                qos,
                payload: 64,
                warmup: ms(50),
                duration: ms(200),
                drain: ms(200),
                window: 16,
                max_lag: 0,
                rate: None,
                batch: 8,
                latency: false,
                persistent: false,
                subscriber_addr: None,
                settle: Duration::ZERO,
            };
            let r = tokio::task::LocalSet::new().block_on(
                &rt,
                flow::run(spec, addr, None, "/proc/self/stat".into(), "t"),
            );
            assert_eq!(r.get("errors"), Some("0"), "{r}");
            assert_eq!(r.get("misrouted"), Some("0"), "{r}");
            assert_eq!(r.get("foreign"), Some("0"), "{r}");
            if topology == Topology::SinkFlood {
                assert!(r.num("rx_per_s").unwrap() > 0.0, "{r}");
            } else {
                assert!(r.num("acked_per_s").unwrap() > 0.0, "{r}");
                assert_eq!(r.get("unacked"), Some("0"), "{r}");
            }
        }
    }
}
