//! Opens many keep-alive connections to a proxy, sends one request on each (so every
//! connection has been through the proxy's HTTP machinery), then leaves them idle until a
//! signal: what a proxy's memory looks like with many quiet clients.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// How many connections are being opened at once.
const PARALLEL: usize = 200;
/// A connection that has not answered by then counts as failed (a proxy at its connection
/// limit queues new ones silently).
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens `count` connections to `addr`, each answering one `GET path` with `Host: host`;
/// prints `held=N failed=M` once done and keeps them open until SIGTERM/SIGINT.
pub async fn run(addr: SocketAddr, count: usize, host: &str, path: &str) -> anyhow::Result<()> {
    let signals = crate::mesh::Signals::install()?;
    let request = Arc::new(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: strait-perf-hold\r\n\r\n")
            .into_bytes(),
    );
    let permits = Arc::new(Semaphore::new(PARALLEL));
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .context("semaphore closed")?;
        let request = Arc::clone(&request);
        tasks.push(tokio::spawn(async move {
            let result = match tokio::time::timeout(ANSWER_TIMEOUT, open(addr, &request)).await {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!(
                    "{addr}: no answer within {ANSWER_TIMEOUT:?}"
                )),
            };
            drop(permit);
            result
        }));
    }
    let mut held = Vec::with_capacity(count);
    let mut failed = 0usize;
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(stream)) => held.push(stream),
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(anyhow::anyhow!("task: {e}"));
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("hold {addr}: first error: {e:#}");
    }
    println!("held={} failed={failed}", held.len());
    signals.wait().await;
    drop(held);
    Ok(())
}

/// One connection with one complete response read (its head at least, and a 200 status).
async fn open(addr: SocketAddr, request: &[u8]) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.write_all(request).await.context("sending")?;
    let mut buf = vec![0u8; 4096];
    let mut seen = 0usize;
    loop {
        let n = stream.read(&mut buf[seen..]).await.context("reading")?;
        if n == 0 {
            anyhow::bail!("{addr} closed the connection before answering");
        }
        seen += n;
        if let Some(status) = response_status(&buf[..seen]) {
            if status != 200 {
                anyhow::bail!("{addr} answered {status}");
            }
            return Ok(stream);
        }
        if seen == buf.len() {
            anyhow::bail!("{addr}: response head larger than {} bytes", buf.len());
        }
    }
}

/// The status code once the whole response head is in `bytes` (the body is small and ignored:
/// the connection stays idle afterwards, so a few unread bytes cost nothing).
fn response_status(bytes: &[u8]) -> Option<u16> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_only_once_the_head_is_complete() {
        assert_eq!(response_status(b"HTTP/1.1 200 OK\r\nA: b\r\n"), None);
        assert_eq!(
            response_status(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nhello"),
            Some(200)
        );
        assert_eq!(response_status(b"HTTP/1.1 503 Busy\r\n\r\n"), Some(503));
    }

    #[tokio::test]
    async fn holds_connections_to_a_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    let _ = s.read(&mut buf).await;
                });
            }
        });
        let stream = open(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(stream.is_ok());
    }
}
