//! `strait-echo client`: what the mesh suite runs inside an echo pod to send its requests.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::canonical_header_name;

/// One client invocation: `count` identical requests to `url`.
#[derive(Clone, Debug)]
pub struct ClientRequest {
    /// `http://host[:port][/path][?query]`; the host goes through the system resolver, so
    /// `/etc/hosts` of the namespace (`ip netns exec`) applies.
    pub url: String,
    pub method: String,
    /// Extra request headers in order; a `Host` entry replaces the one taken from the URL.
    pub headers: Vec<(String, String)>,
    /// Requests to send, one after the other on a kept-alive connection.
    pub count: usize,
    /// Limit for each request (connect, send, whole response).
    pub timeout: Duration,
}

impl ClientRequest {
    /// One GET with a 10 s timeout.
    pub fn new(url: impl Into<String>) -> Self {
        ClientRequest {
            url: url.into(),
            method: "GET".into(),
            headers: Vec::new(),
            count: 1,
            timeout: Duration::from_secs(10),
        }
    }
}

/// `5s`, `500ms`, `1m` (Go durations) or a bare number of seconds.
pub fn parse_timeout(text: &str) -> Option<Duration> {
    crate::parse_duration(text).or_else(|| {
        text.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
    })
}

/// Sends the requests and writes one block per response to `out`: `StatusCode=NNN`, a
/// `ResponseHeader=Name:value` line per response header, then the non-empty body lines;
/// blocks are separated by a blank line. A request that gets no response prints
/// `StatusCode=0` and `Error=<message>` and the run goes on. Redirects are never followed.
/// Returns how many requests failed; `Err` only when writing to `out` fails.
pub async fn run_client<W: Write>(request: &ClientRequest, out: &mut W) -> std::io::Result<usize> {
    let mut failures = 0;
    let prepared = Prepared::new(request);
    let mut session = Session::default();
    for index in 0..request.count.max(1) {
        if index > 0 {
            writeln!(out)?;
        }
        let result = match &prepared {
            Ok(prepared) => {
                match tokio::time::timeout(request.timeout, session.send(prepared)).await {
                    Ok(result) => result,
                    Err(_) => {
                        session.conn = None;
                        Err(format!("request timed out after {:?}", request.timeout))
                    }
                }
            }
            Err(e) => Err(e.clone()),
        };
        match result {
            Ok(reply) => write_reply(out, &reply)?,
            Err(message) => {
                failures += 1;
                writeln!(out, "StatusCode=0")?;
                writeln!(out, "Error={}", message.replace(['\r', '\n'], " "))?;
            }
        }
        out.flush()?;
    }
    Ok(failures)
}

/// The parts of a request that do not change between repetitions.
struct Prepared {
    host: String,
    port: u16,
    method: Method,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Whether a failed send on a reused connection may be repeated (Go's rule: idempotent
    /// methods without a body).
    replayable: bool,
}

impl Prepared {
    fn new(request: &ClientRequest) -> Result<Prepared, String> {
        let uri: http::Uri = request
            .url
            .parse()
            .map_err(|e| format!("invalid URL {:?}: {e}", request.url))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "URL {:?}: scheme {other:?} is not supported (only http)",
                    request.url
                ));
            }
            None => return Err(format!("URL {:?}: missing http:// scheme", request.url)),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("URL {:?}: missing host", request.url))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(80);
        let host_header = authority
            .as_str()
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, h)| h)
            .to_string();
        let method = Method::from_bytes(request.method.as_bytes())
            .map_err(|e| format!("method {:?}: {e}", request.method))?;
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/")
            .to_string();
        let mut headers = Vec::new();
        let explicit_host = request
            .headers
            .iter()
            .any(|(n, _)| n.trim().eq_ignore_ascii_case("host"));
        if !explicit_host {
            headers.push((
                http::header::HOST,
                HeaderValue::from_str(&host_header)
                    .map_err(|e| format!("Host {host_header:?}: {e}"))?,
            ));
        }
        for (name, value) in &request.headers {
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|e| format!("header name {name:?}: {e}"))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|e| format!("header {name}: value {value:?}: {e}"))?;
            headers.push((name, value));
        }
        let replayable = matches!(
            method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        Ok(Prepared {
            host,
            port,
            method,
            path,
            headers,
            replayable,
        })
    }

    fn request(&self) -> Result<Request<Full<Bytes>>, String> {
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(self.path.as_str())
            .version(http::Version::HTTP_11);
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        builder
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("building request: {e}"))
    }
}

