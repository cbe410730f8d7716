//! Connection scenarios: idle connections held open (broker memory per
//! connection) and connection churn (connects per second).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::client;
use super::procfs::{self, CpuMeter, Neighbours};
use super::report::Record;
use super::wire::{self, Version};

fn causes(tally: &BTreeMap<String, u64>) -> String {
    tally
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Opens `n` connections, `concurrency` attempts at a time, spread over source
/// addresses; holds them `hold`, pings each, and reports the broker's RSS growth per
/// connection (VmRSS after opening minus before, over the connections held).
pub async fn idle(
    addr: SocketAddr,
    version: Version,
    n: usize,
    concurrency: usize,
    hold: Duration,
    broker_pid: Option<u32>,
    tag: &str,
) -> Record {
    let rss = |pid: Option<u32>| pid.and_then(|p| procfs::status_kib(p, "VmRSS"));
    let rss_before = rss(broker_pid);
    let gate = Rc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let gate = gate.clone();
        let id = format!("bl-{tag}-idle-{i}");
        tasks.push(tokio::task::spawn_local(async move {
            let _permit = gate.acquire().await.expect("semaphore never closed");
            client::connect(
                addr,
                Some(client::spread_source(i)),
                version,
                &id,
                300,
                false,
            )
            .await
        }));
    }
    let mut held = Vec::with_capacity(n);
    let mut failures = BTreeMap::new();
    let mut first_error = None;
    for t in tasks {
        match t.await.expect("connect task panicked") {
            Ok(s) => held.push(s),
            Err(e) => {
                *failures.entry(e.cause()).or_insert(0) += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(hold).await;
    let rss_held = rss(broker_pid);

    // every held connection must still be served
    let mut pongs = 0usize;
    let mut ping_failures = 0usize;
    for chunk in held.chunks_mut(concurrency.max(1)) {
        let mut pings = Vec::new();
        for s in chunk.iter_mut() {
            pings.push(s.ping());
        }
        for p in pings {
            match p.await {
                Ok(()) => pongs += 1,
                Err(e) => {
                    ping_failures += 1;
                    first_error.get_or_insert_with(|| format!("ping: {e}"));
                }
            }
        }
    }

    let mut r = Record::default();
    let connected = held.len();
    r.push("ok", connected == n && ping_failures == 0);
    r.push("attempted", n);
    r.push("connected", connected);
    r.push("open_s", format!("{open_secs:.2}"));
    r.push("open_per_s", format!("{:.0}", connected as f64 / open_secs));
    r.push("pongs", pongs);
    r.push("ping_failures", ping_failures);
    if !failures.is_empty() {
        r.push("failures", causes(&failures));
    }
    if let (Some(b), Some(h)) = (rss_before, rss_held) {
        r.push("broker_rss_before_kib", b);
        r.push("broker_rss_held_kib", h);
        if connected > 0 {
            r.push(
                "kib_per_conn",
                format!("{:.2}", (h as f64 - b as f64) / connected as f64),
            );
        }
    }
    if let Some(hwm) = broker_pid.and_then(|p| procfs::status_kib(p, "VmHWM")) {
        r.push("broker_hwm_kib", hwm);
    }
    if let Some(e) = first_error {
        r.push_text("error", &e);
    }
    drop(held);
    r
}

/// Connection churn parameters.
#[derive(Debug, Clone, Copy)]
pub struct Churn {
    /// Connect loops running at once.
    pub concurrency: usize,
    /// Excluded from the rate.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
}

/// For the window, `concurrency` loops each connect, wait for CONNACK, send
/// DISCONNECT and close; reports completed connects per second.
pub async fn churn(
    addr: SocketAddr,
    version: Version,
    spec: Churn,
    broker_pid: Option<u32>,
    gen_stat: String,
    tag: &str,
) -> Record {
    let Churn {
        concurrency,
        warmup,
        duration,
    } = spec;
    let done = Rc::new(Cell::new(0u64));
    let failed = Rc::new(Cell::new(0u64));
    let stop = Rc::new(Cell::new(false));
    let failures = Rc::new(RefCell::new(BTreeMap::<String, u64>::new()));
    let first_error = Rc::new(RefCell::new(None::<String>));
    let mut loops = Vec::new();
    for w in 0..concurrency {
        let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
        let (failures, first_error) = (failures.clone(), first_error.clone());
        let tag = tag.to_string();
        loops.push(tokio::task::spawn_local(async move {
            let mut i = 0usize;
            let mut bye = Vec::new();
            wire::disconnect(&mut bye);
            while !stop.get() {
                let id = format!("bl-{tag}-c{w}-{i}");
                let source = client::spread_source(w + i * concurrency);
                i += 1;
                match client::connect(addr, Some(source), version, &id, 300, false).await {
                    Ok(mut s) => {
                        if s.stream.write_all(&bye).await.is_ok() {
                            done.set(done.get() + 1);
                        }
                    }
                    Err(e) => {
                        failed.set(failed.get() + 1);
                        *failures.borrow_mut().entry(e.cause()).or_insert(0) += 1;
                        first_error
                            .borrow_mut()
                            .get_or_insert_with(|| e.to_string());
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(warmup).await;
    let (d0, f0, t0) = (done.get(), failed.get(), Instant::now());
    let neighbours = Neighbours::start(broker_pid, &gen_stat);
    let gen_cpu = CpuMeter::start(gen_stat);
    let broker_cpu = broker_pid.map(|pid| CpuMeter::start(format!("/proc/{pid}/stat")));
    tokio::time::sleep(duration).await;
    let (d1, f1, secs) = (done.get(), failed.get(), t0.elapsed().as_secs_f64());
    let gen_cpu = gen_cpu.percent(secs);
    let broker_cpu = broker_cpu.and_then(|c| c.percent(secs));
    let mut r = Record::default();
    neighbours.record(&mut r, secs);
    stop.set(true);
    for l in loops {
        let _ = tokio::time::timeout(client::HANDSHAKE_TIMEOUT, l).await;
    }
    r.push("ok", f1 == 0);
    r.push("window_s", format!("{secs:.2}"));
    r.push("connects_per_s", format!("{:.0}", (d1 - d0) as f64 / secs));
    r.push("connects", d1);
    r.push("failed", f1 - f0);
    if !failures.borrow().is_empty() {
        r.push("failures", causes(&failures.borrow()));
    }
    if let Some(c) = gen_cpu {
        r.push("gen_cpu", format!("{c:.1}"));
    }
    if let Some(c) = broker_cpu {
        r.push("broker_cpu", format!("{c:.1}"));
    }
    if let Some(hwm) = broker_pid.and_then(|p| procfs::status_kib(p, "VmHWM")) {
        r.push("broker_hwm_kib", hwm);
    }
    if let Some(e) = first_error.borrow().as_ref() {
        r.push_text("error", e);
    }
    r
}
