//! Drives the test API server with a real `kube::Client` and typed APIs.

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute as HTTPRoute;
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;
use serde_json::json;
use strait_test_apiserver::{TestApiServer, TokenIdentity};

const WAIT: Duration = Duration::from_secs(10);

async fn server() -> (TestApiServer, kube::Client) {
    let server = TestApiServer::start().await.expect("start test apiserver");
    let client = server.kube_client().expect("kube client");
    (server, client)
}

fn api_code(err: kube::Error) -> u16 {
    match err {
        kube::Error::Api(status) => status.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn service(name: &str, labels: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }))
    .expect("service")
}

async fn create_ns(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).expect("ns");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

#[tokio::test]
async fn crud_and_error_codes() {
    let (_server, client) = server().await;
    create_ns(&client, "app").await;
    let namespaces = Api::<Namespace>::all(client.clone());
    let ns = namespaces.get("app").await.expect("get namespace");
    assert_eq!(ns.status.and_then(|s| s.phase).as_deref(), Some("Active"));
    assert_eq!(
        ns.metadata.labels.unwrap_or_default()["kubernetes.io/metadata.name"],
        "app"
    );

    let svcs = Api::<Service>::namespaced(client.clone(), "app");
    let created = svcs
        .create(
            &PostParams::default(),
            &service("web", json!({"app": "web"})),
        )
        .await
        .expect("create");
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.namespace.as_deref(), Some("app"));
    assert_eq!(meta.generation, None, "services carry no generation");
    let spec = created.spec.clone().expect("spec");
    let ip = spec.cluster_ip.expect("cluster IP allocated");
    assert!(ip.starts_with("198.19."), "{ip}");
    assert_eq!(
        spec.ports.expect("ports")[0].protocol.as_deref(),
        Some("TCP")
    );

    // Duplicate create → 409 AlreadyExists; missing → 404; missing namespace → 404.
    let dup = svcs
        .create(&PostParams::default(), &service("web", json!({})))
        .await
        .expect_err("dup");
    assert_eq!(api_code(dup), 409);
    assert_eq!(api_code(svcs.get("nope").await.expect_err("missing")), 404);
    let elsewhere = Api::<Service>::namespaced(client.clone(), "ghost");
    assert_eq!(
        api_code(
            elsewhere
                .create(&PostParams::default(), &service("x", json!({})))
                .await
                .expect_err("no ns")
        ),
        404
    );

    // Merge patch, then replace; the cluster IP survives an update that omits it.
    let pp = PatchParams::default();
    let patched = svcs
        .patch(
            "web",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "front"}}})),
        )
        .await
        .expect("merge patch");
    let labels = patched.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        (labels["app"].as_str(), labels["tier"].as_str()),
        ("web", "front")
    );
    assert_ne!(
        patched.metadata.resource_version,
        created.metadata.resource_version
    );

    let mut replacement = service("web", json!({"app": "web2"}));
    replacement.metadata.resource_version = patched.metadata.resource_version.clone();
    let replaced = svcs
        .replace("web", &PostParams::default(), &replacement)
        .await
        .expect("replace");
    assert_eq!(
        replaced.spec.and_then(|s| s.cluster_ip).as_deref(),
        Some(ip.as_str())
    );
    // Replacing with the now stale resourceVersion conflicts.
    let stale = svcs
        .replace("web", &PostParams::default(), &replacement)
        .await
        .expect_err("stale");
    assert_eq!(api_code(stale), 409);

    // JSON patch with a failing test op is rejected, a valid one applies.
    let bad = svcs
        .patch(
            "web",
            &pp,
            &Patch::Json::<()>(
                serde_json::from_value(
                    json!([{"op": "test", "path": "/metadata/name", "value": "other"}]),
                )
                .expect("patch"),
            ),
        )
        .await
        .expect_err("test op fails");
    assert_eq!(api_code(bad), 422);
    let jp = serde_json::from_value(json!([
        {"op": "add", "path": "/metadata/annotations", "value": {"a": "1"}},
        {"op": "replace", "path": "/metadata/annotations/a", "value": "2"},
    ]))
    .expect("patch");
    let jpatched = svcs
        .patch("web", &pp, &Patch::Json::<()>(jp))
        .await
        .expect("json patch");
    assert_eq!(jpatched.metadata.annotations.unwrap_or_default()["a"], "2");

    let list = svcs.list(&ListParams::default()).await.expect("list");
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());

    svcs.delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(api_code(svcs.get("web").await.expect_err("gone")), 404);
    assert_eq!(
        api_code(
            svcs.delete("web", &DeleteParams::default())
                .await
                .expect_err("gone")
        ),
        404
    );
}

