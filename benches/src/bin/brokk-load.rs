//! `brokk-load`: drives an MQTT broker with the end-to-end scenarios of
//! `benches/e2e/run.sh` and prints one `key=value` record per run; `report` turns
//! the records into the markdown table. See `benches/README.md`.

#[path = "../load/mod.rs"]
mod load;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use load::flow::{self, Topology};
use load::procfs::CpuMeter;
use load::report::{self, Column, Record};
use load::wire::Version;
use load::{conns, sink, Kind};

#[derive(Parser)]
#[command(
    name = "brokk-load",
    about = "End-to-end MQTT load generator for brokk and its peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the scenario names, one per line
    List {
        /// Only the `--quick` subset
        #[arg(long)]
        quick: bool,
    },
    /// Run one scenario against a broker and print its record
    Run(RunArgs),
    /// The generator's own ceiling against the in-process sink: publish and receive
    /// paths, QoS 0 and 1
    Ceiling {
        /// Seconds measured per path
        #[arg(long, default_value_t = 2.0)]
        duration: f64,
        /// CPU the sink thread is pinned to (the generator should run on another)
        #[arg(long, default_value_t = 0)]
        sink_cpu: usize,
        /// CPU this (generator) thread is pinned to
        #[arg(long)]
        gen_cpu: Option<usize>,
        /// `key=value` fields added to the record (repeatable)
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
    },
    /// Run the do-nothing sink (CONNACK to CONNECT, PINGRESP, PUBACK; routes nothing)
    /// on a loopback port until killed: a reference server for other generators
    /// (`mqtt-load conns -P PORT`)
    Sink {
        #[arg(long, default_value_t = 1883)]
        port: u16,
        /// CPU the sink thread is pinned to
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Wait until a broker answers CONNECT with CONNACK (exit 0) or time runs out
    Probe {
        #[arg(long, default_value = "127.0.0.1")]
        host: IpAddr,
        #[arg(long)]
        port: u16,
        /// Protocol level, 4 or 5
        #[arg(long, default_value_t = 5)]
        proto: u8,
        /// Seconds to keep trying
        #[arg(long, default_value_t = 10.0)]
        wait: f64,
    },
    /// Markdown table of the records in FILE: median of runs per broker
    Report {
        file: std::path::PathBuf,
        /// A column, `broker=Title`; a `*` after the broker marks brokk's own columns,
        /// which get a ratio to the best of the others (repeatable, in order)
        #[arg(long = "column", value_name = "BROKER=TITLE", required = true)]
        columns: Vec<String>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Scenario name (see `list`)
    scenario: String,
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Broker port (every protocol version, unless --port5 is given)
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Port for MQTT 5 clients, for brokers with one listener per version
    #[arg(long)]
    port5: Option<u16>,
    /// Broker process, sampled for CPU and memory
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Run the scenario's publishers against the in-process sink instead of a
    /// broker (nothing is routed, so there are no subscribers)
    #[arg(long)]
    sink: bool,
    /// Seconds before the measured window
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds measured
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Longest wait in seconds for outstanding messages afterwards
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Override the scenario's per-publisher lag bound (0: pure flood)
    #[arg(long)]
    max_lag: Option<u64>,
    /// Override the QoS 1 in-flight window per publisher (capped by the broker's
    /// Receive Maximum)
    #[arg(long)]
    window: Option<u16>,
    /// Subscribers keep persistent sessions (Session Expiry Interval 3600 s; 3.1.1:
    /// clean session 0): with a durable broker, QoS 1 messages for them are written
    /// to disk before they are acknowledged
    #[arg(long)]
    persistent: bool,
    /// Subscribers connect to this port instead (another node of a brokk
    /// cluster: the cross-node case); the flow waits `--settle` seconds after
    /// subscribing so that the interest reaches the publishers' node
    #[arg(long)]
    sub_port: Option<u16>,
    /// Seconds between subscribing and publishing with --sub-port
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Connections opened by idle-conns
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
    /// `key=value` fields added to the record (repeatable), e.g. broker=mosquitto
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn local_runtime<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    tokio::task::LocalSet::new().block_on(&rt, f)
}

/// Ends the process with a failed record if a run overstays `limit`: a broker that
/// stops answering must not hang the whole suite.
fn watchdog(limit: Duration, head: Record) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        let mut r = head;
        r.push("ok", false);
        r.push_text("error", &format!("watchdog: run exceeded {limit:?}"));
        println!("{r}");
        std::process::exit(3);
    });
}

