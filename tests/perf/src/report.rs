//! Medians of the recorded rounds, the comparison table, the targets, and
//! `docs/performance.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context as _;

/// `(section, target, metric)` → the value of every round, in order.
pub type Results = BTreeMap<(String, String, String), Vec<f64>>;

/// Reads `round<TAB>section<TAB>target<TAB>metric<TAB>value` lines (blank lines and `#`
/// comments skipped); a malformed line is an error naming its line number.
pub fn parse_results(text: &str) -> anyhow::Result<Results> {
    let mut results = Results::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [_round, section, target, metric, value] = fields.as_slice() else {
            anyhow::bail!(
                "results line {}: expected 5 tab-separated fields",
                index + 1
            );
        };
        let value: f64 = value
            .trim()
            .parse()
            .with_context(|| format!("results line {}: value {value:?}", index + 1))?;
        results
            .entry((section.to_string(), target.to_string(), metric.to_string()))
            .or_default()
            .push(value);
    }
    Ok(results)
}

/// The median of the rounds (the mean of the middle two for an even count); NaN rounds (a
/// figure a tool could not give) are left out.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

struct Figures<'a>(&'a Results);

impl Figures<'_> {
    /// Median over rounds, except error counts, which are summed: one error in any round
    /// matters.
    fn get(&self, section: &str, target: &str, metric: &str) -> Option<f64> {
        let values = self
            .0
            .get(&(section.to_string(), target.to_string(), metric.to_string()))?;
        if metric == "bad" {
            Some(values.iter().filter(|v| !v.is_nan()).sum())
        } else {
            median(values)
        }
    }
}

/// Where a column's figure comes from: `(section, target)`.
type Source = Option<(&'static str, &'static str)>;

struct Row {
    label: &'static str,
    metric: &'static str,
    direct: Source,
    strait: Source,
    haproxy: Source,
    nginx: Source,
}

const fn row(
    label: &'static str,
    metric: &'static str,
    direct: Source,
    strait: Source,
    haproxy: Source,
    nginx: Source,
) -> Row {
    Row {
        label,
        metric,
        direct,
        strait,
        haproxy,
        nginx,
    }
}

/// The load-test metrics, in table order.
const METRICS: [&str; 5] = ["rps", "p50_ms", "p99_ms", "cpu_us", "bad"];

/// How busy the proxy's core and the load's core were, for the pinned runs.
const CORE_METRICS: [&str; 2] = ["proxy_core_busy_pct", "load_core_busy_pct"];

fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    // Pinned to one core with one worker each, then as deployed: unpinned, a worker per CPU.
    // The pinned runs also say which core capped them (`cores_busy` in run.sh).
    type Labels = [&'static str; 5];
    let labels: [(&'static str, Labels, &[&'static str]); 4] = [
        (
            "h1",
            [
                "HTTP/1.1 req/s",
                "HTTP/1.1 p50 ms",
                "HTTP/1.1 p99 ms",
                "HTTP/1.1 proxy CPU µs/req",
                "HTTP/1.1 errors + non-2xx (all rounds)",
            ],
            &[
                "HTTP/1.1 proxy core busy %",
                "HTTP/1.1 load core busy % (wrk and the backend)",
            ],
        ),
        (
            "h2c",
            [
                "h2c req/s",
                "h2c p50 ms",
                "h2c p99 ms",
                "h2c proxy CPU µs/req",
                "h2c errors + non-2xx (all rounds)",
            ],
            &[
                "h2c proxy core busy %",
                "h2c load core busy % (h2load and the backend)",
            ],
        ),
        (
            "h1-percpu",
            [
                "HTTP/1.1, unpinned, a worker per CPU: req/s",
                "HTTP/1.1, unpinned, a worker per CPU: p50 ms",
                "HTTP/1.1, unpinned, a worker per CPU: p99 ms",
                "HTTP/1.1, unpinned, a worker per CPU: proxy CPU µs/req",
                "HTTP/1.1, unpinned, a worker per CPU: errors + non-2xx",
            ],
            &[],
        ),
        (
            "h2c-percpu",
            [
                "h2c, unpinned, a worker per CPU: req/s",
                "h2c, unpinned, a worker per CPU: p50 ms",
                "h2c, unpinned, a worker per CPU: p99 ms",
                "h2c, unpinned, a worker per CPU: proxy CPU µs/req",
                "h2c, unpinned, a worker per CPU: errors + non-2xx",
            ],
            &[],
        ),
    ];
    for (section, names, cores) in labels {
        let cores = cores.iter().copied().zip(CORE_METRICS);
        for (label, metric) in names.into_iter().zip(METRICS).chain(cores) {
            rows.push(row(
                label,
                metric,
                (metric != "cpu_us" && metric != "proxy_core_busy_pct")
                    .then_some((section, "direct")),
                Some((section, "strait")),
                Some((section, "haproxy")),
                Some((section, "nginx")),
            ));
        }
    }
    // A mesh path against pod-to-pod traffic measured in the same section.
    let mesh_in = |section, label, metric, target| {
        row(
            label,
            metric,
            Some((section, "pod")),
            Some((section, target)),
            None,
            None,
        )
    };
    let mesh = |label, metric, target| mesh_in("mesh", label, metric, target);
    rows.push(mesh(
        "mesh: client→node→waypoint→node→server req/s",
        "rps",
        "waypoint",
    ));
    rows.push(mesh("mesh: waypoint path p50 ms", "p50_ms", "waypoint"));
    rows.push(mesh("mesh: waypoint path p99 ms", "p99_ms", "waypoint"));
    rows.push(mesh(
        "mesh: waypoint path CPU µs/req (nodes+waypoint)",
        "cpu_us",
        "waypoint",
    ));
    rows.push(mesh(
        "mesh: waypoint path errors + non-2xx",
        "bad",
        "waypoint",
    ));
    rows.push(mesh(
        "mesh: client→node→node→server (HBONE) req/s",
        "rps",
        "hbone",
    ));
    rows.push(mesh("mesh: HBONE path p50 ms", "p50_ms", "hbone"));
    rows.push(mesh("mesh: HBONE path p99 ms", "p99_ms", "hbone"));
    rows.push(mesh(
        "mesh: HBONE path CPU µs/req (node)",
        "cpu_us",
        "hbone",
    ));
    rows.push(mesh("mesh: HBONE path errors + non-2xx", "bad", "hbone"));
    // The proxies restarted unpinned, at 4 connections: with their default single runtime
    // worker, then with a worker per CPU.
    let light: [(&'static str, &'static str, [&'static str; 5]); 4] = [
        (
            "mesh-light",
            "hbone",
            [
                "mesh, unpinned, 1 worker, 4 conns: HBONE path req/s",
                "mesh, unpinned, 1 worker, 4 conns: HBONE path p50 ms",
                "mesh, unpinned, 1 worker, 4 conns: HBONE path p99 ms",
                "mesh, unpinned, 1 worker, 4 conns: HBONE path CPU µs/req (node)",
                "mesh, unpinned, 1 worker, 4 conns: HBONE errors + non-2xx",
            ],
        ),
        (
            "mesh-light",
            "waypoint",
            [
                "mesh, unpinned, 1 worker, 4 conns: waypoint path req/s",
                "mesh, unpinned, 1 worker, 4 conns: waypoint path p50 ms",
                "mesh, unpinned, 1 worker, 4 conns: waypoint path p99 ms",
                "mesh, unpinned, 1 worker, 4 conns: waypoint path CPU µs/req (nodes+waypoint)",
                "mesh, unpinned, 1 worker, 4 conns: waypoint errors + non-2xx",
            ],
        ),
        (
            "mesh-light-percpu",
            "hbone",
            [
                "mesh, unpinned, a worker per CPU, 4 conns: HBONE path req/s",
                "mesh, unpinned, a worker per CPU, 4 conns: HBONE path p50 ms",
                "mesh, unpinned, a worker per CPU, 4 conns: HBONE path p99 ms",
                "mesh, unpinned, a worker per CPU, 4 conns: HBONE path CPU µs/req (node)",
                "mesh, unpinned, a worker per CPU, 4 conns: HBONE errors + non-2xx",
            ],
        ),
        (
            "mesh-light-percpu",
            "waypoint",
            [
                "mesh, unpinned, a worker per CPU, 4 conns: waypoint path req/s",
                "mesh, unpinned, a worker per CPU, 4 conns: waypoint path p50 ms",
                "mesh, unpinned, a worker per CPU, 4 conns: waypoint path p99 ms",
                "mesh, unpinned, a worker per CPU, 4 conns: waypoint path CPU µs/req (nodes+waypoint)",
                "mesh, unpinned, a worker per CPU, 4 conns: waypoint errors + non-2xx",
            ],
        ),
    ];
    for (section, target, names) in light {
        for (label, metric) in names.into_iter().zip(METRICS) {
            rows.push(mesh_in(section, label, metric, target));
        }
    }
    for (label, strait, haproxy) in [
        (
            "bulk TCP Gbit/s: HBONE mTLS vs HAProxy TCP",
            "hbone",
            "haproxy",
        ),
        (
            "bulk TCP Gbit/s: node plain passthrough vs HAProxy TCP (splice)",
            "passthrough",
            "haproxy-splice",
        ),
        (
            "bulk TCP Gbit/s: node plain passthrough vs HAProxy TCP (no splice)",
            "passthrough",
            "haproxy",
        ),
        (
            "bulk TCP Gbit/s: node plain passthrough vs HAProxy TCP (splice) behind the same capture rule",
            "passthrough",
            "haproxy-splice-captured",
        ),
    ] {
        rows.push(row(
            label,
            "gbps",
            Some(("bulk", "pod")),
            Some(("bulk", strait)),
            Some(("bulk", haproxy)),
            None,
        ));
    }
    let rss = |label, metric, strait| {
        row(
            label,
            metric,
            None,
            Some(("rss", strait)),
            Some(("rss", "haproxy")),
            Some(("rss", "nginx")),
        )
    };
    rows.push(rss("RSS MB idle (gateway)", "idle_mb", "strait"));
    rows.push(rss(
        "of which anonymous (heap, stacks; not the mapped program)",
        "idle_anon_mb",
        "strait",
    ));
    rows.push(rss(
        "RSS MB under HTTP/1.1 load (gateway)",
        "load_mb",
        "strait",
    ));
    rows.push(rss(
        "RSS MB holding 10,000 idle connections",
        "conns_mb",
        "strait",
    ));
    rows.push(rss(
        "idle connections actually held",
        "conns_held",
        "strait",
    ));
    rows.push(rss(
        "RSS MB 3 s after those connections closed",
        "conns_closed_mb",
        "strait",
    ));
    for (label, metric, target) in [
        (
            "RSS MB idle: gateway fed over the config stream",
            "idle_mb",
            "strait-fed",
        ),
        (
            "of which anonymous: gateway fed over the config stream",
            "idle_anon_mb",
            "strait-fed",
        ),
        ("RSS MB idle: node proxy", "idle_mb", "node"),
        ("of which anonymous: node proxy", "idle_anon_mb", "node"),
        ("RSS MB under mesh load: node proxy", "load_mb", "node"),
        ("RSS MB idle: waypoint", "idle_mb", "waypoint"),
        ("of which anonymous: waypoint", "idle_anon_mb", "waypoint"),
        ("RSS MB under mesh load: waypoint", "load_mb", "waypoint"),
    ] {
        rows.push(row(label, metric, None, Some(("rss", target)), None, None));
    }
    rows
}

fn fmt_value(v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
        _ => "—".into(),
    }
}

