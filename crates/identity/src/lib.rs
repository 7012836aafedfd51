//! Workload identity for the mesh: SPIFFE IDs, the certificate authority, its gRPC service, and
//! the mTLS certificates proxies use for HBONE.
//!
//! - The controller runs a [`CertificateAuthority`] behind [`serve`]; an [`Authorizer`] decides
//!   who may obtain which identity.
//! - Proxies hold a [`Certificates`] manager: [`Certificates::get`] returns a valid
//!   [`WorkloadCertificate`] for an identity, issuing it on first use and rotating it in the
//!   background. [`Certificates::from_ca`] does the same against an in-process CA.
//! - A [`WorkloadCertificate`] hands out rustls configs for both ends of an HBONE connection;
//!   after the handshake, [`peer_identity`] reads who the peer is.

mod ca;
mod client;
mod manager;
mod server;
mod spiffe;
mod tls;

use std::net::SocketAddr;

pub use ca::{
    CaError, CertificateAuthority, DEFAULT_CERT_VALIDITY, MAX_CERT_VALIDITY, ROOT_VALIDITY,
    csr_identity,
};
pub use client::CertificateClient;
pub use manager::Certificates;
pub use server::{AllowAll, AllowLocal, Authorizer, CaService, Caller, serve, serve_with_tls};
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use tls::{HBONE_ALPN, WorkloadCertificate, crypto_provider, peer_identity};

/// Why a certificate could not be obtained, or the CA could not be served.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The CA endpoint is malformed or unsupported.
    #[error("CA endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// The credentials to present to the CA could not be read.
    #[error("credentials for CA {endpoint}: {reason}")]
    Credentials { endpoint: String, reason: String },
    /// The CA endpoint could not be reached.
    #[error("connecting to CA {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The CA refused or failed the request.
    #[error("CA {endpoint}: {}: {}", status.code(), status.message())]
    Rpc {
        endpoint: String,
        status: Box<tonic::Status>,
    },
    /// The in-process CA refused or failed the request.
    #[error("certificate for {id}: {source}")]
    Ca {
        id: SpiffeId,
        #[source]
        source: Box<CaError>,
    },
    /// Generating the key or CSR failed.
    #[error("key or CSR for {id}: {source}")]
    Key {
        id: SpiffeId,
        #[source]
        source: rcgen::Error,
    },
    /// The CA answered with something that is not a usable certificate for the identity.
    #[error("certificate for {id}: {reason}")]
    InvalidCertificate { id: SpiffeId, reason: String },
    /// Building the rustls configuration failed.
    #[error("TLS configuration for {id}: {source}")]
    Tls {
        id: SpiffeId,
        #[source]
        source: Box<rustls::Error>,
    },
    /// The CA server's listener is unusable.
    #[error("CA listener: {source}")]
    Listener {
        #[source]
        source: std::io::Error,
    },
    /// The CA server failed.
    #[error("CA server on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
}
