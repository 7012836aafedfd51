//! Protobuf messages and tonic services of the Strait control plane.
//!
//! Generated at build time from `proto/` (pure Rust via `protox`, no `protoc` needed). Each API
//! is a versioned package mirrored by a module path:
//!
//! - [`ca::v1`] (`strait.ca.v1`): workload certificate signing (`CertificateService`).
//! - [`config::v1`] (`strait.config.v1`): the proxy config stream (`ConfigService`).

/// Certificate authority APIs.
pub mod ca {
    /// `strait.ca.v1`: workload certificate signing.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        tonic::include_proto!("strait.ca.v1");
    }
}

/// Proxy configuration APIs.
pub mod config {
    /// `strait.config.v1`: the versioned config stream from the controller to proxies.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        tonic::include_proto!("strait.config.v1");
    }
}
