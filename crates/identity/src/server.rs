//! The CA as a gRPC service (`strait.ca.v1.CertificateService`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strait_proto::ca::v1::certificate_service_server::{
    CertificateService, CertificateServiceServer,
};
use strait_proto::ca::v1::{CreateCertificateRequest, CreateCertificateResponse};
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::ca::{CaError, CertificateAuthority, csr_identity};
use crate::{IdentityError, SpiffeId};

/// Largest CSR accepted (a P-256 or RSA-4096 CSR is far smaller).
const MAX_CSR_LEN: usize = 16 * 1024;

/// Who is calling the CA, as far as the transport and request tell.
#[derive(Debug)]
#[non_exhaustive]
pub struct Caller<'a> {
    /// Request metadata (headers): where credentials such as a service-account token travel.
    pub metadata: &'a MetadataMap,
    /// The peer's address, when the transport knows it.
    pub remote_addr: Option<SocketAddr>,
}

impl<'a> Caller<'a> {
    /// Caller information as the service builds it (also for exercising authorizers).
    pub fn new(metadata: &'a MetadataMap, remote_addr: Option<SocketAddr>) -> Caller<'a> {
        Caller {
            metadata,
            remote_addr,
        }
    }

    /// The token of an `authorization: Bearer <token>` header, if any.
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self.metadata.get("authorization")?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }
}

/// Decides whether a caller may obtain a certificate for an identity. The CA itself only
/// checks that the CSR is well formed and within its trust domain; everything about *who* may
/// be *what* lives here (e.g. a Kubernetes TokenReview: the caller's service-account token must
/// belong to the requested namespace and service account, or to a node proxy serving it).
pub trait Authorizer: Send + Sync + 'static {
    /// `Ok(())` to sign; otherwise the status returned to the caller (typically
    /// `permission_denied` or `unauthenticated`).
    fn authorize(
        &self,
        caller: &Caller<'_>,
        requested: &SpiffeId,
    ) -> impl Future<Output = Result<(), Status>> + Send;
}

/// Signs for callers connecting from a loopback address, whatever identity they ask for.
/// For standalone mode and tests, where the CA and the proxies share one host and trust each
/// other: the server must then listen on loopback only, and any local process can obtain any
/// identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowLocal;

impl Authorizer for AllowLocal {
    async fn authorize(&self, caller: &Caller<'_>, requested: &SpiffeId) -> Result<(), Status> {
        match caller.remote_addr {
            Some(addr) if addr.ip().to_canonical().is_loopback() => Ok(()),
            Some(addr) => Err(Status::permission_denied(format!(
                "{requested}: certificates are only issued to loopback callers, not {addr}"
            ))),
            None => Err(Status::permission_denied(format!(
                "{requested}: caller address unknown; certificates are only issued to loopback callers"
            ))),
        }
    }
}

/// Signs every request. Only for a CA that nothing untrusted can reach (a loopback listener
/// in a single-tenant test or standalone setup): anyone who can connect gets any identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    async fn authorize(&self, _caller: &Caller<'_>, _requested: &SpiffeId) -> Result<(), Status> {
        Ok(())
    }
}

/// The tonic implementation of `CertificateService`: takes the identity from the CSR's URI SAN,
/// asks the [`Authorizer`], then signs with the [`CertificateAuthority`].
#[derive(Debug)]
pub struct CaService<A> {
    ca: Arc<CertificateAuthority>,
    authorizer: A,
}

impl<A: Authorizer> CaService<A> {
    /// A service signing with `ca` for callers `authorizer` admits.
    pub fn new(ca: Arc<CertificateAuthority>, authorizer: A) -> CaService<A> {
        CaService { ca, authorizer }
    }

    /// The tonic server wrapper, to add to a `tonic::transport::Server` router.
    pub fn into_server(self) -> CertificateServiceServer<CaService<A>> {
        CertificateServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl<A: Authorizer> CertificateService for CaService<A> {
    async fn create_certificate(
        &self,
        request: Request<CreateCertificateRequest>,
    ) -> Result<Response<CreateCertificateResponse>, Status> {
        let remote_addr = request.remote_addr();
        let (metadata, _, request) = request.into_parts();
        if request.csr_pem.len() > MAX_CSR_LEN {
            return Err(Status::invalid_argument(format!(
                "CSR of {} bytes exceeds the limit of {MAX_CSR_LEN}",
                request.csr_pem.len()
            )));
        }
        let validity = u64::try_from(request.validity_seconds)
            .map(Duration::from_secs)
            .map_err(|_| {
                Status::invalid_argument(format!(
                    "validity_seconds must not be negative, got {}",
                    request.validity_seconds
                ))
            })?;
        let requested = csr_identity(&request.csr_pem).map_err(ca_status)?;
        let caller = Caller::new(&metadata, remote_addr);
        if let Err(status) = self.authorizer.authorize(&caller, &requested).await {
            tracing::warn!(identity = %requested, ?remote_addr, %status, "certificate request refused");
            return Err(status);
        }
        let chain = self
            .ca
            .sign_csr(&request.csr_pem, &requested, validity)
            .map_err(ca_status)?;
        tracing::info!(identity = %requested, ?remote_addr, "issued workload certificate");
        Ok(Response::new(CreateCertificateResponse {
            cert_chain_pem: chain,
            root_pem: self.ca.root_pem().to_owned(),
        }))
    }
}

/// How a CA error reaches the caller: its fault (bad CSR, wrong identity) or ours.
fn ca_status(err: CaError) -> Status {
    match err {
        CaError::InvalidCsr(_) => Status::invalid_argument(err.to_string()),
        CaError::IdentityMismatch { .. } | CaError::ForeignTrustDomain { .. } => {
            Status::permission_denied(err.to_string())
        }
        CaError::CaExpired { .. }
        | CaError::InvalidCa { .. }
        | CaError::InvalidTrustDomain { .. }
        | CaError::Signing { .. } => {
            tracing::error!(error = %err, "certificate authority failure");
            Status::internal(err.to_string())
        }
    }
}

/// Serves the CA on `listener` until `shutdown` completes, then finishes in-flight requests.
/// With [`AllowLocal`] or [`AllowAll`], bind `listener` to a loopback address only.
pub async fn serve<A: Authorizer>(
    ca: Arc<CertificateAuthority>,
    authorizer: A,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), IdentityError> {
    serve_with_tls(ca, authorizer, listener, None, shutdown).await
}

/// [`serve`] over TLS with the serving certificate `tls` (when given): callers send bearer
/// tokens, which must not cross the network in cleartext.
pub async fn serve_with_tls<A: Authorizer>(
    ca: Arc<CertificateAuthority>,
    authorizer: A,
    listener: tokio::net::TcpListener,
    tls: Option<tonic::transport::Identity>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), IdentityError> {
    let addr = listener
        .local_addr()
        .map_err(|source| IdentityError::Listener { source })?;
    tracing::info!(%addr, trust_domain = ca.trust_domain(), tls = tls.is_some(), "serving certificate authority");
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(identity) = tls {
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|source| IdentityError::Serve { addr, source })?;
    }
    builder
        .add_service(CaService::new(ca, authorizer).into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|source| IdentityError::Serve { addr, source })
}
