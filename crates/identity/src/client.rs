//! The proxies' side of the CA service.

use std::path::PathBuf;
use std::time::Duration;

use strait_proto::ca::v1::certificate_service_client::CertificateServiceClient;
use strait_proto::ca::v1::{CreateCertificateRequest, CreateCertificateResponse};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::IdentityError;

/// How long establishing the connection to the CA may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one signing request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A connection to the CA's `CertificateService`. Cheap to clone (shares the channel).
/// Plain HTTP/2 on loopback (standalone), TLS ([`Self::connect_lazy_tls`]) across a network.
#[derive(Clone, Debug)]
pub struct CertificateClient {
    endpoint: String,
    inner: CertificateServiceClient<Channel>,
    authorization: Option<MetadataValue<Ascii>>,
    /// A projected service-account token, re-read for every request (the kubelet rotates it).
    token_file: Option<PathBuf>,
}

impl CertificateClient {
    /// Connects to `endpoint` (`http://127.0.0.1:15012`), failing if it is unreachable.
    pub async fn connect(endpoint: &str) -> Result<CertificateClient, IdentityError> {
        let channel = Self::endpoint(endpoint, false)?
            .connect()
            .await
            .map_err(|source| IdentityError::Connect {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        Ok(Self::with_channel(endpoint, channel))
    }

    /// Like [`Self::connect`] but connects on first use (and reconnects as needed), so a proxy
    /// can start before its CA is up.
    pub fn connect_lazy(endpoint: &str) -> Result<CertificateClient, IdentityError> {
        Ok(Self::with_channel(
            endpoint,
            Self::endpoint(endpoint, false)?.connect_lazy(),
        ))
    }

    /// [`Self::connect_lazy`] to an `https://` endpoint whose serving certificate chains to
    /// `root_pem` (the mesh's trust anchor, which the controller's serving certificate is
    /// issued under): the bearer token then never crosses the network in cleartext.
    pub fn connect_lazy_tls(
        endpoint: &str,
        root_pem: &str,
    ) -> Result<CertificateClient, IdentityError> {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(root_pem));
        let channel = Self::endpoint(endpoint, true)?
            .tls_config(tls)
            .map_err(|e| IdentityError::InvalidEndpoint {
                endpoint: endpoint.to_owned(),
                reason: e.to_string(),
            })?
            .connect_lazy();
        Ok(Self::with_channel(endpoint, channel))
    }

    /// Sends `authorization: Bearer <token>` with every request, for an [`crate::Authorizer`]
    /// that authenticates callers by token.
    pub fn with_bearer_token(mut self, token: &str) -> Result<CertificateClient, IdentityError> {
        let value = format!("Bearer {token}")
            .parse::<MetadataValue<Ascii>>()
            .map_err(|_| IdentityError::InvalidEndpoint {
                endpoint: self.endpoint.clone(),
                reason: "bearer token is not a valid header value".into(),
            })?;
        self.authorization = Some(value);
        Ok(self)
    }

    /// Sends the token in `path` as `authorization: Bearer <token>`, reading the file anew for
    /// every request: the kubelet rewrites a projected token before it expires, so a token
    /// read once at start-up would stop working within the hour.
    pub fn with_bearer_token_file(mut self, path: impl Into<PathBuf>) -> CertificateClient {
        self.token_file = Some(path.into());
        self
    }

    /// The endpoint this client talks to.
    pub fn endpoint_uri(&self) -> &str {
        &self.endpoint
    }

    /// Sends one CSR; `validity` zero asks for the CA's default lifetime.
    pub async fn create_certificate(
        &self,
        csr_pem: String,
        validity: Duration,
    ) -> Result<CreateCertificateResponse, IdentityError> {
        let mut request = tonic::Request::new(CreateCertificateRequest {
            csr_pem,
            validity_seconds: i64::try_from(validity.as_secs()).unwrap_or(i64::MAX),
        });
        request.set_timeout(REQUEST_TIMEOUT);
        if let Some(path) = &self.token_file {
            let value = read_token(path)
                .await
                .map_err(|reason| IdentityError::Credentials {
                    endpoint: self.endpoint.clone(),
                    reason,
                })?;
            request.metadata_mut().insert("authorization", value);
        } else if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        let mut client = self.inner.clone();
        let response =
            client
                .create_certificate(request)
                .await
                .map_err(|status| IdentityError::Rpc {
                    endpoint: self.endpoint.clone(),
                    status: Box::new(status),
                })?;
        Ok(response.into_inner())
    }

    fn endpoint(endpoint: &str, tls: bool) -> Result<Endpoint, IdentityError> {
        let expected = if tls { "https://" } else { "http://" };
        if !endpoint.starts_with(expected) {
            return Err(IdentityError::InvalidEndpoint {
                endpoint: endpoint.to_owned(),
                reason: if tls {
                    "a TLS connection needs an https:// URL".into()
                } else {
                    "an https:// endpoint needs the trust anchor of its serving certificate \
                     (connect with TLS)"
                        .into()
                },
            });
        }
        Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| IdentityError::InvalidEndpoint {
                endpoint: endpoint.to_owned(),
                reason: e.to_string(),
            })
            .map(|e| {
                e.connect_timeout(CONNECT_TIMEOUT)
                    .timeout(REQUEST_TIMEOUT)
                    .tcp_nodelay(true)
            })
    }

    fn with_channel(endpoint: &str, channel: Channel) -> CertificateClient {
        CertificateClient {
            endpoint: endpoint.to_owned(),
            inner: CertificateServiceClient::new(channel),
            authorization: None,
            token_file: None,
        }
    }
}

async fn read_token(path: &std::path::Path) -> Result<MetadataValue<Ascii>, String> {
    let token = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("token file {}: {e}", path.display()))?;
    format!("Bearer {}", token.trim())
        .parse::<MetadataValue<Ascii>>()
        .map_err(|_| format!("token file {}: not a valid header value", path.display()))
}
