//! The workload CA as the controller runs it: one root shared by every replica (kept in a
//! Secret, [`load_or_create_ca`]) and callers authenticated by their projected
//! service-account tokens ([`TokenReviewAuthorizer`]), served by [`serve_ca`].
//!
//! Who may obtain which identity:
//! - a pod's own service account: `system:serviceaccount:NS:SA` gets `spiffe://<td>/ns/NS/sa/SA`;
//! - a node proxy (by default `strait-system/strait-node`) gets the identity of any pod that
//!   runs on its own node, which TokenReview reports for the pod-bound token (directly as
//!   `authentication.kubernetes.io/node-name`, or through the bound pod's `spec.nodeName`);
//! - nobody else gets anything.
//!
//! # The CA Secret
//!
//! `strait-system/strait-ca`, type `Opaque`:
//! - `ca.crt`: the signing CA certificate (PEM), optionally followed by the certificates above
//!   it in order, each issued by the next;
//! - `ca.key`: the signing CA's private key, PKCS#8 PEM (`openssl pkcs8 -topk8 -nocrypt`);
//! - `root.crt` (optional): the trust anchor proxies verify peers against. Without it, the last
//!   certificate of `ca.crt` is the anchor.
//!
//! When the Secret does not exist the first controller replica creates it with a fresh
//! self-signed root (`ca.crt` and `ca.key` only). To use an organisation's PKI instead, create
//! the Secret before installing, with an intermediate CA for the mesh in `ca.crt`/`ca.key` and
//! the organisation's root in `root.crt`. Either way the CA certificate need not carry a
//! `spiffe://` URI SAN, but if it does it must name the configured trust domain. The controller
//! never modifies an existing Secret; rotating the CA means replacing the Secret and restarting
//! the controllers (and then the proxies, which trust the old anchor until they reconnect).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt as _};
use strait_identity::{Authorizer, CaError, Caller, CertificateAuthority, IdentityError, SpiffeId};
use tokio::sync::OnceCell;
use tonic::Status;

/// The audience proxies request for the token they present to the CA (a projected token for
/// this audience is useless against the API server itself).
pub const CA_AUDIENCE: &str = "strait-ca";
/// Namespace of the CA Secret and of the node proxy's service account.
pub const CA_NAMESPACE: &str = "strait-system";
/// Name of the Secret holding the CA certificate and key.
pub const CA_SECRET_NAME: &str = "strait-ca";
/// Secret key of the CA certificate (then the certificates above it).
pub const CA_CERT_KEY: &str = "ca.crt";
/// Secret key of the CA private key (PKCS#8 PEM).
pub const CA_KEY_KEY: &str = "ca.key";
/// Optional Secret key of the trust anchor, for an intermediate CA.
pub const TRUST_ANCHOR_KEY: &str = "root.crt";
/// The node proxy DaemonSet's service account (`strait-system/strait-node`).
pub const NODE_PROXY_SERVICE_ACCOUNT: &str = "strait-node";

/// TokenReview `status.user.extra` keys of pod-bound service-account tokens.
const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// Prefix of service-account usernames: `system:serviceaccount:NS:SA`.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// How long a request waits for the pod cache's first list before failing as unavailable.
const POD_CACHE_READY_WAIT: Duration = Duration::from_secs(5);

