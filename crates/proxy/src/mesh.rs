//! Reaching mesh endpoints: HBONE to meshed pods, plain TCP to everything else.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use strait_config::mesh::{MeshConfig, Workload};
use strait_identity::{Certificates, SpiffeId};

use crate::dial::{BoxIo, Dialer};
use crate::hbone::{HBONE_PORT, HboneClient, TunnelTarget};

/// The live mesh config a proxy consults per connection.
pub type MeshView = Arc<ArcSwap<MeshConfig>>;

/// The SPIFFE identity a workload runs as; `None` when its names cannot form one.
pub fn workload_identity(mesh: &MeshConfig, workload: &Workload) -> Option<SpiffeId> {
    SpiffeId::new(
        mesh.trust_domain.as_str(),
        workload.pod.namespace.as_str(),
        workload.service_account.as_str(),
    )
    .ok()
}

/// Dials endpoint addresses as `local`: a captured (meshed) pod is reached through an HBONE
/// tunnel to its node proxy, proving `local`'s identity and checking the pod's; any other
/// address gets plain TCP through `base`.
pub struct MeshDialer {
    pub view: MeshView,
    pub hbone: Arc<HboneClient>,
    pub certs: Arc<Certificates>,
    pub local: SpiffeId,
    pub base: Arc<dyn Dialer>,
}

impl Dialer for MeshDialer {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxIo>> {
        let mesh = self.view.load_full();
        let peer = mesh
            .workload(addr.ip())
            .filter(|w| w.captured)
            .and_then(|w| workload_identity(&mesh, w));
        let Some(peer_id) = peer else {
            return self.base.dial(addr);
        };
        let hbone = self.hbone.clone();
        let certs = self.certs.clone();
        let local = self.local.clone();
        Box::pin(async move {
            let certificate = certs.get(&local).await.map_err(io::Error::other)?;
            let tunnel = hbone
                .open(&TunnelTarget {
                    local: &certificate,
                    peer: SocketAddr::new(addr.ip(), HBONE_PORT),
                    peer_id: Some(&peer_id),
                    target: addr,
                    source: None,
                })
                .await?;
            Ok(Box::new(tunnel) as BoxIo)
        })
    }
}
