//! The controller's workload CA end to end: gRPC requests carrying bearer tokens, verified by
//! TokenReview against the in-process API server, authorized against a pod reflector cache,
//! signed with a root kept in Secret strait-system/strait-ca.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};
use strait_controller::ca::{CaSetupError, TokenReviewOptions, load_or_create_ca, serve_ca};
use strait_identity::{
    CertificateAuthority, CertificateClient, Certificates, IdentityError, SpiffeId,
    WorkloadCertificate,
};
use strait_test_apiserver::{TestApiServer, TokenIdentity};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;

const TD: &str = "cluster.local";
const NODE_NAME: &str = "authentication.kubernetes.io/node-name";
/// Header of the JWTs the fake token issuer accepts.
const JWT_HEADER: &str = "eyJhbGciOiJSUzI1NiJ9";

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TD, ns, sa).unwrap()
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// A JWT-shaped token with the given claims (the fake issuer does not check signatures).
fn jwt(claims: Value) -> String {
    format!(
        "{JWT_HEADER}.{}.c2lnbmF0dXJl",
        base64url(claims.to_string().as_bytes())
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Creates a pod on `node` running as `sa` (`None`: no serviceAccountName), optionally with a
/// phase; returns its uid.
fn pod(
    server: &TestApiServer,
    ns: &str,
    name: &str,
    node: &str,
    sa: Option<&str>,
    phase: Option<&str>,
) -> String {
    let mut spec = json!({"nodeName": node, "containers": [{"name": "app", "image": "app"}]});
    if let Some(sa) = sa {
        spec["serviceAccountName"] = json!(sa);
    }
    let mut created = server
        .create(json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": name, "namespace": ns}, "spec": spec}))
        .expect("create pod");
    if let Some(phase) = phase {
        created["status"] = json!({"phase": phase});
        created = server.update_status(created).expect("pod status");
    }
    created["metadata"]["uid"]
        .as_str()
        .expect("pod uid")
        .to_owned()
}

/// Who the fake TokenReview endpoint says each token is.
fn identities(uids: &HashMap<&str, String>) -> HashMap<String, TokenIdentity> {
    let node_a = {
        let mut who = TokenIdentity::service_account(
            "strait-system",
            "strait-node",
            Some(("strait-node-a", &uids["strait-node-a"])),
        );
        who.extra
            .insert(NODE_NAME.to_owned(), vec!["node-a".to_owned()]);
        who
    };
    HashMap::from([
        (
            "tok-cart".to_owned(),
            TokenIdentity::service_account("shop", "cart", Some(("cart-1", &uids["cart-1"]))),
        ),
        ("tok-node-a".to_owned(), node_a),
        // Node name only through the bound pod (clusters without the node-name extra).
        (
            "tok-node-b-pod".to_owned(),
            TokenIdentity::service_account(
                "strait-system",
                "strait-node",
                Some(("strait-node-b", &uids["strait-node-b"])),
            ),
        ),
        (
            "tok-node-stale-uid".to_owned(),
            TokenIdentity::service_account(
                "strait-system",
                "strait-node",
                Some(("strait-node-b", "00000000-0000-0000-0000-000000000000")),
            ),
        ),
        (
            "tok-node-gone".to_owned(),
            TokenIdentity::service_account(
                "strait-system",
                "strait-node",
                Some(("strait-node-gone", "uid-gone")),
            ),
        ),
        (
            "tok-node-unbound".to_owned(),
            TokenIdentity::service_account("strait-system", "strait-node", None),
        ),
        (
            "tok-user".to_owned(),
            TokenIdentity {
                username: "alice".to_owned(),
                ..TokenIdentity::default()
            },
        ),
    ])
}

/// A cluster with pods on two nodes, a fake token issuer counting reviews per token, a pod
/// reflector and the CA served over gRPC on loopback.
struct Mesh {
    /// Kept alive for the CA's TokenReviews and the pod reflector.
    _server: TestApiServer,
    ca: Arc<CertificateAuthority>,
    endpoint: String,
    reviews: Arc<Mutex<HashMap<String, usize>>>,
    shutdown: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Mesh {
    async fn start(options: TokenReviewOptions) -> Mesh {
        let server = TestApiServer::start().await.expect("api server");
        for ns in ["shop", "strait-system"] {
            server
                .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
                .expect("namespace");
        }
        let mut uids = HashMap::new();
        uids.insert(
            "cart-1",
            pod(
                &server,
                "shop",
                "cart-1",
                "node-a",
                Some("cart"),
                Some("Running"),
            ),
        );
        pod(
            &server,
            "shop",
            "orders-1",
            "node-b",
            Some("orders"),
            Some("Running"),
        );
        pod(
            &server,
            "shop",
            "batch-1",
            "node-a",
            Some("batch"),
            Some("Succeeded"),
        );
        pod(&server, "shop", "legacy-1", "node-a", None, Some("Running"));
        for i in 0..12 {
            pod(
                &server,
                "shop",
                &format!("app-{i}"),
                "node-a",
                Some(&format!("app-{i}")),
                None,
            );
        }
        uids.insert(
            "strait-node-a",
            pod(
                &server,
                "strait-system",
                "strait-node-a",
                "node-a",
                Some("strait-node"),
                None,
            ),
        );
        uids.insert(
            "strait-node-b",
            pod(
                &server,
                "strait-system",
                "strait-node-b",
                "node-b",
                Some("strait-node"),
                None,
            ),
        );

        let known = identities(&uids);
        let reviews = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
        let counted = reviews.clone();
        server.set_tokenreview_handler(move |token| {
            *counted.lock().unwrap().entry(token.to_owned()).or_default() += 1;
            if let Some(who) = known.get(token) {
                return Some(who.clone());
            }
            // JWTs: accepted while `exp` has not passed, for audience strait-ca only (as the
            // real API server checks the token's `aud` against spec.audiences).
            let payload = token.strip_prefix(JWT_HEADER)?.split('.').nth(1)?;
            let claims = decode_claims(payload)?;
            let for_us = claims["aud"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == "strait-ca"));
            (for_us && claims["exp"].as_u64()? > unix_now())
                .then(|| TokenIdentity::service_account("shop", "cart", None))
        });

        let client = server.kube_client().expect("client");
        let ca = Arc::new(
            load_or_create_ca(client.clone(), "strait-system", "strait-ca", TD)
                .await
                .expect("CA"),
        );
        let (pods, reflector_task) = pod_store(&client);
        pods.wait_until_ready().await.expect("pod cache");

        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel();
        let serving = tokio::spawn({
            let ca = ca.clone();
            async move {
                serve_ca(client, ca, pods, options, listener, async {
                    let _ = rx.await;
                })
                .await
                .expect("CA server");
            }
        });
        Mesh {
            _server: server,
            ca,
            endpoint,
            reviews,
            shutdown: Some(tx),
            tasks: vec![reflector_task, serving],
        }
    }

    /// Certificates obtained from the CA with `token`.
    async fn certificates(&self, token: Option<&str>) -> Certificates {
        let mut client = CertificateClient::connect(&self.endpoint)
            .await
            .expect("connect");
        if let Some(token) = token {
            client = client.with_bearer_token(token).expect("token");
        }
        Certificates::new(client)
    }

    /// One certificate for `ns/sa` with `token`, or the CA's refusal.
    async fn request(
        &self,
        token: Option<&str>,
        ns: &str,
        sa: &str,
    ) -> Result<Arc<WorkloadCertificate>, tonic::Status> {
        rpc_result(self.certificates(token).await.get(&id(ns, sa)).await)
    }

    fn reviews_of(&self, token: &str) -> usize {
        self.reviews
            .lock()
            .unwrap()
            .get(token)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn rpc_result<T>(result: Result<T, IdentityError>) -> Result<T, tonic::Status> {
    result.map_err(|e| match e {
        IdentityError::Rpc { status, .. } => *status,
        other => panic!("expected a CA refusal, got {other}"),
    })
}

fn decode_claims(payload: &str) -> Option<Value> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in payload.bytes() {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push(((acc >> bits) & 0xff) as u8);
        }
    }
    serde_json::from_slice(&bytes).ok()
}

fn pod_store(client: &kube::Client) -> (Store<Pod>, JoinHandle<()>) {
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    (reader, task)
}

fn assert_refused(
    result: Result<Arc<WorkloadCertificate>, tonic::Status>,
    code: Code,
    parts: &[&str],
) {
    let status = result.expect_err("the CA must refuse");
    assert_eq!(status.code(), code, "{status:?}");
    for part in parts {
        assert!(
            status.message().contains(part),
            "{:?} does not mention {part:?}",
            status.message()
        );
    }
}

#[tokio::test]
async fn workload_gets_only_its_own_identity() {
    let mesh = Mesh::start(TokenReviewOptions::default()).await;
    let cert = mesh
        .request(Some("tok-cart"), "shop", "cart")
        .await
        .expect("own identity");
    assert_eq!(cert.id(), &id("shop", "cart"));
    assert_eq!(cert.root(), mesh.ca.root_der());

    assert_refused(
        mesh.request(Some("tok-cart"), "shop", "orders").await,
        Code::PermissionDenied,
        &[
            "system:serviceaccount:shop:cart",
            "spiffe://cluster.local/ns/shop/sa/orders",
        ],
    );
    // A node proxy's identity is no exception.
    assert_refused(
        mesh.request(Some("tok-cart"), "strait-system", "strait-node")
            .await,
        Code::PermissionDenied,
        &["system:serviceaccount:shop:cart"],
    );
    // Users that are not service accounts get nothing.
    assert_refused(
        mesh.request(Some("tok-user"), "shop", "cart").await,
        Code::PermissionDenied,
        &["alice", "spiffe://cluster.local/ns/shop/sa/cart"],
    );
}

#[tokio::test]
async fn node_proxy_gets_identities_of_pods_on_its_node() {
    let mesh = Mesh::start(TokenReviewOptions::default()).await;
    // Node from `authentication.kubernetes.io/node-name`.
    let cart = mesh.request(Some("tok-node-a"), "shop", "cart").await;
    assert_eq!(cart.expect("pod on node-a").id(), &id("shop", "cart"));
    // A pod without serviceAccountName runs as `default`.
    mesh.request(Some("tok-node-a"), "shop", "default")
        .await
        .expect("default service account");
    // Its own identity, like any workload.
    mesh.request(Some("tok-node-a"), "strait-system", "strait-node")
        .await
        .expect("own identity");
    assert_refused(
        mesh.request(Some("tok-node-a"), "shop", "orders").await,
        Code::PermissionDenied,
        &[
            "system:serviceaccount:strait-system:strait-node",
            "node-a",
            "spiffe://cluster.local/ns/shop/sa/orders",
        ],
    );
    // A finished pod no longer needs an identity.
    assert_refused(
        mesh.request(Some("tok-node-a"), "shop", "batch").await,
        Code::PermissionDenied,
        &["spiffe://cluster.local/ns/shop/sa/batch"],
    );
    // No pod of that service account anywhere.
    assert_refused(
        mesh.request(Some("tok-node-a"), "shop", "nobody").await,
        Code::PermissionDenied,
        &["nobody"],
    );
}

#[tokio::test]
async fn node_proxy_node_falls_back_to_its_bound_pod() {
    let mesh = Mesh::start(TokenReviewOptions::default()).await;
    // No node-name extra: the node comes from strait-system/strait-node-b's spec.nodeName.
    mesh.request(Some("tok-node-b-pod"), "shop", "orders")
        .await
        .expect("pod on node-b");
    assert_refused(
        mesh.request(Some("tok-node-b-pod"), "shop", "cart").await,
        Code::PermissionDenied,
        &["node-b", "spiffe://cluster.local/ns/shop/sa/cart"],
    );
    // The bound pod is not the pod of that name any more (deleted and recreated).
    assert_refused(
        mesh.request(Some("tok-node-stale-uid"), "shop", "orders")
            .await,
        Code::PermissionDenied,
        &["uid"],
    );
    // The bound pod is not in the cache: no node, no certificates for others.
    assert_refused(
        mesh.request(Some("tok-node-gone"), "shop", "orders").await,
        Code::PermissionDenied,
        &["strait-system/strait-node-gone"],
    );
    // A token bound to nothing names no node.
    assert_refused(
        mesh.request(Some("tok-node-unbound"), "shop", "orders")
            .await,
        Code::PermissionDenied,
        &["no pod or node"],
    );
}

#[tokio::test]
async fn only_configured_service_accounts_are_node_proxies() {
    let options = TokenReviewOptions {
        node_proxies: vec![],
        ..TokenReviewOptions::default()
    };
    let mesh = Mesh::start(options).await;
    assert_refused(
        mesh.request(Some("tok-node-a"), "shop", "cart").await,
        Code::PermissionDenied,
        &["system:serviceaccount:strait-system:strait-node"],
    );
}

#[tokio::test]
async fn missing_unknown_and_foreign_audience_tokens_are_unauthenticated() {
    let mesh = Mesh::start(TokenReviewOptions::default()).await;
    assert_refused(
        mesh.request(None, "shop", "cart").await,
        Code::Unauthenticated,
        &["bearer token"],
    );
    assert_refused(
        mesh.request(Some("tok-nobody-knows"), "shop", "cart").await,
        Code::Unauthenticated,
        &["invalid bearer token"],
    );
    let exp = unix_now() + 600;
    let for_api_server = jwt(json!({"aud": ["https://kubernetes.default.svc"], "exp": exp}));
    assert_refused(
        mesh.request(Some(&for_api_server), "shop", "cart").await,
        Code::Unauthenticated,
        &[],
    );
    let for_us = jwt(json!({"aud": ["strait-ca"], "exp": exp}));
    mesh.request(Some(&for_us), "shop", "cart")
        .await
        .expect("token for audience strait-ca");
    // Rejections are not cached: each is a review.
    assert_refused(
        mesh.request(Some("tok-nobody-knows"), "shop", "cart").await,
        Code::Unauthenticated,
        &[],
    );
    assert_eq!(mesh.reviews_of("tok-nobody-knows"), 2);
}

#[tokio::test]
async fn reviews_are_cached_and_shared_by_concurrent_requests() {
    let mesh = Mesh::start(TokenReviewOptions::default()).await;
    // A node proxy starting twelve pods at once: one TokenReview.
    let certs = mesh.certificates(Some("tok-node-a")).await;
    let ids: Vec<SpiffeId> = (0..12).map(|i| id("shop", &format!("app-{i}"))).collect();
    let results = futures_util::future::join_all(ids.iter().map(|id| certs.get(id))).await;
    for (id, result) in ids.iter().zip(results) {
        assert_eq!(result.expect("pod on node-a").id(), id);
    }
    mesh.request(Some("tok-node-a"), "shop", "cart")
        .await
        .unwrap();
    // A refusal after authentication reuses the review as well.
    assert!(
        mesh.request(Some("tok-node-a"), "shop", "orders")
            .await
            .is_err()
    );
    assert_eq!(mesh.reviews_of("tok-node-a"), 1);
    // Another token is reviewed on its own.
    mesh.request(Some("tok-cart"), "shop", "cart")
        .await
        .unwrap();
    assert_eq!(mesh.reviews_of("tok-cart"), 1);
    assert_eq!(mesh.reviews_of("tok-node-a"), 1);
}

#[tokio::test]
async fn cached_reviews_expire_after_the_ttl() {
    let options = TokenReviewOptions {
        cache_ttl: Duration::from_millis(300),
        ..TokenReviewOptions::default()
    };
    let mesh = Mesh::start(options).await;
    mesh.request(Some("tok-cart"), "shop", "cart")
        .await
        .unwrap();
    mesh.request(Some("tok-cart"), "shop", "cart")
        .await
        .unwrap();
    assert_eq!(mesh.reviews_of("tok-cart"), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    mesh.request(Some("tok-cart"), "shop", "cart")
        .await
        .unwrap();
    assert_eq!(mesh.reviews_of("tok-cart"), 2);
}

#[tokio::test]
async fn cached_reviews_never_outlive_the_token() {
    let mesh = Mesh::start(TokenReviewOptions::default()).await;
    let token = jwt(json!({"aud": ["strait-ca"], "exp": unix_now() + 2}));
    mesh.request(Some(&token), "shop", "cart").await.unwrap();
    mesh.request(Some(&token), "shop", "cart").await.unwrap();
    assert_eq!(mesh.reviews_of(&token), 1);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    // Expired: reviewed again, and the issuer now rejects it.
    assert_refused(
        mesh.request(Some(&token), "shop", "cart").await,
        Code::Unauthenticated,
        &[],
    );
    assert_eq!(mesh.reviews_of(&token), 2);
}

#[tokio::test]
async fn ca_secret_is_created_once_and_shared() {
    let server = TestApiServer::start().await.expect("api server");
    server
        .create(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "strait-system"}}),
        )
        .unwrap();
    let (a, b) = (server.kube_client().unwrap(), server.kube_client().unwrap());
    // Two replicas starting together.
    let (first, second) = tokio::join!(
        load_or_create_ca(a.clone(), "strait-system", "strait-ca", TD),
        load_or_create_ca(b.clone(), "strait-system", "strait-ca", TD),
    );
    let (first, second) = (
        first.expect("first replica"),
        second.expect("second replica"),
    );
    assert_eq!(first.root_der(), second.root_der());
    assert_eq!(first.trust_domain(), TD);

    let secrets = server.list("v1", "Secret", Some("strait-system")).unwrap();
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0]["metadata"]["name"], "strait-ca");
    assert_eq!(secrets[0]["type"], "Opaque");
    let keys: Vec<&String> = secrets[0]["data"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["ca.crt", "ca.key"]);
    let version = secrets[0]["metadata"]["resourceVersion"].clone();

    // A restart loads the same root and leaves the Secret alone.
    let restarted = load_or_create_ca(a.clone(), "strait-system", "strait-ca", TD)
        .await
        .unwrap();
    assert_eq!(restarted.root_der(), first.root_der());
    let secret = server
        .get("v1", "Secret", Some("strait-system"), "strait-ca")
        .unwrap();
    assert_eq!(secret["metadata"]["resourceVersion"], version);

    // Certificates of different replicas trust each other.
    let x = Certificates::from_ca(Arc::new(first))
        .get(&id("shop", "x"))
        .await
        .unwrap();
    let y = Certificates::from_ca(Arc::new(restarted))
        .get(&id("shop", "y"))
        .await
        .unwrap();
    assert_eq!(x.root(), y.root());

    // Another trust domain than the stored root's is an error naming the Secret.
    let err = load_or_create_ca(a.clone(), "strait-system", "strait-ca", "other.domain")
        .await
        .unwrap_err();
    assert!(matches!(err, CaSetupError::Ca { .. }), "{err}");
    assert!(err.to_string().contains("strait-system/strait-ca"), "{err}");
}