#[tokio::test]
async fn status_subresource_and_generation() {
    let (_server, client) = server().await;
    let routes = Api::<HTTPRoute>::namespaced(client.clone(), "default");
    let route: HTTPRoute = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {"parentRefs": [{"name": "gw"}]},
        "status": {"parents": []},
    }))
    .expect("route");
    let created = routes
        .create(&PostParams::default(), &route)
        .await
        .expect("create");
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.status.is_none(), "status is dropped on create");

    let status = json!({"status": {"parents": [{
        "parentRef": {"name": "gw"}, "controllerName": "strait.dev/gateway",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}],
    }]}});
    let with_status = routes
        .patch_status("r", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch status");
    assert_eq!(
        with_status.metadata.generation,
        Some(1),
        "status never bumps generation"
    );
    assert_eq!(
        with_status.status.as_ref().map(|s| s.parents.len()),
        Some(1)
    );

    // A no-op status patch does not change the resourceVersion.
    let again = routes
        .patch_status("r", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("noop");
    assert_eq!(
        again.metadata.resource_version,
        with_status.metadata.resource_version
    );

    // Spec writes through the main resource ignore status but bump generation.
    let spec_change = json!({"spec": {"hostnames": ["a.example"]}, "status": null});
    let bumped = routes
        .patch("r", &PatchParams::default(), &Patch::Merge(&spec_change))
        .await
        .expect("spec patch");
    assert_eq!(bumped.metadata.generation, Some(2));
    assert_eq!(
        bumped.status.as_ref().map(|s| s.parents.len()),
        Some(1),
        "status kept"
    );

    // Server-side apply on the status subresource.
    let applied = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "status": {"parents": []},
    });
    let pp = PatchParams::apply("strait-controller").force();
    let cleared = routes
        .patch_status("r", &pp, &Patch::Apply(&applied))
        .await
        .expect("apply status");
    assert_eq!(cleared.status.map(|s| s.parents.len()), Some(0));
    assert_eq!(cleared.metadata.generation, Some(2));

    // Apply creates when absent.
    let gw = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "gw"},
        "spec": {"gatewayClassName": "strait", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]},
    });
    let gateways = Api::<Gateway>::namespaced(client.clone(), "default");
    let gw = gateways
        .patch("gw", &PatchParams::apply("test"), &Patch::Apply(&gw))
        .await
        .expect("apply create");
    assert_eq!(gw.metadata.generation, Some(1));
    let all = Api::<Gateway>::all(client)
        .list(&ListParams::default())
        .await
        .expect("list all");
    assert_eq!(all.items.len(), 1);
}