/// Why the CA could not be loaded, created or served.
#[derive(Debug, thiserror::Error)]
pub enum CaSetupError {
    /// Reading the CA Secret failed.
    #[error("reading Secret {namespace}/{name}: {source}")]
    Read {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// Creating the CA Secret failed.
    #[error("creating Secret {namespace}/{name}: {source}")]
    Create {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// The CA Secret exists but does not hold the expected keys.
    #[error("Secret {namespace}/{name}: {reason}")]
    Invalid {
        namespace: String,
        name: String,
        reason: String,
    },
    /// The CA Secret's certificate or key is unusable.
    #[error("Secret {namespace}/{name}: {source}")]
    Ca {
        namespace: String,
        name: String,
        #[source]
        source: Box<CaError>,
    },
    /// Generating a new root failed.
    #[error("new CA for Secret {namespace}/{name}: {source}")]
    Generate {
        namespace: String,
        name: String,
        #[source]
        source: Box<CaError>,
    },
}

/// A Kubernetes service account, `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceAccountRef {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccountRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ServiceAccountRef {
        ServiceAccountRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ServiceAccountRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How [`TokenReviewAuthorizer`] authenticates and whom it treats as a node proxy.
#[derive(Clone, Debug)]
pub struct TokenReviewOptions {
    /// `spec.audiences` of each TokenReview; the reviewed `status.audiences` must include one of
    /// them. Empty rejects every token (a token for the API server's own audience must never
    /// work here).
    pub audiences: Vec<String>,
    /// Service accounts that may obtain the identities of the pods on their own node.
    pub node_proxies: Vec<ServiceAccountRef>,
    /// How long a successful review is reused (never beyond the token's own `exp`).
    pub cache_ttl: Duration,
    /// Most reviews cached at once; when full, further tokens are reviewed on every request.
    pub cache_capacity: usize,
}

impl Default for TokenReviewOptions {
    fn default() -> TokenReviewOptions {
        TokenReviewOptions {
            audiences: vec![CA_AUDIENCE.to_owned()],
            node_proxies: vec![ServiceAccountRef::new(
                CA_NAMESPACE,
                NODE_PROXY_SERVICE_ACCOUNT,
            )],
            cache_ttl: Duration::from_secs(60),
            cache_capacity: 4096,
        }
    }
}

/// The pods the authorizer consults for node proxies: the controller's reflector cache (never
/// the API server, so a burst of certificate requests costs no API calls).
pub trait PodCache: Send + Sync + 'static {
    /// The cached pod `namespace/name`.
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>>;
    /// Whether any cached pod satisfies `matches`.
    fn any_pod(&self, matches: &dyn Fn(&Pod) -> bool) -> bool;
    /// Waits (briefly) for the cache's first full list; `false` if it is not ready, so a
    /// request is answered "unavailable, retry" instead of denied on a half-filled cache.
    fn ready(&self) -> impl Future<Output = bool> + Send {
        std::future::ready(true)
    }
}

impl PodCache for Store<Pod> {
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.get(&ObjectRef::new(name).within(namespace))
    }

    fn any_pod(&self, matches: &dyn Fn(&Pod) -> bool) -> bool {
        self.find(|pod| matches(pod)).is_some()
    }

    async fn ready(&self) -> bool {
        matches!(
            tokio::time::timeout(POD_CACHE_READY_WAIT, self.wait_until_ready()).await,
            Ok(Ok(()))
        )
    }
}

impl<P: PodCache> PodCache for Arc<P> {
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        (**self).pod(namespace, name)
    }

    fn any_pod(&self, matches: &dyn Fn(&Pod) -> bool) -> bool {
        (**self).any_pod(matches)
    }

    fn ready(&self) -> impl Future<Output = bool> + Send {
        (**self).ready()
    }
}

/// Authenticates CA callers by their bearer token (a TokenReview against the API server) and
/// authorizes the requested identity: see the [module documentation](self).
pub struct TokenReviewAuthorizer<P> {
    reviews: Api<TokenReview>,
    options: TokenReviewOptions,
    pods: P,
    cache: Mutex<HashMap<[u8; 32], Arc<OnceCell<Reviewed>>>>,
}

impl<P> std::fmt::Debug for TokenReviewAuthorizer<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewAuthorizer")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What a successful TokenReview said about a token.
#[derive(Clone, Debug)]
struct Reviewed {
    username: String,
    node_name: Option<String>,
    pod_name: Option<String>,
    pod_uid: Option<String>,
    /// Until when this review may be reused.
    fresh_until: Instant,
}

