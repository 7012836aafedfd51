//! `strait wait-for-capture`: the first init container of an enrolled pod.
//!
//! The node proxy captures a pod from outside, some time after the pod's sandbox exists. The
//! application must not start before that: its first connections would leave the pod
//! uncaptured (plaintext, around the mesh and its waypoints). This command runs in the pod's
//! network namespace, unprivileged, and returns once the node proxy serves the pod. The signal
//! is the in-pod HBONE listener (127.0.0.1:15008): the node proxy binds it only after the
//! capture rules are installed, so a successful connect proves the pod is captured. Loopback
//! connections are never redirected, so the probe reaches the listener itself.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// How long to wait by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Delay between two connection attempts.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// What to wait for.
#[derive(Clone, Debug)]
pub struct WaitOptions {
    /// The listener whose presence proves capture (the in-pod HBONE port).
    pub addr: SocketAddr,
    pub timeout: Duration,
    pub interval: Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, strait_proxy::hbone::HBONE_PORT)),
            timeout: DEFAULT_TIMEOUT,
            interval: POLL_INTERVAL,
        }
    }
}

/// The pod was not captured in time.
#[derive(Debug, thiserror::Error)]
#[error(
    "this pod is still not captured by the mesh after {}s: nothing listens on {addr} (last \
     attempt: {last_error}). Is a strait node proxy running on this node, and is the pod's \
     namespace labelled strait.dev/mesh=enabled?",
    waited.as_secs()
)]
pub struct NotCaptured {
    pub addr: SocketAddr,
    pub waited: Duration,
    pub last_error: String,
}

/// Polls until a TCP connection to `options.addr` succeeds; returns how long it took.
pub async fn wait_for_capture(options: &WaitOptions) -> Result<Duration, NotCaptured> {
    let started = Instant::now();
    let deadline = started + options.timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // One attempt never outlives the deadline (a connect to loopback answers at once, but
        // a filtered address would not).
        let attempt = tokio::time::timeout(
            left.max(Duration::from_millis(1)),
            tokio::net::TcpStream::connect(options.addr),
        )
        .await;
        let last_error = match attempt {
            Ok(Ok(_stream)) => return Ok(started.elapsed()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out".to_string(),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(NotCaptured {
                addr: options.addr,
                waited: now.duration_since(started),
                last_error,
            });
        }
        tokio::time::sleep(options.interval.min(deadline - now)).await;
    }
}

/// `120s`, `2m`, `500ms`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 120s, 2m or 500ms)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("120s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[tokio::test]
    async fn returns_once_something_listens_and_times_out_otherwise() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let options = WaitOptions {
            addr,
            timeout: Duration::from_secs(5),
            interval: Duration::from_millis(20),
        };
        assert!(wait_for_capture(&options).await.is_ok());

        drop(listener);
        let options = WaitOptions {
            timeout: Duration::from_millis(300),
            ..options
        };
        let started = Instant::now();
        let err = wait_for_capture(&options).await.unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(3));
        let text = err.to_string();
        assert!(text.contains(&addr.to_string()), "{text}");
        assert!(text.contains("not captured"), "{text}");
    }
}
