//! Result records (one `key=value ...` line per run) and the markdown table made
//! from them: rows are scenario and metric, columns are brokers, cells are medians
//! over runs, plus the ratio of each brokk column to the best peer.

use std::collections::BTreeMap;
use std::fmt::Display;

/// One run's results, in the order they were pushed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Record {
    fields: Vec<(String, String)>,
}

impl Record {
    /// Adds a field; the value must not contain spaces (see [`Record::push_text`]).
    pub fn push(&mut self, key: &str, value: impl Display) {
        self.fields.push((key.to_string(), value.to_string()));
    }

    /// Adds free text, with whitespace and `=` replaced so the line stays parseable.
    pub fn push_text(&mut self, key: &str, text: &str) {
        let clean: String = text
            .chars()
            .map(|c| {
                if c.is_whitespace() || c == '=' {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        self.push(key, clean);
    }

    /// A field's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A field's value as a number.
    pub fn num(&self, key: &str) -> Option<f64> {
        self.get(key)?.parse().ok()
    }

    /// Parses a line written by [`Record`]'s `Display`.
    pub fn parse(line: &str) -> Record {
        Record {
            fields: line
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

impl Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// A column of the table: records whose `broker=` is `key`.
#[derive(Debug, Clone)]
pub struct Column {
    /// The `broker=` value.
    pub key: String,
    /// The header.
    pub title: String,
    /// brokk itself (gets a ratio column) rather than a peer.
    pub ours: bool,
}

impl Column {
    /// Parses `key=Title` (`*` after the key marks brokk's own columns: `brokk*=brokk`).
    pub fn parse(spec: &str) -> Column {
        let (key, title) = spec.split_once('=').unwrap_or((spec, spec));
        let ours = key.ends_with('*');
        Column {
            key: key.trim_end_matches('*').to_string(),
            title: title.to_string(),
            ours,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Better {
    Higher,
    Lower,
    /// No ratio: CPU is ~100 % for every saturated broker.
    Neither,
}

struct Metric {
    label: &'static str,
    key: &'static str,
    scale: f64,
    better: Better,
}

const fn m(label: &'static str, key: &'static str, scale: f64, better: Better) -> Metric {
    Metric {
        label,
        key,
        scale,
        better,
    }
}

fn metrics(kind: &str, qos1: bool) -> Vec<Metric> {
    use Better::*;
    let tail = [
        m("broker CPU %", "broker_cpu", 1.0, Neither),
        m(
            "other load on the broker's CPU %",
            "broker_cpu_others",
            1.0,
            Neither,
        ),
        m("generator CPU %", "gen_cpu", 1.0, Neither),
        m("broker peak RSS MiB", "broker_hwm_kib", 1.0 / 1024.0, Lower),
    ];
    let mut v = match kind {
        "flow" if qos1 => vec![
            m("received msg/s", "rx_per_s", 1.0, Higher),
            m("publisher acked msg/s", "acked_per_s", 1.0, Higher),
        ],
        "flow" => vec![m("received msg/s", "rx_per_s", 1.0, Higher)],
        "latency" => vec![
            m("p50 latency µs", "p50_us", 1.0, Lower),
            m("p99 latency µs", "p99_us", 1.0, Lower),
            m("received msg/s", "rx_per_s", 1.0, Higher),
        ],
        "idle" => vec![
            m("connections held", "connected", 1.0, Higher),
            m("broker KiB per connection", "kib_per_conn", 1.0, Lower),
            m("opening rate conn/s", "open_per_s", 1.0, Higher),
        ],
        "connrate" => vec![
            m(
                "connects/s (CONNECT..CONNACK..close)",
                "connects_per_s",
                1.0,
                Higher,
            ),
            m("failed connects", "failed", 1.0, Lower),
        ],
        _ => vec![],
    };
    v.extend(tail);
    v
}

/// `1.23M`, `456k`, `12.3k`, `987`, `12.5`, `0.42`.
pub fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e5 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn sum(records: &[&Record], key: &str) -> u64 {
    records
        .iter()
        .filter_map(|r| r.num(key))
        .map(|v| v as u64)
        .sum()
}

/// The markdown table of `lines` (one [`Record`] per line; other lines ignored).
pub fn table(lines: &str, columns: &[Column]) -> String {
    let records: Vec<Record> = lines
        .lines()
        .filter(|l| l.contains("scenario="))
        .map(Record::parse)
        .collect();
    let mut order: Vec<String> = Vec::new();
    let mut by: BTreeMap<(String, String), Vec<&Record>> = BTreeMap::new();
    for r in &records {
        let (Some(s), Some(b)) = (r.get("scenario"), r.get("broker")) else {
            continue;
        };
        if !order.iter().any(|o| o == s) {
            order.push(s.to_string());
        }
        by.entry((s.to_string(), b.to_string()))
            .or_default()
            .push(r);
    }
    let ours: Vec<&Column> = columns.iter().filter(|c| c.ours).collect();
    let mut out = String::from("| scenario | metric |");
    for c in columns {
        out += &format!(" {} |", c.title);
    }
    for c in &ours {
        out += &format!(" {}/best peer |", c.title);
    }
    out += "\n|---|---|";
    for _ in 0..columns.len() + ours.len() {
        out += "---:|";
    }
    out += "\n";
    let empty = Vec::new();
    let mut ceilings = String::new();
    for scenario in &order {
        let runs = |col: &Column| {
            by.get(&(scenario.clone(), col.key.clone()))
                .unwrap_or(&empty)
        };
        let Some(first) = records.iter().find(|r| r.get("scenario") == Some(scenario)) else {
            continue;
        };
        let kind = first.get("kind").unwrap_or("flow").to_string();
        if kind == "ceiling" {
            // the generator's own limit, not a broker's: one value, below the brokers
            ceilings += &ceiling_rows(scenario, first, columns.len() + ours.len());
            continue;
        }
        let qos1 = first.get("qos") == Some("1");
        let mut label = scenario.as_str();
        for metric in metrics(&kind, qos1) {
            let values: Vec<Option<f64>> = columns
                .iter()
                .map(|c| {
                    median(runs(c).iter().filter_map(|r| r.num(metric.key)).collect())
                        .map(|v| v * metric.scale)
                })
                .collect();
            if values.iter().all(Option::is_none) {
                continue;
            }
            out += &format!("| {label} | {} |", metric.label);
            label = "";
            for v in &values {
                out += &format!(" {} |", v.map_or("—".into(), human));
            }
            let best_peer = columns
                .iter()
                .zip(&values)
                .filter(|(c, _)| !c.ours)
                .filter_map(|(_, v)| *v)
                .reduce(|a, b| match metric.better {
                    Better::Lower => a.min(b),
                    _ => a.max(b),
                });
            for c in &ours {
                let i = columns
                    .iter()
                    .position(|x| x.key == c.key)
                    .expect("own column");
                let cell = match (metric.better, values[i], best_peer) {
                    (Better::Neither, ..) => String::new(),
                    (_, Some(v), Some(p)) if p != 0.0 => format!("{:.2}", v / p),
                    _ => "—".into(),
                };
                out += &format!(" {cell} |");
            }
            out += "\n";
        }
        if matches!(kind.as_str(), "flow" | "latency") {
            out += &format!(
                "| {label} | lost / dup / reordered{} (sum of runs) |",
                if qos1 { " / unacked" } else { "" }
            );
            for c in columns {
                let r = runs(c);
                let cell = if r.is_empty() {
                    "—".to_string()
                } else {
                    let mut s = format!(
                        "{} / {} / {}",
                        sum(r, "lost"),
                        sum(r, "dup"),
                        sum(r, "reorder")
                    );
                    if qos1 {
                        s += &format!(" / {}", sum(r, "unacked"));
                    }
                    s
                };
                out += &format!(" {cell} |");
            }
            out += &" |".repeat(ours.len());
            out += "\n";
        }
        let failed: Vec<String> = columns
            .iter()
            .map(|c| {
                let r = runs(c);
                let bad: Vec<&&Record> =
                    r.iter().filter(|r| r.get("ok") == Some("false")).collect();
                match bad.first() {
                    None => String::new(),
                    Some(b) => {
                        let e = b.get("error").unwrap_or("integrity");
                        let e: String = e.chars().take(60).collect();
                        format!("{} of {} runs: {}", bad.len(), r.len(), e.replace('|', "/"))
                    }
                }
            })
            .collect();
        if failed.iter().any(|f| !f.is_empty()) {
            out += "|  | not ok |";
            for f in failed {
                out += &format!(" {f} |");
            }
            out += &" |".repeat(ours.len());
            out += "\n";
        }
    }
    out + &ceilings
}

fn ceiling_rows(scenario: &str, r: &Record, cells: usize) -> String {
    let mut out = String::new();
    let mut label = scenario;
    for (path, q) in [
        ("publish", 0),
        ("publish", 1),
        ("receive", 0),
        ("receive", 1),
    ] {
        let key = format!("{}_q{q}", &path[..3]);
        let (Some(rate), Some(cpu)) = (
            r.num(&format!("{key}_per_s")),
            r.num(&format!("{key}_gen_cpu")),
        ) else {
            continue;
        };
        let sink = r
            .num(&format!("{key}_sink_cpu"))
            .map_or(String::new(), |c| format!(", sink {c:.0} %"));
        out += &format!(
            "| {label} | {path} QoS {q}, msg/s (CPU %) | {} (generator {cpu:.0} %{sink}) |{}\n",
            human(rate),
            " |".repeat(cells - 1)
        );
        label = "";
    }
    if let (Some(rate), Some(cpu)) = (r.num("conn_per_s"), r.num("conn_gen_cpu")) {
        let sink = r
            .num("conn_sink_cpu")
            .map_or(String::new(), |c| format!(", sink {c:.0} %"));
        out += &format!(
            "| {label} | connects/s (CPU %) | {} (generator {cpu:.0} %{sink}) |{}\n",
            human(rate),
            " |".repeat(cells - 1)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_shows_the_generators_connect_rate_too() {
        let r = Record::parse(
            "scenario=generator-ceiling kind=ceiling pub_q0_per_s=4000000 pub_q0_gen_cpu=99 \
             conn_per_s=14505 conn_gen_cpu=97.9 conn_sink_cpu=93",
        );
        let rows = ceiling_rows("generator-ceiling", &r, 3);
        let lines: Vec<&str> = rows.lines().collect();
        assert_eq!(lines.len(), 2, "{rows}");
        assert!(
            lines[0].starts_with("| generator-ceiling | publish QoS 0"),
            "{rows}"
        );
        assert_eq!(
            lines[1],
            "|  | connects/s (CPU %) | 14.5k (generator 98 %, sink 93 %) | | |"
        );
    }

    #[test]
    fn records_round_trip_through_their_line() {
        let mut r = Record::default();
        r.push("scenario", "fanin-q1-v5");
        r.push("rx_per_s", 12345);
        r.push_text("error", "subscriber 0: closed = bad");
        let line = r.to_string();
        assert_eq!(Record::parse(&line), r);
        assert_eq!(r.get("error"), Some("subscriber_0:_closed___bad"));
        assert_eq!(r.num("rx_per_s"), Some(12345.0));
    }

    #[test]
    fn table_takes_medians_and_ratios_against_the_best_peer() {
        let lines = "\
scenario=f kind=flow qos=1 broker=b run=1 ok=true rx_per_s=100 acked_per_s=1 broker_hwm_kib=2048 lost=0 dup=0 reorder=0 unacked=0
scenario=f kind=flow qos=1 broker=b run=2 ok=true rx_per_s=300 acked_per_s=1 broker_hwm_kib=2048 lost=0 dup=0 reorder=0 unacked=0
scenario=f kind=flow qos=1 broker=b run=3 ok=false rx_per_s=200 acked_per_s=1 broker_hwm_kib=2048 lost=2 dup=1 reorder=0 unacked=0 error=x
scenario=f kind=flow qos=1 broker=m run=1 ok=true rx_per_s=50 acked_per_s=1 broker_hwm_kib=1024 lost=0 dup=0 reorder=0 unacked=0
scenario=f kind=flow qos=1 broker=r run=1 ok=true rx_per_s=400 acked_per_s=1 broker_hwm_kib=4096 lost=0 dup=0 reorder=0 unacked=0
noise line
";
        let cols: Vec<Column> = ["b*=brokk", "m=mosq", "r=rum"]
            .iter()
            .map(|s| Column::parse(s))
            .collect();
        let t = table(lines, &cols);
        assert!(
            t.contains("| f | received msg/s | 200 | 50 | 400 | 0.50 |"),
            "{t}"
        );
        assert!(
            t.contains("| broker peak RSS MiB | 2 | 1 | 4 | 2.00 |"),
            "{t}"
        );
        assert!(t.contains("| 2 / 1 / 0 / 0 | 0 / 0 / 0 / 0 |"), "{t}");
        assert!(t.contains("1 of 3 runs: x"), "{t}");
    }

    #[test]
    fn human_numbers() {
        assert_eq!(human(2_345_678.0), "2.35M");
        assert_eq!(human(234_567.0), "235k");
        assert_eq!(human(23_456.0), "23.5k");
        assert_eq!(human(234.4), "234");
        assert_eq!(human(0.5), "0.50");
        assert_eq!(human(3.0), "3");
    }
}