impl<P: PodCache> TokenReviewAuthorizer<P> {
    /// An authorizer reviewing tokens through `client` and finding pods in `pods`.
    pub fn new(client: Client, pods: P, options: TokenReviewOptions) -> TokenReviewAuthorizer<P> {
        TokenReviewAuthorizer {
            reviews: Api::all(client),
            options,
            pods,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The reviewed identity of `token`: cached, or from a TokenReview that concurrent requests
    /// with the same token share (a node proxy starting many pods at once costs one review).
    async fn review(&self, token: &str) -> Result<Reviewed, Status> {
        let key = token_digest(token);
        let now = Instant::now();
        let slot = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(&key) {
                Some(slot) if slot.get().is_none_or(|r| r.fresh_until > now) => Some(slot.clone()),
                _ => {
                    cache.remove(&key);
                    if cache.len() >= self.options.cache_capacity {
                        cache.retain(|_, slot| slot.get().is_none_or(|r| r.fresh_until > now));
                    }
                    (cache.len() < self.options.cache_capacity).then(|| {
                        let slot = Arc::new(OnceCell::new());
                        cache.insert(key, slot.clone());
                        slot
                    })
                }
            }
        };
        let Some(slot) = slot else {
            return self.token_review(token).await;
        };
        match slot.get_or_try_init(|| self.token_review(token)).await {
            Ok(reviewed) => Ok(reviewed.clone()),
            Err(status) => {
                // Failed reviews are not cached: drop the empty slot.
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache
                    .get(&key)
                    .is_some_and(|s| Arc::ptr_eq(s, &slot) && s.get().is_none())
                {
                    cache.remove(&key);
                }
                Err(status)
            }
        }
    }

    /// One TokenReview of `token` for our audiences.
    async fn token_review(&self, token: &str) -> Result<Reviewed, Status> {
        let request = TokenReview {
            metadata: ObjectMeta::default(),
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(self.options.audiences.clone()),
            },
            status: None,
        };
        let response = self
            .reviews
            .create(&PostParams::default(), &request)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "TokenReview failed");
                Status::unavailable(format!(
                    "cannot verify the caller's token: TokenReview (authentication.k8s.io/v1): {e}"
                ))
            })?;
        let status = response.status.unwrap_or_default();
        let mut reviewed = check_review(status, &self.options.audiences).map_err(|reason| {
            Status::unauthenticated(format!("bearer token rejected: {reason}"))
        })?;
        let lifetime = match token_expiry(token) {
            Some(exp) => exp
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .min(self.options.cache_ttl),
            None => self.options.cache_ttl,
        };
        reviewed.fresh_until = Instant::now() + lifetime;
        Ok(reviewed)
    }

    /// Whether `user` may obtain `requested`.
    async fn decide(&self, user: &Reviewed, requested: &SpiffeId) -> Result<(), Status> {
        let username = &user.username;
        let Some((namespace, account)) = service_account_of(username) else {
            return Err(Status::permission_denied(format!(
                "caller {username} is not a service account and may not obtain {requested}"
            )));
        };
        if namespace == requested.namespace() && account == requested.service_account() {
            return Ok(());
        }
        let is_node_proxy = self
            .options
            .node_proxies
            .iter()
            .any(|sa| sa.namespace == namespace && sa.name == account);
        if !is_node_proxy {
            return Err(Status::permission_denied(format!(
                "caller {username} may not obtain {requested}: only service account {}/{} \
                 or a node proxy on the node of one of its pods may",
                requested.namespace(),
                requested.service_account()
            )));
        }
        if !self.pods.ready().await {
            return Err(Status::unavailable(format!(
                "pod cache not synced yet; cannot check {requested} for node proxy {username}"
            )));
        }
        let node = self.caller_node(namespace, user).map_err(|reason| {
            Status::permission_denied(format!(
                "node proxy {username} may not obtain {requested}: {reason}"
            ))
        })?;
        if self.pods.any_pod(&|pod| runs_as(pod, &node, requested)) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "node proxy {username} on node {node} may not obtain {requested}: no running pod \
                 of service account {}/{} on that node",
                requested.namespace(),
                requested.service_account()
            )))
        }
    }

    /// The node a (pod-bound) token of namespace `namespace` was issued on.
    fn caller_node(&self, namespace: &str, user: &Reviewed) -> Result<String, String> {
        if let Some(node) = &user.node_name {
            return Ok(node.clone());
        }
        let Some(pod_name) = &user.pod_name else {
            return Err("its token is bound to no pod or node".into());
        };
        let pod = self
            .pods
            .pod(namespace, pod_name)
            .ok_or_else(|| format!("its pod {namespace}/{pod_name} is not known"))?;
        if let (Some(bound), Some(actual)) = (&user.pod_uid, &pod.metadata.uid)
            && bound != actual
        {
            return Err(format!(
                "its token is bound to pod uid {bound}, but pod {namespace}/{pod_name} is {actual}"
            ));
        }
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("its pod {namespace}/{pod_name} is not scheduled to a node"))
    }
}