/// The comparison table, as Markdown.
pub fn table(results: &Results) -> String {
    let f = Figures(results);
    let get = |source: Source, metric: &str| source.and_then(|(s, t)| f.get(s, t, metric));
    let mut out = String::from(
        "| figure | direct | Strait | HAProxy | nginx | Strait/HAProxy | Strait/nginx | Strait/direct |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows() {
        let (d, s, h, n) = (
            get(r.direct, r.metric),
            get(r.strait, r.metric),
            get(r.haproxy, r.metric),
            get(r.nginx, r.metric),
        );
        if d.is_none() && s.is_none() && h.is_none() && n.is_none() {
            continue;
        }
        let counts = matches!(r.metric, "bad" | "conns_held");
        let rat = |x, y| if counts { "—".into() } else { ratio(x, y) };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            fmt_value(d),
            fmt_value(s),
            fmt_value(h),
            fmt_value(n),
            rat(s, h),
            rat(s, n),
            rat(s, d)
        );
    }
    out
}

/// One target: its wording, the measured figure against the bound, and the verdict
/// (`None`: not measured).
pub struct Target {
    pub what: &'static str,
    pub detail: String,
    pub met: Option<bool>,
}

/// Evaluates the project's performance targets.
pub fn targets(results: &Results) -> Vec<Target> {
    let f = Figures(results);
    let mut out = Vec::new();
    let mut at_least =
        |what: &'static str, value: Option<f64>, bound: Option<f64>, factor: f64, unit: &str| {
            let (detail, met) = match (value, bound) {
                (Some(v), Some(b)) => (
                    format!(
                        "{} {unit} vs {} {unit} (× {factor} = {})",
                        fmt_value(Some(v)),
                        fmt_value(Some(b)),
                        fmt_value(Some(b * factor))
                    ),
                    Some(v >= b * factor),
                ),
                _ => ("not measured".into(), None),
            };
            out.push(Target { what, detail, met });
        };
    let h1 = |t| f.get("h1", t, "rps");
    let faster = match (h1("haproxy"), h1("nginx")) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    at_least(
        "Gateway HTTP/1.1 req/s ≥ 1.0× the faster of HAProxy and nginx",
        h1("strait"),
        faster,
        1.0,
        "req/s",
    );
    at_least(
        "Gateway h2c req/s ≥ 1.0× HAProxy",
        f.get("h2c", "strait", "rps"),
        f.get("h2c", "haproxy", "rps"),
        1.0,
        "req/s",
    );
    at_least(
        "mesh path (via waypoint) req/s ≥ 0.5× the single gateway hop",
        f.get("mesh", "waypoint", "rps"),
        h1("strait"),
        0.5,
        "req/s",
    );
    at_least(
        "node plain passthrough bulk ≥ 1.0× HAProxy TCP (splice)",
        f.get("bulk", "passthrough", "gbps"),
        f.get("bulk", "haproxy-splice", "gbps"),
        1.0,
        "Gbit/s",
    );
    at_least(
        "HBONE mTLS bulk ≥ 0.5× HAProxy TCP (no splice)",
        f.get("bulk", "hbone", "gbps"),
        f.get("bulk", "haproxy", "gbps"),
        0.5,
        "Gbit/s",
    );
    let mut at_most = |what: &'static str, value: Option<f64>, bound: Option<f64>, unit: &str| {
        let (detail, met) = match (value, bound) {
            (Some(v), Some(b)) => (
                format!(
                    "{} {unit} (bound {} {unit})",
                    fmt_value(Some(v)),
                    fmt_value(Some(b))
                ),
                Some(v <= b),
            ),
            _ => ("not measured".into(), None),
        };
        out.push(Target { what, detail, met });
    };
    at_most(
        "Gateway HTTP/1.1 CPU ≤ 20 µs/req",
        f.get("h1", "strait", "cpu_us"),
        Some(20.0),
        "µs",
    );
    at_most(
        "Gateway HTTP/1.1 p99 ≤ HAProxy's",
        f.get("h1", "strait", "p99_ms"),
        f.get("h1", "haproxy", "p99_ms"),
        "ms",
    );
    at_most(
        "Gateway h2c CPU ≤ 15 µs/req",
        f.get("h2c", "strait", "cpu_us"),
        Some(15.0),
        "µs",
    );
    at_most(
        "idle RSS node proxy ≤ 10 MB",
        f.get("rss", "node", "idle_mb"),
        Some(10.0),
        "MB",
    );
    at_most(
        "idle RSS waypoint ≤ 10 MB",
        f.get("rss", "waypoint", "idle_mb"),
        Some(10.0),
        "MB",
    );
    at_most(
        "idle RSS gateway ≤ 10 MB",
        f.get("rss", "strait", "idle_mb"),
        Some(10.0),
        "MB",
    );
    at_most(
        "idle RSS gateway fed over the config stream ≤ 10 MB",
        f.get("rss", "strait-fed", "idle_mb"),
        Some(10.0),
        "MB",
    );
    at_most(
        "gateway RSS with 10,000 idle connections ≤ 100 MB",
        f.get("rss", "strait", "conns_mb"),
        Some(100.0),
        "MB",
    );
    out
}