/// A root CA of some organisation (no SPIFFE SAN) and an intermediate it issued for the mesh.
fn organisation_pki() -> (String, String, String) {
    let root_key = KeyPair::generate().unwrap();
    let mut root = CertificateParams::default();
    root.distinguished_name
        .push(DnType::CommonName, "Example Corp Root");
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root_cert = root.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root, root_key);

    let mesh_key = KeyPair::generate().unwrap();
    let mut mesh = CertificateParams::default();
    mesh.distinguished_name
        .push(DnType::CommonName, "Example Corp mesh CA");
    mesh.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    mesh.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    mesh.subject_alt_names = vec![SanType::URI("spiffe://cluster.local".try_into().unwrap())];
    let mesh_cert = mesh.signed_by(&mesh_key, &root_issuer).unwrap();
    (root_cert.pem(), mesh_cert.pem(), mesh_key.serialize_pem())
}

fn ca_secret(data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), json!(base64(v.as_bytes()))))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {"name": "strait-ca", "namespace": "strait-system"}, "data": data})
}

fn base64(bytes: &[u8]) -> String {
    let mut s = base64url(bytes).replace('-', "+").replace('_', "/");
    while !s.len().is_multiple_of(4) {
        s.push('=');
    }
    s
}

#[tokio::test]
async fn user_provided_intermediate_ca_is_used() {
    let (root_pem, mesh_pem, mesh_key) = organisation_pki();
    let server = TestApiServer::start().await.expect("api server");
    server
        .create(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "strait-system"}}),
        )
        .unwrap();
    let client = server.kube_client().unwrap();

    // Missing key: refused, naming the Secret, and nothing is overwritten.
    server.create(ca_secret(&[("ca.crt", &mesh_pem)])).unwrap();
    let err = load_or_create_ca(client.clone(), "strait-system", "strait-ca", TD)
        .await
        .unwrap_err();
    assert!(matches!(err, CaSetupError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("strait-system/strait-ca"), "{err}");
    assert!(err.to_string().contains("ca.key"), "{err}");

    // The intermediate without its root: it becomes the trust anchor itself.
    server
        .update(ca_secret(&[("ca.crt", &mesh_pem), ("ca.key", &mesh_key)]))
        .unwrap();
    let ca = load_or_create_ca(client.clone(), "strait-system", "strait-ca", TD)
        .await
        .unwrap();
    assert_eq!(same_pem(ca.root_pem()), same_pem(&mesh_pem));

    // With root.crt, proxies trust the organisation's root and get the intermediate in the
    // chain of every certificate.
    server
        .update(ca_secret(&[
            ("ca.crt", &mesh_pem),
            ("ca.key", &mesh_key),
            ("root.crt", &root_pem),
        ]))
        .unwrap();
    let ca = load_or_create_ca(client.clone(), "strait-system", "strait-ca", TD)
        .await
        .unwrap();
    assert_eq!(same_pem(ca.root_pem()), same_pem(&root_pem));
    let cert = Certificates::from_ca(Arc::new(ca))
        .get(&id("shop", "cart"))
        .await
        .expect("certificate chaining to the organisation's root");
    assert_eq!(cert.cert_chain().len(), 2);

    // The same, with the root appended to ca.crt instead.
    let chain = format!("{mesh_pem}{root_pem}");
    server
        .update(ca_secret(&[("ca.crt", &chain), ("ca.key", &mesh_key)]))
        .unwrap();
    let ca = load_or_create_ca(client.clone(), "strait-system", "strait-ca", TD)
        .await
        .unwrap();
    assert_eq!(same_pem(ca.root_pem()), same_pem(&root_pem));
    let chain = ca
        .sign_csr(
            &csr_for(&id("shop", "cart")),
            &id("shop", "cart"),
            Duration::ZERO,
        )
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf and intermediate, not the root");

    // A root that did not issue the intermediate is caught at load.
    let (other_root, _, _) = organisation_pki();
    server
        .update(ca_secret(&[
            ("ca.crt", &mesh_pem),
            ("ca.key", &mesh_key),
            ("root.crt", &other_root),
        ]))
        .unwrap();
    let err = load_or_create_ca(client.clone(), "strait-system", "strait-ca", TD)
        .await
        .unwrap_err();
    assert!(matches!(err, CaSetupError::Ca { .. }), "{err}");
    assert!(err.to_string().contains("certificate chain"), "{err}");
}