#[tokio::test]
async fn lease_replace_conflict() {
    let (_server, client) = server().await;
    let leases = Api::<Lease>::namespaced(client, "kube-system");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "strait-controller"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }))
    .expect("lease");
    let created = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("create");
    let mut mine = created.clone();
    mine.spec.as_mut().expect("spec").holder_identity = Some("b".into());
    let taken = leases
        .replace("strait-controller", &PostParams::default(), &mine)
        .await
        .expect("replace");
    assert_eq!(
        taken.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("b")
    );
    let mut theirs = created;
    theirs.spec.as_mut().expect("spec").holder_identity = Some("c".into());
    let err = leases
        .replace("strait-controller", &PostParams::default(), &theirs)
        .await
        .expect_err("conflict");
    match err {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
            assert!(
                s.message
                    .contains("leases.coordination.k8s.io \"strait-controller\""),
                "{}",
                s.message
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

async fn next_event<S>(stream: &mut S) -> watcher::Event<Service>
where
    S: futures_util::Stream<Item = Result<watcher::Event<Service>, watcher::Error>> + Unpin,
{
    tokio::time::timeout(WAIT, stream.try_next())
        .await
        .expect("watch event in time")
        .expect("watch ok")
        .expect("stream open")
}

fn name_of(svc: &Service) -> String {
    svc.metadata.name.clone().unwrap_or_default()
}

#[tokio::test]
async fn watcher_sees_changes_and_filters_labels() {
    let (_server, client) = server().await;
    let svcs = Api::<Service>::namespaced(client.clone(), "default");
    svcs.create(
        &PostParams::default(),
        &service("pre", json!({"app": "web"})),
    )
    .await
    .expect("create");
    let mut stream = watcher(svcs.clone(), watcher::Config::default().labels("app=web")).boxed();
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::Init
    ));
    assert!(
        matches!(next_event(&mut stream).await, watcher::Event::InitApply(s) if name_of(&s) == "pre")
    );
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::InitDone
    ));

    svcs.create(
        &PostParams::default(),
        &service("other", json!({"app": "db"})),
    )
    .await
    .expect("create other");
    svcs.create(
        &PostParams::default(),
        &service("new", json!({"app": "web"})),
    )
    .await
    .expect("create new");
    assert!(
        matches!(next_event(&mut stream).await, watcher::Event::Apply(s) if name_of(&s) == "new")
    );
    svcs.patch(
        "new",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"x": "y"}}})),
    )
    .await
    .expect("patch");
    match next_event(&mut stream).await {
        watcher::Event::Apply(s) => {
            assert_eq!(s.metadata.annotations.unwrap_or_default()["x"], "y")
        }
        other => panic!("expected modify, got {other:?}"),
    }
    // Relabelling out of the selector looks like a deletion to this watch.
    svcs.patch(
        "pre",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})),
    )
    .await
    .expect("relabel");
    assert!(
        matches!(next_event(&mut stream).await, watcher::Event::Delete(s) if name_of(&s) == "pre")
    );
    svcs.delete("new", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(
        matches!(next_event(&mut stream).await, watcher::Event::Delete(s) if name_of(&s) == "new")
    );

    let listed = svcs
        .list(&ListParams::default().labels("app in (db),!missing"))
        .await
        .expect("list");
    let mut names: Vec<String> = listed.items.iter().map(name_of).collect();
    names.sort();
    assert_eq!(names, ["other", "pre"]);
}