/// The targets as a Markdown table.
pub fn targets_table(results: &Results) -> String {
    let mut out = String::from("| target | measured | verdict |\n|---|---|---|\n");
    for t in targets(results) {
        let verdict = match t.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        };
        let _ = writeln!(out, "| {} | {} | {} |", t.what, t.detail, verdict);
    }
    out
}

/// How the figures are made; the head of `docs/performance.md`.
const METHOD: &str = include_str!("method.md");

/// The whole `docs/performance.md`.
pub fn document(results: &Results, machine: &str, notes: &str, run: &str) -> String {
    let mut out = String::new();
    out.push_str(METHOD);
    let _ = writeln!(out, "\n## Results\n\n{run}\n");
    out.push_str("```\n");
    out.push_str(machine.trim_end());
    out.push_str("\n```\n\n");
    out.push_str(&table(results));
    out.push_str("\n### Targets\n\n");
    out.push_str(&targets_table(results));
    if !notes.trim().is_empty() {
        out.push_str("\n### Notes from this run\n\n");
        out.push_str(notes.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
1\th1\tstrait\trps\t100
2\th1\tstrait\trps\t300
3\th1\tstrait\trps\t200
1\th1\thaproxy\trps\t150
1\th1\tnginx\trps\t250
1\th1\tstrait\tbad\t2
2\th1\tstrait\tbad\t3
1\th1\tstrait\tcpu_us\t12.5
1\trss\tstrait\tidle_mb\t12
1\tmesh-light\tpod\tp99_ms\t0.5
1\tmesh-light\thbone\tp99_ms\t1.5
1\tmesh-light-percpu\thbone\tcpu_us\t40
1\th1-percpu\tdirect\trps\t400
1\th1-percpu\tstrait\trps\t300
1\th1-percpu\thaproxy\trps\t200
1\th1\tdirect\tload_core_busy_pct\t99.5
1\th1\tstrait\tproxy_core_busy_pct\t92
1\th1\tstrait\tload_core_busy_pct\t99
1\th1\thaproxy\tproxy_core_busy_pct\t97
1\th1\thaproxy\tload_core_busy_pct\t95
# comment
";

    #[test]
    fn medians_and_sums() {
        let r = parse_results(SAMPLE).unwrap();
        let f = Figures(&r);
        assert_eq!(f.get("h1", "strait", "rps"), Some(200.0));
        assert_eq!(f.get("h1", "strait", "bad"), Some(5.0));
        assert_eq!(median(&[1.0, 4.0, f64::NAN, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert!(parse_results("1\th1\tx\trps\n").is_err());
        let err = parse_results("1\th1\tx\trps\tfast\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn table_has_ratios_and_targets_verdicts() {
        let r = parse_results(SAMPLE).unwrap();
        let t = table(&r);
        assert!(
            t.contains("| HTTP/1.1 req/s | — | 200.0 | 150.0 | 250.0 | 1.33 | 0.80 | — |"),
            "{t}"
        );
        assert!(
            t.contains("| HTTP/1.1 errors + non-2xx (all rounds) | — | 5 |"),
            "{t}"
        );
        assert!(
            t.contains(
                "| mesh, unpinned, 1 worker, 4 conns: HBONE path p99 ms | 0.5 | 1.5 | — | — | — | — | 3.00 |"
            ),
            "{t}"
        );
        // The worker-per-CPU rows read their own section.
        assert!(
            t.contains(
                "| mesh, unpinned, a worker per CPU, 4 conns: HBONE path CPU µs/req (node) | — | 40.0 | — | — | — | — | — |"
            ),
            "{t}"
        );
        // The as-deployed rows read theirs, and do not feed the pinned targets.
        assert!(
            t.contains(
                "| HTTP/1.1, unpinned, a worker per CPU: req/s | 400.0 | 300.0 | 200.0 | — | 1.50 | — | 0.75 |"
            ),
            "{t}"
        );
        // Which core capped a pinned run: a proxy core has no direct figure.
        assert!(
            t.contains("| HTTP/1.1 proxy core busy % | — | 92.0 | 97.0 | — | 0.95 | — | — |"),
            "{t}"
        );
        assert!(
            t.contains(
                "| HTTP/1.1 load core busy % (wrk and the backend) | 99.5 | 99.0 | 95.0 | — | 1.04 | — | 0.99 |"
            ),
            "{t}"
        );
        assert!(!t.contains("unpinned, a worker per CPU: proxy core"), "{t}");
        let targets = targets(&r);
        let by = |what: &str| {
            targets
                .iter()
                .find(|t| t.what.starts_with(what))
                .unwrap()
                .met
        };
        // 200 < max(150, 250).
        assert_eq!(by("Gateway HTTP/1.1 req/s"), Some(false));
        assert_eq!(by("Gateway HTTP/1.1 CPU"), Some(true));
        assert_eq!(by("idle RSS gateway"), Some(false));
        assert_eq!(by("Gateway h2c req/s"), None);
        let doc = document(&r, "cpu: test", "", "3 rounds");
        assert!(doc.contains("### Targets") && doc.contains("cpu: test"));
    }
}