/// PEM text with line endings and surrounding space normalised, for comparisons.
fn same_pem(pem: &str) -> String {
    pem.replace("\r\n", "\n").trim().to_owned()
}

fn csr_for(id: &SpiffeId) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().unwrap())];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[tokio::test]
async fn a_token_file_is_read_anew_for_every_request() {
    let mesh = Mesh::start(TokenReviewOptions::default()).await;
    let dir = std::env::temp_dir().join(format!("strait-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("strait-ca");
    std::fs::write(&file, "tok-user\n").unwrap();
    let client = CertificateClient::connect(&mesh.endpoint)
        .await
        .unwrap()
        .with_bearer_token_file(&file);
    let certificates = Certificates::new(client.clone());
    assert_refused(
        rpc_result(certificates.get(&id("shop", "cart")).await),
        Code::PermissionDenied,
        &["alice"],
    );
    // The kubelet rotated the token: the next request presents the new one.
    std::fs::write(&file, "tok-cart\n").unwrap();
    let cert = rpc_result(Certificates::new(client).get(&id("shop", "cart")).await)
        .expect("the rotated token is used");
    assert_eq!(cert.id(), &id("shop", "cart"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `subscription` until it applied a version or failed (at most 5 s): the payloads it
/// received and its last error.
async fn first_payloads(subscription: strait_xds::Subscription) -> (Vec<Vec<u8>>, Option<String>) {
    let received = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let sink = received.clone();
    let handle = subscription.start(move |_, bytes| {
        sink.lock().unwrap().push(bytes.to_vec());
        std::future::ready(Ok(()))
    });
    let mut status = handle.watch_status();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        status.wait_for(|s| s.last_version.is_some() || s.last_error.is_some()),
    )
    .await;
    let error = handle.status().last_error;
    handle.stop().await;
    let received = received.lock().unwrap().clone();
    (received, error)
}

/// The config stream admits each proxy to its own scope only: configs carry Gateway private
/// keys, so a workload's token must not read a gateway's config, nor a node proxy another
/// node's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_stream_admits_each_proxy_to_its_own_scope_only() {
    use strait_controller::ca::{ScopeAuthorizer, TokenReviewAuthorizer};
    use strait_xds::server::ConfigHub;
    use strait_xds::{Hello, Scope, Subscription};

    let server = TestApiServer::start().await.unwrap();
    server.set_tokenreview_handler(|token| {
        let mut node_proxy = TokenIdentity::service_account("strait-system", "strait-node", None);
        node_proxy.extra.insert(
            "authentication.kubernetes.io/node-name".into(),
            vec!["node-a".into()],
        );
        match token {
            "tok-gateway" => Some(TokenIdentity::service_account("shop", "web-strait", None)),
            "tok-cart" => Some(TokenIdentity::service_account("shop", "cart", None)),
            "tok-node-a" => Some(node_proxy),
            _ => None,
        }
    });
    let client = server.kube_client().unwrap();
    let (pods, pod_task) = pod_store(&client);
    let reviewer = Arc::new(TokenReviewAuthorizer::new(
        client,
        pods,
        TokenReviewOptions::default(),
    ));
    let hub = ConfigHub::new();
    hub.publish(&Scope::gateway("shop", "web"), b"gateway-secrets".to_vec());
    hub.publish(&Scope::node("node-a"), b"mesh".to_vec());
    hub.publish(&Scope::node("node-b"), b"mesh".to_vec());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let serving = tokio::spawn(strait_xds::server::serve_with_auth(
        hub,
        ScopeAuthorizer::new(reviewer),
        listener,
        std::future::pending(),
    ));

    let dir = std::env::temp_dir().join(format!("strait-scope-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Subscribes with `token` (none if `None`) and reports what happened within a few seconds.
    let subscribe = |scope: Scope, token: Option<&str>| {
        let mut subscription = Subscription::new(endpoint.clone(), Hello::new(scope, "test"));
        if let Some(token) = token {
            let file = dir.join(token);
            std::fs::write(&file, token).unwrap();
            subscription = subscription.bearer_token_file(file);
        }
        first_payloads(subscription)
    };

    let (got, error) = subscribe(Scope::gateway("shop", "web"), Some("tok-gateway")).await;
    assert_eq!(got, [b"gateway-secrets".to_vec()], "{error:?}");

    let (got, error) = subscribe(Scope::gateway("shop", "web"), Some("tok-cart")).await;
    assert!(got.is_empty(), "a workload read the gateway's config");
    let error = error.expect("refused");
    assert!(
        error.contains("shop/web-strait") && error.contains("system:serviceaccount:shop:cart"),
        "{error}"
    );
    assert!(
        error.ends_with(
            "caller system:serviceaccount:shop:cart may not read the config of Gateway shop/web: \
             only service account shop/web-strait may"
        ),
        "one line, single-spaced: {error}"
    );

    let (got, error) = subscribe(Scope::gateway("shop", "web"), None).await;
    assert!(
        got.is_empty(),
        "an anonymous subscriber read the gateway's config"
    );
    let error = error.expect("refused");
    assert!(
        error.contains("no bearer token") && !error.contains("  "),
        "{error}"
    );

    let (got, error) = subscribe(Scope::node("node-a"), Some("tok-node-a")).await;
    assert_eq!(got, [b"mesh".to_vec()], "{error:?}");
    let (got, error) = subscribe(Scope::node("node-b"), Some("tok-node-a")).await;
    assert!(got.is_empty(), "a node proxy read another node's config");
    let error = error.expect("refused");
    assert!(
        error.contains("runs on node node-a") && !error.contains("  "),
        "{error}"
    );
    let (got, _) = subscribe(Scope::node("node-a"), Some("tok-cart")).await;
    assert!(got.is_empty(), "a workload read a node's config");

    serving.abort();
    pod_task.abort();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Across the cluster network the config stream and the CA speak TLS with a serving
/// certificate issued under the mesh's own root: proxies verify it with the trust anchor they
/// already have, and a proxy with another anchor is refused the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_serves_tls_under_the_mesh_root() {
    use strait_xds::server::ConfigHub;
    use strait_xds::{Hello, Scope, Subscription};

    let ca = Arc::new(CertificateAuthority::new_self_signed("cluster.local").unwrap());
    let (chain, key) = ca
        .issue_server_certificate(&["localhost".to_string()], Duration::from_secs(3600))
        .unwrap();
    let identity = tonic::transport::Identity::from_pem(chain, key);

    // The config stream.
    let hub = ConfigHub::new();
    hub.publish(&Scope::gateway("shop", "web"), b"over tls".to_vec());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stream_server = tokio::spawn(strait_xds::server::serve_with_auth_tls(
        hub,
        strait_xds::server::AllowAll,
        listener,
        Some(identity.clone()),
        std::future::pending(),
    ));
    let first_version = |root: String| {
        let subscription = Subscription::new(
            format!("https://localhost:{port}"),
            Hello::new(Scope::gateway("shop", "web"), "test"),
        )
        .tls_root(root);
        async move {
            let (payloads, error) = first_payloads(subscription).await;
            (payloads.into_iter().next(), error)
        }
    };
    let (got, error) = first_version(ca.root_pem().to_string()).await;
    assert_eq!(got.as_deref(), Some(&b"over tls"[..]), "{error:?}");
    let stranger = CertificateAuthority::new_self_signed("cluster.local").unwrap();
    let (got, error) = first_version(stranger.root_pem().to_string()).await;
    assert!(
        got.is_none(),
        "a proxy with another trust anchor accepted the server"
    );
    assert!(error.is_some());

    // The CA.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let ca_server = tokio::spawn(strait_identity::serve_with_tls(
        ca.clone(),
        strait_identity::AllowAll,
        listener,
        Some(identity),
        std::future::pending(),
    ));
    let endpoint = format!("https://localhost:{port}");
    let client = CertificateClient::connect_lazy_tls(&endpoint, ca.root_pem()).unwrap();
    let cert = rpc_result(Certificates::new(client).get(&id("shop", "cart")).await)
        .expect("certificate over TLS");
    assert_eq!(cert.id(), &id("shop", "cart"));
    let client = CertificateClient::connect_lazy_tls(&endpoint, stranger.root_pem()).unwrap();
    assert!(
        Certificates::new(client)
            .get(&id("shop", "cart"))
            .await
            .is_err(),
        "a client with another trust anchor talked to the CA"
    );
    stream_server.abort();
    ca_server.abort();
}