fn run(args: RunArgs) -> ExitCode {
    let Some(scenario) = load::suite().into_iter().find(|s| s.name == args.scenario) else {
        eprintln!(
            "brokk-load: unknown scenario {:?}; `brokk-load list` names them",
            args.scenario
        );
        return ExitCode::from(2);
    };
    let mut head = Record::default();
    head.push("scenario", scenario.name);
    head.push("kind", scenario.kind_name());
    for t in &args.tags {
        if let Some((k, v)) = t.split_once('=') {
            head.push_text(k, v);
        }
    }
    if let Kind::Flow { qos, version, .. } = &scenario.kind {
        head.push("qos", qos);
        head.push("proto", version.level());
    }
    let port = match scenario.version() {
        Version::V5 => args.port5.unwrap_or(args.port),
        Version::V4 => args.port,
    };
    let mut addr = SocketAddr::new(args.host, port);
    let (warmup, duration, drain) = (secs(args.warmup), secs(args.duration), secs(args.drain));
    let mut gen_stat = "/proc/self/stat".to_string();
    watchdog(
        warmup + duration + drain + Duration::from_secs(90),
        head.clone(),
    );
    let tag = format!("{}-{}", scenario.name, std::process::id());
    let body = local_runtime(async {
        match &scenario.kind {
            Kind::Flow { .. } => {
                let mut spec = load::flow_spec(&scenario.kind, warmup, duration, drain)
                    .expect("flow scenario");
                if let Some(lag) = args.max_lag {
                    spec.max_lag = lag;
                }
                if let Some(window) = args.window {
                    spec.window = window;
                }
                spec.persistent = args.persistent;
                spec.subscriber_addr = args.sub_port.map(|p| SocketAddr::new(args.host, p));
                spec.settle = secs(if args.sub_port.is_some() {
                    args.settle
                } else {
                    0.0
                });
                if args.sink {
                    let (sink_addr, _) = sink::spawn(None);
                    addr = sink_addr;
                    // the sink is a thread of this process: count the main thread only
                    gen_stat = format!("/proc/self/task/{}/stat", std::process::id());
                    let pubs = match spec.topology {
                        Topology::FanOut { .. } => 1,
                        Topology::FanIn { pubs } | Topology::PublishOnly { pubs } => pubs,
                        Topology::Pairs { n } => n,
                        Topology::SinkFlood => 0,
                    };
                    spec.topology = Topology::PublishOnly { pubs };
                    spec.max_lag = 0;
                    spec.latency = false;
                }
                flow::run(spec, addr, args.broker_pid, gen_stat.clone(), &tag).await
            }
            Kind::Idle => {
                conns::idle(
                    addr,
                    Version::V5,
                    args.conns,
                    100,
                    Duration::from_secs(1),
                    args.broker_pid,
                    &tag,
                )
                .await
            }
            Kind::Churn { concurrency } => {
                conns::churn(
                    addr,
                    Version::V5,
                    conns::Churn {
                        concurrency: *concurrency,
                        warmup,
                        duration,
                    },
                    args.broker_pid,
                    gen_stat.clone(),
                    &tag,
                )
                .await
            }
        }
    });
    let ok = body.get("ok") == Some("true");
    println!("{head} sink={} {body}", args.sink);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn ceiling(duration: f64, sink_cpu: usize, gen_cpu: Option<usize>, tags: Vec<String>) -> ExitCode {
    let (addr, sink_tid) = sink::spawn(Some(sink_cpu));
    let sink_stat = format!("/proc/self/task/{sink_tid}/stat");
    if let Some(cpu) = gen_cpu {
        if let Err(e) = sink::pin_current_thread(cpu) {
            eprintln!("brokk-load: could not pin the generator to CPU {cpu}: {e}");
        }
    }
    let gen_stat = format!("/proc/self/task/{}/stat", std::process::id());
    let mut r = Record::default();
    r.push("scenario", "generator-ceiling");
    r.push("kind", "ceiling");
    for t in &tags {
        if let Some((k, v)) = t.split_once('=') {
            r.push_text(k, v);
        }
    }
    let mut ok = true;
    for (topology, path) in [
        (Topology::PublishOnly { pubs: 8 }, "pub"),
        (Topology::SinkFlood, "rec"),
    ] {
        for qos in [0u8, 1] {
            let spec = flow::FlowSpec {
                topology,
                version: Version::V5,
                qos,
                payload: 64,
                warmup: secs(0.5),
                duration: secs(duration),
                drain: secs(2.0),
                window: 1024,
                max_lag: 0,
                rate: None,
                batch: 64,
                latency: false,
                persistent: false,
                subscriber_addr: None,
                settle: Duration::ZERO,
            };
            let sink_cpu = CpuMeter::start(sink_stat.clone());
            let started = std::time::Instant::now();
            let one = local_runtime(flow::run(spec, addr, None, gen_stat.clone(), "ceiling"));
            // over the whole run (warm-up and drain included): a hint whether the
            // sink, not the generator, was the limit
            if let Some(c) = sink_cpu.percent(started.elapsed().as_secs_f64()) {
                r.push(&format!("{path}_q{qos}_sink_cpu"), format!("{c:.1}"));
            }
            let rate = if path == "pub" {
                "sent_per_s"
            } else {
                "rx_per_s"
            };
            ok &= one.get("errors") == Some("0");
            r.push(
                &format!("{path}_q{qos}_per_s"),
                one.get(rate).unwrap_or("0"),
            );
            r.push(
                &format!("{path}_q{qos}_gen_cpu"),
                one.get("gen_cpu").unwrap_or("0"),
            );
        }
    }
    // Connects: the connect-rate scenario's loops (CONNECT, CONNACK, DISCONNECT,
    // close) against the sink, which does nothing else per connection.
    let sink_cpu = CpuMeter::start(sink_stat.clone());
    let started = std::time::Instant::now();
    let churn = conns::Churn {
        concurrency: 64,
        warmup: secs(0.5),
        duration: secs(duration),
    };
    let one = local_runtime(conns::churn(
        addr,
        Version::V5,
        churn,
        None,
        gen_stat.clone(),
        "ceiling",
    ));
    if let Some(c) = sink_cpu.percent(started.elapsed().as_secs_f64()) {
        r.push("conn_sink_cpu", format!("{c:.1}"));
    }
    ok &= one.get("failed") == Some("0");
    r.push("conn_per_s", one.get("connects_per_s").unwrap_or("0"));
    r.push("conn_gen_cpu", one.get("gen_cpu").unwrap_or("0"));
    r.push("ok", ok);
    println!("{r}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::List { quick } => {
            for s in load::suite().iter().filter(|s| s.quick || !quick) {
                println!("{} {}", s.name, s.version().level());
            }
            ExitCode::SUCCESS
        }
        Command::Run(args) => run(args),
        Command::Ceiling {
            duration,
            sink_cpu,
            gen_cpu,
            tags,
        } => ceiling(duration, sink_cpu, gen_cpu, tags),
        Command::Sink { port, cpu } => {
            let (addr, _) = sink::spawn_on(cpu, port);
            println!("sink listening on {addr}");
            loop {
                std::thread::park();
            }
        }
        Command::Probe {
            host,
            port,
            proto,
            wait,
        } => {
            let version = if proto == 5 { Version::V5 } else { Version::V4 };
            match local_runtime(load::client::probe(
                SocketAddr::new(host, port),
                version,
                secs(wait),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("brokk-load probe: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Report { file, columns } => match std::fs::read_to_string(&file) {
            Ok(text) => {
                let columns: Vec<Column> = columns.iter().map(|c| Column::parse(c)).collect();
                print!("{}", report::table(&text, &columns));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("brokk-load report: cannot read {}: {e}", file.display());
                ExitCode::from(1)
            }
        },
    }
}