impl<P: PodCache> Authorizer for TokenReviewAuthorizer<P> {
    async fn authorize(&self, caller: &Caller<'_>, requested: &SpiffeId) -> Result<(), Status> {
        let Some(token) = caller.bearer_token() else {
            return Err(Status::unauthenticated(format!(
                "{requested}: no bearer token; send `authorization: Bearer <token>` with a \
                 service-account token for audience {}",
                self.options.audiences.join(",")
            )));
        };
        let token = token.to_owned();
        let user = self.review(&token).await?;
        self.decide(&user, requested).await
    }
}

/// The identity in a TokenReview status, if it authenticates the token for one of `audiences`.
fn check_review(status: TokenReviewStatus, audiences: &[String]) -> Result<Reviewed, String> {
    if status.authenticated != Some(true) {
        return Err(status
            .error
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "not authenticated".to_owned()));
    }
    // An empty `status.audiences` means "valid for the API server", not for us.
    let ours = status
        .audiences
        .iter()
        .flatten()
        .any(|a| audiences.contains(a));
    if !ours {
        return Err(format!(
            "token audiences {:?} do not include {}",
            status.audiences.unwrap_or_default(),
            audiences.join(",")
        ));
    }
    let user = status.user.unwrap_or_default();
    let username = user
        .username
        .filter(|u| !u.is_empty())
        .ok_or("no username")?;
    let extra = user.extra.unwrap_or_default();
    let first = |key: &str| {
        extra
            .get(key)
            .and_then(|v| v.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    Ok(Reviewed {
        username,
        node_name: first(EXTRA_NODE_NAME),
        pod_name: first(EXTRA_POD_NAME),
        pod_uid: first(EXTRA_POD_UID),
        fresh_until: Instant::now(),
    })
}

/// `(namespace, name)` of a `system:serviceaccount:NS:SA` username.
fn service_account_of(username: &str) -> Option<(&str, &str)> {
    let (namespace, name) = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)?
        .split_once(':')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains(':')).then_some((namespace, name))
}

/// Whether `pod` runs, on `node`, as the service account of `id`.
fn runs_as(pod: &Pod, node: &str, id: &SpiffeId) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    let account = spec
        .service_account_name
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
    pod.metadata.namespace.as_deref() == Some(id.namespace())
        && spec.node_name.as_deref() == Some(node)
        && account == id.service_account()
        && !finished
}