#[tokio::test]
async fn compaction_forces_relist() {
    let (server, client) = server().await;
    let svcs = Api::<Service>::namespaced(client.clone(), "default");
    svcs.create(&PostParams::default(), &service("a", json!({})))
        .await
        .expect("create");
    let mut stream = watcher(svcs.clone(), watcher::Config::default()).boxed();
    for _ in 0..3 {
        next_event(&mut stream).await; // Init, InitApply(a), InitDone
    }
    let old_rv = server.resource_version();
    // Make sure the watch request is open before compacting.
    svcs.create(&PostParams::default(), &service("b", json!({})))
        .await
        .expect("create b");
    assert!(
        matches!(next_event(&mut stream).await, watcher::Event::Apply(s) if name_of(&s) == "b")
    );
    server.compact();
    svcs.create(&PostParams::default(), &service("c", json!({})))
        .await
        .expect("create c");

    // The open watch ends with 410; the watcher reports it and relists.
    let err = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("in time")
        .expect("item");
    match err {
        Err(watcher::Error::WatchError(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected 410, got {other:?}"),
    }
    let mut relisted = Vec::new();
    loop {
        match next_event(&mut stream).await {
            watcher::Event::Init => {}
            watcher::Event::InitApply(s) => relisted.push(name_of(&s)),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    relisted.sort();
    assert_eq!(relisted, ["a", "b", "c"]);

    // A raw watch from before the compaction gets the ERROR event the real server sends.
    let mut raw = svcs
        .watch(&WatchParams::default(), &old_rv.to_string())
        .await
        .expect("watch")
        .boxed();
    match tokio::time::timeout(WAIT, raw.try_next())
        .await
        .expect("in time")
        .expect("ok")
    {
        Some(WatchEvent::Error(s)) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => panic!("expected error event, got {other:?}"),
    }
}

#[tokio::test]
async fn bookmarks_and_timeout() {
    let server = TestApiServer::builder()
        .bookmark_interval(Duration::from_millis(200))
        .start()
        .await
        .expect("start");
    let cms = Api::<ConfigMap>::namespaced(server.kube_client().expect("client"), "default");
    let list = cms.list(&ListParams::default()).await.expect("list");
    let rv = list.metadata.resource_version.expect("rv");
    let started = std::time::Instant::now();
    let wp = WatchParams {
        bookmarks: true,
        ..WatchParams::default()
    }
    .timeout(2);
    let mut raw = cms.watch(&wp, &rv).await.expect("watch").boxed();
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "c"}})).expect("cm");
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create");
    let (mut added, mut bookmarks) = (0, 0);
    while let Some(ev) = tokio::time::timeout(WAIT, raw.try_next())
        .await
        .expect("in time")
        .expect("ok")
    {
        match ev {
            WatchEvent::Added(c) => {
                assert_eq!(c.metadata.name.as_deref(), Some("c"));
                added += 1;
            }
            WatchEvent::Bookmark(b) => {
                assert!(
                    b.metadata
                        .resource_version
                        .parse::<u64>()
                        .expect("numeric rv")
                        > rv.parse::<u64>().expect("rv")
                );
                bookmarks += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(added, 1);
    assert!(bookmarks >= 3, "got {bookmarks} bookmarks");
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn token_review_handler() {
    let (server, client) = server().await;
    server.set_tokenreview_handler(|token| {
        (token == "good")
            .then(|| TokenIdentity::service_account("app", "web", Some(("web-0", "uid-1"))))
    });
    let reviews = Api::<TokenReview>::all(client);
    let review = |token: &str| -> TokenReview {
        serde_json::from_value(json!({"spec": {"token": token, "audiences": ["strait"]}}))
            .expect("review")
    };
    let ok = reviews
        .create(&PostParams::default(), &review("good"))
        .await
        .expect("review");
    let status = ok.status.expect("status");
    assert_eq!(status.authenticated, Some(true));
    let user = status.user.expect("user");
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:app:web")
    );
    assert_eq!(
        user.extra.expect("extra")["authentication.kubernetes.io/pod-name"],
        ["web-0"]
    );
    let bad = reviews
        .create(&PostParams::default(), &review("bad"))
        .await
        .expect("review");
    assert_ne!(bad.status.and_then(|s| s.authenticated), Some(true));
}

#[tokio::test]
async fn finalizers_namespaces_and_versions() {
    let (server, client) = server().await;
    create_ns(&client, "team").await;
    let cms = Api::<ConfigMap>::namespaced(client.clone(), "team");
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "held", "finalizers": ["strait.dev/cleanup"]}}),
    )
    .expect("cm");
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create");
    cms.delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    let held = cms.get("held").await.expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("drop finalizer");
    assert_eq!(api_code(cms.get("held").await.expect_err("gone")), 404);

    // ReferenceGrant v1beta1 and v1 are one storage, as with a multi-version CRD.
    let gvk = |v: &str| {
        ApiResource::from_gvk(&GroupVersionKind::gvk(
            "gateway.networking.k8s.io",
            v,
            "ReferenceGrant",
        ))
    };
    let beta: Api<DynamicObject> = Api::namespaced_with(client.clone(), "team", &gvk("v1beta1"));
    let v1: Api<DynamicObject> = Api::namespaced_with(client.clone(), "team", &gvk("v1"));
    let grant: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "g"},
        "spec": {"from": [{"group": "", "kind": "Service", "namespace": "x"}], "to": [{"group": "", "kind": "Service"}]},
    }))
    .expect("grant");
    beta.create(&PostParams::default(), &grant)
        .await
        .expect("create grant");
    let via_v1 = v1.get("g").await.expect("read as v1");
    assert_eq!(
        via_v1.types.map(|t| t.api_version).as_deref(),
        Some("gateway.networking.k8s.io/v1")
    );

    // Deleting a namespace removes its contents.
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "c"}})).expect("cm"),
    )
    .await
    .expect("create");
    Api::<Namespace>::all(client.clone())
        .delete("team", &DeleteParams::default())
        .await
        .expect("delete ns");
    assert!(
        server
            .list("v1", "ConfigMap", Some("team"))
            .expect("list")
            .is_empty()
    );
    assert_eq!(api_code(v1.get("g").await.expect_err("gone")), 404);
}

