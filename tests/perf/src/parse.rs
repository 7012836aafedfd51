//! Turns the output of wrk, h2load and iperf3 into `metric value` figures.

use anyhow::Context as _;

/// One load-test result, as `run.sh` records it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Load {
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Responses that were not 2xx/3xx plus requests that failed (socket errors, resets).
    pub bad: u64,
}

impl Load {
    /// `metric<TAB>value` lines; `cpu_ticks` (utime+stime of the proxy over the test, in
    /// clock ticks of `clk_tck` per second) adds the CPU time per request.
    pub fn lines(&self, cpu_ticks: Option<u64>, clk_tck: u64) -> String {
        let mut out = format!(
            "rps\t{:.1}\np50_ms\t{:.3}\np99_ms\t{:.3}\nrequests\t{}\nbad\t{}\n",
            self.rps, self.p50_ms, self.p99_ms, self.requests, self.bad
        );
        if let Some(ticks) = cpu_ticks
            && self.requests > 0
            && clk_tck > 0
        {
            let us = ticks as f64 * 1e6 / clk_tck as f64 / self.requests as f64;
            out.push_str(&format!("cpu_us\t{us:.2}\n"));
        }
        out
    }
}

/// wrk's duration notation (`417.23us`, `1.22ms`, `2.00s`, `1.00m`) in milliseconds.
fn wrk_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let factor = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(value * factor)
}

/// The output of `wrk --latency`.
pub fn wrk(text: &str) -> anyhow::Result<Load> {
    let mut load = Load::default();
    let mut saw_rps = false;
    for line in text.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["50%", value] => load.p50_ms = wrk_duration_ms(value).context("wrk: 50% latency")?,
            ["99%", value] => load.p99_ms = wrk_duration_ms(value).context("wrk: 99% latency")?,
            [count, "requests", "in", ..] => {
                load.requests = count.parse().context("wrk: request count")?;
            }
            ["Requests/sec:", value] => {
                load.rps = value.parse().context("wrk: Requests/sec")?;
                saw_rps = true;
            }
            ["Non-2xx", "or", "3xx", "responses:", count] => {
                load.bad += count.parse::<u64>().context("wrk: non-2xx count")?;
            }
            ["Socket", "errors:", ..] => {
                // Socket errors: connect 0, read 0, write 0, timeout 0
                for pair in fields[2..].chunks(2) {
                    if let [_, n] = pair {
                        load.bad += n.trim_end_matches(',').parse::<u64>().unwrap_or(0);
                    }
                }
            }
            _ => {}
        }
    }
    anyhow::ensure!(saw_rps, "wrk output has no Requests/sec line");
    Ok(load)
}

/// The output of `h2load` plus its `--log-file` (`start<TAB>status<TAB>elapsed µs` per
/// request), from which the percentiles come: h2load prints none itself.
pub fn h2load(text: &str, log: &str) -> anyhow::Result<Load> {
    let mut load = Load::default();
    let mut saw_rps = false;
    for line in text.lines().map(str::trim) {
        let fields: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .collect();
        match fields.as_slice() {
            ["finished", "in", _, rps, "req/s", ..] => {
                load.rps = rps.parse().context("h2load: req/s")?;
                saw_rps = true;
            }
            [
                "requests:",
                _total,
                "total",
                _started,
                "started",
                _done,
                "done",
                ok,
                "succeeded",
                failed,
                "failed",
                errored,
                "errored",
                timeout,
                "timeout",
                ..,
            ] => {
                load.requests = ok.parse().context("h2load: succeeded")?;
                for n in [failed, errored, timeout] {
                    load.bad += n.parse::<u64>().unwrap_or(0);
                }
            }
            ["status", "codes:", _, "2xx", _, "3xx", c4, "4xx", c5, "5xx"] => {
                load.bad += c4.parse::<u64>().unwrap_or(0) + c5.parse::<u64>().unwrap_or(0);
            }
            _ => {}
        }
    }
    anyhow::ensure!(saw_rps, "h2load output has no `finished in` line");
    let mut latencies: Vec<f64> = log
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let _start = fields.next()?;
            let status: i64 = fields.next()?.trim().parse().ok()?;
            let elapsed: f64 = fields.next()?.trim().parse().ok()?;
            (status > 0).then_some(elapsed / 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    load.p50_ms = percentile(&latencies, 50.0).unwrap_or(f64::NAN);
    load.p99_ms = percentile(&latencies, 99.0).unwrap_or(f64::NAN);
    Ok(load)
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `iperf3 -J`: received throughput in Gbit/s and retransmits.
pub fn iperf3(text: &str) -> anyhow::Result<String> {
    let json: serde_json::Value = serde_json::from_str(text).context("iperf3: not JSON")?;
    if let Some(error) = json.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("iperf3: {error}");
    }
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3: no end.sum_received.bits_per_second")?;
    let retransmits = json["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok(format!(
        "gbps\t{:.3}\nretransmits\t{retransmits}\n",
        bps / 1e9
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 10s test @ http://127.0.0.1:18080/api/x
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   417.23us  100.00us   5.00ms   90.00%
    Req/Sec    15.40k     1.00k   17.00k    70.00%
  Latency Distribution
     50%  390.00us
     75%  450.00us
     90%  500.00us
     99%    1.22ms
  153421 requests in 10.00s, 21.06MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  15338.78
Transfer/sec:      2.11MB
";

    #[test]
    fn wrk_figures() {
        let load = wrk(WRK).unwrap();
        assert_eq!(load.requests, 153_421);
        assert!((load.rps - 15338.78).abs() < 1e-6);
        assert!((load.p50_ms - 0.39).abs() < 1e-9);
        assert!((load.p99_ms - 1.22).abs() < 1e-9);
        assert_eq!(load.bad, 8);
        let lines = load.lines(Some(150), 100);
        // 1.5 s of CPU over 153421 requests.
        assert!(lines.contains("cpu_us\t9.78\n"), "{lines}");
        assert!(wrk("garbage").is_err());
    }

    #[test]
    fn h2load_figures() {
        let text = "finished in 10.00s, 41234.50 req/s, 1.23MB/s
requests: 412345 total, 412345 started, 412340 done, 412340 succeeded, 5 failed, 0 errored, 0 timeout
status codes: 412340 2xx, 0 3xx, 1 4xx, 2 5xx
";
        let log = "1\t200\t100\n2\t200\t300\n3\t200\t200\n4\t-1\t9\n";
        let load = h2load(text, log).unwrap();
        assert_eq!(load.requests, 412_340);
        assert!((load.rps - 41234.5).abs() < 1e-6);
        assert_eq!(load.bad, 8);
        assert!((load.p50_ms - 0.2).abs() < 1e-9);
        assert!((load.p99_ms - 0.3).abs() < 1e-9);
    }

    #[test]
    fn percentiles_and_iperf() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[], 50.0), None);
        let out = iperf3(
            r#"{"end":{"sum_received":{"bits_per_second":2.5e10},"sum_sent":{"retransmits":3}}}"#,
        )
        .unwrap();
        assert_eq!(out, "gbps\t25.000\nretransmits\t3\n");
        assert!(iperf3(r#"{"error":"unable to connect"}"#).is_err());
    }
}