/// SHA-256 of a token: the cache key, so the cache never holds tokens themselves.
fn token_digest(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// The `exp` claim of a JWT, read without verifying (the TokenReview verified the token).
fn token_expiry(token: &str) -> Option<SystemTime> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let claims: serde_json::Value = serde_json::from_slice(&base64url_decode(payload)?).ok()?;
    let exp = claims.get("exp")?;
    let secs = exp
        .as_u64()
        .or_else(|| exp.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Decodes unpadded (or padded) base64url.
fn base64url_decode(input: &str) -> Option<Vec<u8>> {
    let input = input.trim_end_matches('=');
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in input.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The mesh CA from Secret `namespace/secret_name` (see the [module documentation](self) for
/// its format), creating the Secret with a new self-signed root for `trust_domain` if it does
/// not exist. Replicas starting together race on the create; the loser reads the winner's
/// Secret, so every replica and every restart signs with the same root.
pub async fn load_or_create_ca(
    client: Client,
    namespace: &str,
    secret_name: &str,
    trust_domain: &str,
) -> Result<CertificateAuthority, CaSetupError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let read = |source| CaSetupError::Read {
        namespace: namespace.to_owned(),
        name: secret_name.to_owned(),
        source: Box::new(source),
    };
    if let Some(secret) = api.get_opt(secret_name).await.map_err(read)? {
        let ca = ca_from_secret(&secret, namespace, secret_name, trust_domain)?;
        tracing::info!(secret = %format!("{namespace}/{secret_name}"), trust_domain, "loaded the mesh CA");
        return Ok(ca);
    }
    let ca = CertificateAuthority::new_self_signed(trust_domain).map_err(|source| {
        CaSetupError::Generate {
            namespace: namespace.to_owned(),
            name: secret_name.to_owned(),
            source: Box::new(source),
        }
    })?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/name".to_owned(), "strait-ca".to_owned()),
                ("app.kubernetes.io/part-of".to_owned(), "strait".to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            (
                CA_CERT_KEY.to_owned(),
                ByteString(ca.root_pem().as_bytes().to_vec()),
            ),
            (CA_KEY_KEY.to_owned(), ByteString(ca.key_pem().into_bytes())),
        ])),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{secret_name}"), trust_domain, "created a new mesh CA");
            Ok(ca)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // Another replica created it first: use theirs.
            let secret = api.get(secret_name).await.map_err(read)?;
            let ca = ca_from_secret(&secret, namespace, secret_name, trust_domain)?;
            tracing::info!(secret = %format!("{namespace}/{secret_name}"), trust_domain, "loaded the mesh CA another replica created");
            Ok(ca)
        }
        Err(source) => Err(CaSetupError::Create {
            namespace: namespace.to_owned(),
            name: secret_name.to_owned(),
            source: Box::new(source),
        }),
    }
}

/// Loads the CA from a Secret's `ca.crt`, `ca.key` and optional `root.crt`.
fn ca_from_secret(
    secret: &Secret,
    namespace: &str,
    name: &str,
    trust_domain: &str,
) -> Result<CertificateAuthority, CaSetupError> {
    let invalid = |reason: String| CaSetupError::Invalid {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        reason,
    };
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let text = |key: &str| -> Result<Option<&str>, CaSetupError> {
        data.get(key)
            .map(|value| {
                std::str::from_utf8(&value.0).map_err(|_| invalid(format!("{key} is not PEM text")))
            })
            .transpose()
    };
    let expected = format!(
        "expected {CA_CERT_KEY} and {CA_KEY_KEY} (PEM), optionally {TRUST_ANCHOR_KEY}; found keys {:?}",
        data.keys().collect::<Vec<_>>()
    );
    let cert =
        text(CA_CERT_KEY)?.ok_or_else(|| invalid(format!("no {CA_CERT_KEY}: {expected}")))?;
    let key = text(CA_KEY_KEY)?.ok_or_else(|| invalid(format!("no {CA_KEY_KEY}: {expected}")))?;
    let anchor = text(TRUST_ANCHOR_KEY)?;
    CertificateAuthority::from_pem_chain(cert, key, anchor, trust_domain).map_err(|source| {
        CaSetupError::Ca {
            namespace: secret.namespace().unwrap_or_else(|| namespace.to_owned()),
            name: name.to_owned(),
            source: Box::new(source),
        }
    })
}

/// Serves the CA on `listener` until `shutdown`, admitting callers with a
/// [`TokenReviewAuthorizer`] over `client` and `pods` (the controller's pod reflector, e.g.
/// the `Store<Pod>` of its sources).
pub async fn serve_ca<P: PodCache>(
    client: Client,
    ca: impl Into<Arc<CertificateAuthority>>,
    pods: P,
    options: TokenReviewOptions,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), IdentityError> {
    let authorizer = Arc::new(TokenReviewAuthorizer::new(client, pods, options));
    serve_ca_with(authorizer, ca, listener, None, shutdown).await
}

/// [`serve_ca`] with an authorizer the caller shares (e.g. with the config stream's
/// [`ScopeAuthorizer`], so a proxy's token is reviewed once for both).
pub async fn serve_ca_with<P: PodCache>(
    authorizer: Arc<TokenReviewAuthorizer<P>>,
    ca: impl Into<Arc<CertificateAuthority>>,
    listener: tokio::net::TcpListener,
    tls: Option<tonic::transport::Identity>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), IdentityError> {
    let authorizer = SharedAuthorizer(authorizer);
    strait_identity::serve_with_tls(ca.into(), authorizer, listener, tls, shutdown).await
}