#[tokio::test]
async fn streaming_list_and_direct_helpers() {
    let (server, client) = server().await;
    let created = server
        .create(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "default"},
                       "spec": {"ports": [{"port": 8080}]}}))
        .expect("helper create");
    let mut with_status = created.clone();
    with_status["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.18.0.10"}]}});
    server.update_status(with_status).expect("helper status");
    let got = server
        .get("v1", "Service", Some("default"), "s")
        .expect("helper get");
    assert_eq!(
        got["status"]["loadBalancer"]["ingress"][0]["ip"],
        "198.18.0.10"
    );
    assert_eq!(got["spec"]["ports"][0]["targetPort"], 8080);

    // kube's streaming-list watcher (sendInitialEvents + initial-events-end bookmark).
    let svcs = Api::<Service>::namespaced(client, "default");
    let mut stream = watcher(svcs, watcher::Config::default().streaming_lists()).boxed();
    // Streaming lists start with the objects directly (no `Init`).
    assert!(
        matches!(next_event(&mut stream).await, watcher::Event::InitApply(s) if name_of(&s) == "s")
    );
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::InitDone
    ));
    server
        .delete("v1", "Service", Some("default"), "s")
        .expect("helper delete");
    assert!(
        matches!(next_event(&mut stream).await, watcher::Event::Delete(s) if name_of(&s) == "s")
    );
    assert!(server.list("v1", "Service", None).expect("list").is_empty());
    assert_eq!(
        server
            .get("v1", "Service", Some("default"), "s")
            .expect_err("gone")
            .code,
        404
    );
}

#[tokio::test]
async fn owner_references_cascade() {
    let (_server, client) = server().await;
    let cms = Api::<ConfigMap>::namespaced(client.clone(), "default");
    let owner: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "owner"}})).expect("cm");
    let owner = cms
        .create(&PostParams::default(), &owner)
        .await
        .expect("owner");
    let uid = owner.metadata.uid.expect("uid");
    let dependent: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "dep", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
        ]}}))
        .expect("dep");
    cms.create(&PostParams::default(), &dependent)
        .await
        .expect("dependent");
    cms.delete("owner", &DeleteParams::default())
        .await
        .expect("delete owner");
    assert_eq!(api_code(cms.get("dep").await.expect_err("collected")), 404);
    // A body for another version of the group is rejected like the real server does.
    let wrong: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v2", "kind": "ConfigMap", "metadata": {"name": "x"}
    }))
    .expect("obj");
    let ar = ApiResource::erase::<ConfigMap>(&());
    let dynamic: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
    assert_eq!(
        api_code(
            dynamic
                .create(&PostParams::default(), &wrong)
                .await
                .expect_err("bad version")
        ),
        400
    );
}
