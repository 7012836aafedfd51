//! The health endpoint every Strait process serves on :15021 for the kubelet:
//! `GET /healthz/ready` answers 200 once the process can do its job (a proxy holds a config,
//! the controller has listed the cluster) and 503 before; liveness probes only need the port
//! to accept connections. Deliberately tiny: HTTP/1.1, no TLS, no other paths.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The port of the health endpoint (the provisioned Deployments' and DaemonSet's probes).
pub const HEALTH_PORT: u16 = 15021;

/// Default listen address of the health endpoint.
pub fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], HEALTH_PORT))
}

/// Binds `listen` and answers probes until the process ends; `ready` is asked per request.
pub async fn spawn(
    listen: SocketAddr,
    ready: impl Fn() -> bool + Send + Sync + 'static,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("health endpoint: cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, Arc::new(ready)));
    Ok(local)
}

async fn serve(listener: TcpListener, ready: Arc<dyn Fn() -> bool + Send + Sync>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: back off rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = answer(request.method(), request.uri().path(), ready());
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            // A probe that hangs up early is not worth a log line.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(method: &Method, path: &str, ready: bool) -> Response<Full<Bytes>> {
    let (status, body) = match (method, path) {
        (&Method::GET | &Method::HEAD, "/healthz/ready") if ready => (StatusCode::OK, "ready\n"),
        (&Method::GET | &Method::HEAD, "/healthz/ready") => {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
        }
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_flag_and_nothing_else_is_served() {
        assert_eq!(
            answer(&Method::GET, "/healthz/ready", true).status(),
            StatusCode::OK
        );
        assert_eq!(
            answer(&Method::GET, "/healthz/ready", false).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            answer(&Method::GET, "/config_dump", true).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            answer(&Method::POST, "/healthz/ready", true).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn serves_probes_over_tcp() {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probe = flag.clone();
        let addr = spawn("127.0.0.1:0".parse().unwrap(), move || {
            probe.load(std::sync::atomic::Ordering::SeqCst)
        })
        .await
        .unwrap();
        let status = |addr: SocketAddr| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"GET /healthz/ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut text = String::new();
            stream.read_to_string(&mut text).await.unwrap();
            text.lines().next().unwrap_or_default().to_string()
        };
        assert_eq!(status(addr).await, "HTTP/1.1 503 Service Unavailable");
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(status(addr).await, "HTTP/1.1 200 OK");
    }
}