/// The CA's view of a shared [`TokenReviewAuthorizer`].
struct SharedAuthorizer<P>(Arc<TokenReviewAuthorizer<P>>);

impl<P: PodCache> Authorizer for SharedAuthorizer<P> {
    async fn authorize(&self, caller: &Caller<'_>, requested: &SpiffeId) -> Result<(), Status> {
        self.0.authorize(caller, requested).await
    }
}

/// Who may subscribe to which config scope. Configs carry the private keys of Gateway
/// listeners and the mesh's topology, so each proxy reads only its own:
/// - `Gateway ns/name`: the provisioned gateway's service account, `ns/<name>-strait`;
/// - `Waypoint ns/name`: a service account of namespace `ns` (the waypoint runs there);
/// - `Node name`: a node proxy (one of [`TokenReviewOptions::node_proxies`]) whose
///   pod-bound token says it runs on node `name`.
///
/// Tokens are reviewed (and cached) by the same [`TokenReviewAuthorizer`] as the CA's.
pub struct ScopeAuthorizer<P> {
    reviewer: Arc<TokenReviewAuthorizer<P>>,
}

impl<P: PodCache> ScopeAuthorizer<P> {
    pub fn new(reviewer: Arc<TokenReviewAuthorizer<P>>) -> ScopeAuthorizer<P> {
        ScopeAuthorizer { reviewer }
    }

    fn decide(&self, user: &Reviewed, scope: &strait_xds::Scope) -> Result<(), String> {
        let username = &user.username;
        let (namespace, account) = service_account_of(username)
            .ok_or_else(|| format!("caller {username} is not a service account"))?;
        match scope {
            strait_xds::Scope::Gateway {
                namespace: gateway_namespace,
                name,
            } => {
                let expected = crate::provision::gateway_service_account(name);
                (namespace == gateway_namespace && account == expected)
                    .then_some(())
                    .ok_or_else(|| {
                        format!(
                            "caller {username} may not read the config of Gateway \
                            {gateway_namespace}/{name}: only service account \
                            {gateway_namespace}/{expected} may"
                        )
                    })
            }
            strait_xds::Scope::Waypoint {
                namespace: waypoint_namespace,
                name,
            } => (namespace == waypoint_namespace)
                .then_some(())
                .ok_or_else(|| {
                    format!(
                        "caller {username} may not read the config of waypoint \
                    {waypoint_namespace}/{name}: only service accounts of \
                    {waypoint_namespace} may"
                    )
                }),
            strait_xds::Scope::Node { name } => {
                let is_node_proxy = self
                    .reviewer
                    .options
                    .node_proxies
                    .iter()
                    .any(|sa| sa.namespace == namespace && sa.name == account);
                if !is_node_proxy {
                    return Err(format!(
                        "caller {username} may not read the config of node {name}: it is not a \
                        node proxy"
                    ));
                }
                let node = self.reviewer.caller_node(namespace, user)?;
                (node == *name).then_some(()).ok_or_else(|| {
                    format!(
                        "node proxy {username} runs on node {node}, not {name}, and may not \
                        read that node's config"
                    )
                })
            }
        }
    }
}