/// What the client prints for one response.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
}

struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The connection state of one request sequence.
#[derive(Default)]
struct Session {
    addrs: Vec<SocketAddr>,
    conn: Option<Conn>,
}

impl Session {
    async fn send(&mut self, prepared: &Prepared) -> Result<Reply, String> {
        loop {
            let reused = match &self.conn {
                Some(conn) if !conn.sender.is_closed() => true,
                _ => {
                    self.conn = Some(self.connect(prepared).await?);
                    false
                }
            };
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            let request = prepared.request()?;
            let attempt = async {
                conn.sender.ready().await?;
                conn.sender.send_request(request).await
            };
            let response = match attempt.await {
                Ok(response) => response,
                Err(e) => {
                    self.conn = None;
                    // A kept-alive connection the server closed meanwhile: try once more on a
                    // fresh one, as browsers and Go's client do.
                    if reused && (e.is_canceled() || (prepared.replayable && stale(&e))) {
                        continue;
                    }
                    return Err(error_chain(&e));
                }
            };
            let close = response.version() == http::Version::HTTP_10
                || response
                    .headers()
                    .get(http::header::CONNECTION)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        canonical_header_name(n.as_str()),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = match response.into_body().collect().await {
                Ok(body) => body.to_bytes(),
                Err(e) => {
                    self.conn = None;
                    return Err(format!("reading response body: {}", error_chain(&e)));
                }
            };
            if close {
                self.conn = None;
            }
            return Ok(Reply {
                status,
                headers,
                body,
            });
        }
    }

    async fn connect(&mut self, prepared: &Prepared) -> Result<Conn, String> {
        if self.addrs.is_empty() {
            self.addrs = tokio::net::lookup_host((prepared.host.as_str(), prepared.port))
                .await
                .map_err(|e| format!("resolving {}: {e}", prepared.host))?
                .collect();
            if self.addrs.is_empty() {
                return Err(format!("resolving {}: no addresses", prepared.host));
            }
        }
        let mut last = String::new();
        for addr in &self.addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    // Header names go out in canonical case, as Go's client writes them.
                    let (sender, connection) = hyper::client::conn::http1::Builder::new()
                        .title_case_headers(true)
                        .handshake(TokioIo::new(stream))
                        .await
                        .map_err(|e| format!("handshake with {addr}: {}", error_chain(&e)))?;
                    let driver = tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    return Ok(Conn { sender, driver });
                }
                Err(e) => last = format!("dial tcp {addr}: {e}"),
            }
        }
        Err(last)
    }
}

/// Whether a send failed because the connection went away rather than because of the request.
fn stale(e: &hyper::Error) -> bool {
    e.is_closed()
        || e.is_incomplete_message()
        || std::error::Error::source(e).is_some_and(|s| {
            s.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionAborted
                )
            })
        })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

fn write_reply<W: Write>(out: &mut W, reply: &Reply) -> std::io::Result<()> {
    writeln!(out, "StatusCode={}", reply.status)?;
    for (name, value) in &reply.headers {
        writeln!(out, "ResponseHeader={name}:{value}")?;
    }
    for line in String::from_utf8_lossy(&reply.body).lines() {
        let line = line.trim_end_matches('\r');
        if !line.is_empty() {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}
