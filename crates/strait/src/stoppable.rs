//! Servers this process runs beside the proxies (the workload CA, the config stream), each
//! ended by a switch.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;

/// A server's shutdown signal: resolves when its switch is flipped or dropped.
pub(crate) type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Spawns the server `serve` builds around its shutdown signal and returns the switch that
/// stops it: sending `true`, or dropping the switch. A server that fails is logged as `what`.
pub(crate) fn spawn_until_stopped<F, E>(
    what: &'static str,
    serve: impl FnOnce(Shutdown) -> F,
) -> watch::Sender<bool>
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: Display,
{
    let (stop, mut stopped) = watch::channel(false);
    let server = serve(Box::pin(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    }));
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "{what} failed");
        }
    });
    stop
}