impl<P: PodCache> strait_xds::SubscriberAuth for ScopeAuthorizer<P> {
    async fn authorize(
        &self,
        subscriber: &strait_xds::server::Subscriber<'_>,
    ) -> Result<(), Status> {
        let scope = &subscriber.hello.scope;
        let Some(token) = subscriber.bearer_token() else {
            return Err(Status::unauthenticated(format!(
                "config of {scope:?}: no bearer token; send `authorization: Bearer <token>` \
                with a service-account token for audience {}",
                self.reviewer.options.audiences.join(",")
            )));
        };
        let token = token.to_owned();
        let user = self.reviewer.review(&token).await?;
        if matches!(scope, strait_xds::Scope::Node { .. }) && !self.reviewer.pods.ready().await {
            return Err(Status::unavailable("pod cache not synced yet"));
        }
        self.decide(&user, scope).map_err(Status::permission_denied)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn authenticated(audiences: Option<&[&str]>) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: audiences.map(|a| a.iter().map(|s| s.to_string()).collect()),
            user: Some(UserInfo {
                username: Some("system:serviceaccount:shop:cart".into()),
                extra: Some(BTreeMap::from([(
                    EXTRA_NODE_NAME.to_owned(),
                    vec!["node-a".to_owned()],
                )])),
                ..UserInfo::default()
            }),
            error: None,
        }
    }

    #[test]
    fn reviews_must_name_our_audience() {
        let ours = vec![CA_AUDIENCE.to_owned()];
        let user = check_review(authenticated(Some(&["strait-ca", "x"])), &ours).unwrap();
        assert_eq!(user.username, "system:serviceaccount:shop:cart");
        assert_eq!(user.node_name.as_deref(), Some("node-a"));
        assert_eq!(user.pod_name, None);

        // Empty audiences: the token is for the API server.
        let err = check_review(authenticated(None), &ours).unwrap_err();
        assert!(err.contains("do not include strait-ca"), "{err}");
        let err = check_review(
            authenticated(Some(&["https://kubernetes.default.svc"])),
            &ours,
        )
        .unwrap_err();
        assert!(err.contains("kubernetes.default.svc"), "{err}");
        // No configured audience: fail closed.
        assert!(check_review(authenticated(Some(&["strait-ca"])), &[]).is_err());

        let rejected = TokenReviewStatus {
            error: Some("token expired".into()),
            ..TokenReviewStatus::default()
        };
        assert_eq!(check_review(rejected, &ours).unwrap_err(), "token expired");
    }

    #[test]
    fn service_account_usernames() {
        assert_eq!(
            service_account_of("system:serviceaccount:shop:cart"),
            Some(("shop", "cart"))
        );
        assert_eq!(service_account_of("system:serviceaccount:shop:"), None);
        assert_eq!(service_account_of("system:serviceaccount:a:b:c"), None);
        assert_eq!(service_account_of("system:node:node-a"), None);
        assert_eq!(service_account_of("alice"), None);
    }

    #[test]
    fn jwt_expiry_is_read_from_the_payload() {
        // {"aud":["strait-ca"],"exp":1700000000}
        let payload = "eyJhdWQiOlsic3RyYWl0LWNhIl0sImV4cCI6MTcwMDAwMDAwMH0";
        let token = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln");
        assert_eq!(
            token_expiry(&token),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(token_expiry("opaque-token"), None);
        assert_eq!(token_expiry("a.!!!.c"), None);
        assert_eq!(base64url_decode("aGk").unwrap(), b"hi");
        assert_eq!(base64url_decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64url_decode("_-8").unwrap(), [0xff, 0xef]);
    }

    #[test]
    fn runs_as_checks_namespace_node_account_and_phase() {
        let pod = |ns: &str, node: &str, sa: Option<&str>, phase: Option<&str>| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": ns},
                "spec": {"nodeName": node, "serviceAccountName": sa, "containers": []},
                "status": {"phase": phase},
            }))
            .unwrap()
        };
        let cart = SpiffeId::new("cluster.local", "shop", "cart").unwrap();
        let default = SpiffeId::new("cluster.local", "shop", "default").unwrap();
        assert!(runs_as(
            &pod("shop", "n1", Some("cart"), Some("Running")),
            "n1",
            &cart
        ));
        assert!(runs_as(&pod("shop", "n1", Some("cart"), None), "n1", &cart));
        assert!(!runs_as(
            &pod("shop", "n2", Some("cart"), None),
            "n1",
            &cart
        ));
        assert!(!runs_as(
            &pod("other", "n1", Some("cart"), None),
            "n1",
            &cart
        ));
        assert!(!runs_as(
            &pod("shop", "n1", Some("cart"), Some("Succeeded")),
            "n1",
            &cart
        ));
        assert!(!runs_as(
            &pod("shop", "n1", Some("cart"), Some("Failed")),
            "n1",
            &cart
        ));
        assert!(runs_as(&pod("shop", "n1", None, None), "n1", &default));
        assert!(!runs_as(&pod("shop", "n1", None, None), "n1", &cart));
    }
}
