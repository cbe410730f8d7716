//! A fixed number of routed publishes, for instruction counts under callgrind (the
//! baseline in `benches/README.md`, "Routing (broker-state)"):
//!
//! ```text
//! cargo build --release -p brokk-benches --example route_n
//! valgrind --tool=callgrind --toggle-collect='route_n::measured' \
//!     target/release/examples/route_n qos0 100000
//! ```
//!
//! `--toggle-collect` counts only the N measured publishes, not the setup or the
//! 1000 warm-up ones; divide the total by N for instructions per publish. Arguments: `qos0` or `qos1`, N,
//! optionally the number of subscribers (default 1), and `authz` to decide every
//! publish by the permission bindings of `routing::bench_policy`.

use mqtt_proto::QoS;

use brokk_benches::routing::Fanout;

fn main() {
    let mut args = std::env::args().skip(1);
    let qos = match args.next().as_deref() {
        Some("qos1") => QoS::AtLeastOnce,
        _ => QoS::AtMostOnce,
    };
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let subscribers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let policy =
        (args.next().as_deref() == Some("authz")).then(brokk_benches::routing::bench_policy);
    let authorized = policy.is_some();
    let mut f = Fanout::with_authorization(subscribers, qos, policy);
    for _ in 0..1000 {
        f.publish_once();
    }
    let before = f.deliveries();
    let bytes = measured(&mut f, n);
    println!(
        "{n} publishes at {qos:?} to {subscribers} subscriber(s){}: {} deliveries, {bytes} bytes out",
        if authorized { " with permission bindings" } else { "" },
        f.deliveries() - before
    );
}

/// The measured publishes, a function of their own for `--toggle-collect`.
#[inline(never)]
fn measured(f: &mut Fanout, n: u64) -> usize {
    let mut bytes = 0;
    for _ in 0..n {
        bytes += f.publish_once();
    }
    bytes
}
