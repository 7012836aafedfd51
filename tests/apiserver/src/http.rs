//! HTTP routing: URL → resource, verb → store operation, and streaming watches.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::store::{EventType, Filter, Subresource, meta_str};
use crate::{ApiError, FieldSelector, LabelSelector, ResourceKind, Shared};

type Body = BoxBody<Bytes, Infallible>;

/// Default watch duration when the client sends no `timeoutSeconds` (the real
/// server's `--min-request-timeout`).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "test apiserver accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // As the real server (Go sets TCP_NODELAY on every connection): a watch event is
        // written as several small segments (chunk header, data, trailer), and with Nagle's
        // algorithm the last one waits for the client's delayed ACK, some 40 ms.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "test apiserver could not set TCP_NODELAY");
        }
        let shared = shared.clone();
        let mut shutdown = shared.shutdown.clone();
        tokio::spawn(async move {
            let svc_shared = shared.clone();
            let service = hyper::service::service_fn(move |req| {
                let shared = svc_shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                res = conn => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "test apiserver connection ended");
                    }
                }
                _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {}
            }
        });
    }
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)).boxed());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn flag(q: &HashMap<String, String>, key: &str) -> bool {
    matches!(q.get(key).map(String::as_str), Some("true" | "1"))
}

struct Target {
    kind: ResourceKind,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query());
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error_response(&ApiError::bad_request(format!("reading request body: {e}")));
        }
    };
    let hook = shared
        .request_hook
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(hook) = hook {
        hook(&method, &path);
    }
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    tracing::debug!(%method, %path, "test apiserver request");
    match (method.clone(), segs.as_slice()) {
        (Method::GET, ["version"]) => {
            return json_response(
                200,
                &json!({"major": "1", "minor": "36", "gitVersion": "v1.36.0-strait-test", "platform": "linux/amd64"}),
            );
        }
        (Method::GET, ["api"]) => {
            return json_response(200, &json!({"kind": "APIVersions", "versions": ["v1"]}));
        }
        (Method::GET, ["apis"]) => return json_response(200, &group_list(&shared)),
        (Method::GET, ["api", v]) => return resource_list(&shared, "", v),
        (Method::GET, ["apis", g, v]) => return resource_list(&shared, g, v),
        (Method::POST, ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => {
            return token_review(&shared, &body);
        }
        _ => {}
    }
    let target = match resolve(&shared, &segs, &path) {
        Ok(t) => t,
        Err(e) => return error_response(&e),
    };
    let result = dispatch(&shared, &method, target, &query, &content_type, &body).await;
    match result {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    }
}

fn resolve(shared: &Shared, segs: &[&str], path: &str) -> Result<Target, ApiError> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route(path)),
    };
    let is_ns_subresource = group.is_empty()
        && rest.len() == 3
        && rest[0] == "namespaces"
        && matches!(rest[2], "status" | "finalize");
    let (namespace, plural, name, sub, extra) =
        if rest.first() == Some(&"namespaces") && rest.len() >= 3 && !is_ns_subresource {
            (
                Some(rest[1]),
                rest[2],
                rest.get(3),
                rest.get(4),
                rest.len() > 5,
            )
        } else {
            match rest.first() {
                Some(p) => (None, *p, rest.get(1), rest.get(2), rest.len() > 3),
                None => return Err(ApiError::no_route(path)),
            }
        };
    if extra {
        return Err(ApiError::no_route(path));
    }
    let store = shared.lock();
    let kind = store
        .registry
        .by_plural(group, version, plural)
        .cloned()
        .ok_or_else(|| ApiError::no_route(path))?;
    if namespace.is_some() && !kind.namespaced {
        return Err(ApiError::no_route(path));
    }
    if kind.namespaced && namespace.is_none() && name.is_some() {
        return Err(ApiError::no_route(path));
    }
    let sub = sub.map(|s| s.to_string());
    if let Some(s) = &sub
        && !(s == "status" || (s == "finalize" && kind.plural == "namespaces"))
    {
        return Err(ApiError::no_route(path));
    }
    Ok(Target {
        kind,
        namespace: namespace.map(String::from),
        name: name.map(|n| n.to_string()),
        sub,
    })
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn filter_for(target: &Target, query: &HashMap<String, String>) -> Result<Filter, ApiError> {
    let labels = LabelSelector::parse(
        query
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )?;
    let fields = FieldSelector::parse(
        query
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or_default(),
        &target.kind,
    )?;
    Ok(Filter {
        kind: target.kind.clone(),
        namespace: target.namespace.clone(),
        labels,
        fields,
    })
}

async fn dispatch(
    shared: &Arc<Shared>,
    method: &Method,
    target: Target,
    query: &HashMap<String, String>,
    content_type: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let ns = target.namespace.as_deref();
    let kind = &target.kind;
    let sub = match target.sub.as_deref() {
        Some("status") => Subresource::Status,
        _ => Subresource::Main,
    };
    match (method, &target.name) {
        (&Method::GET, None) => {
            let filter = filter_for(&target, query)?;
            if flag(query, "watch") {
                return start_watch(shared, filter, query);
            }
            let store = shared.lock();
            if let Some(rv) = query.get("resourceVersion").filter(|rv| !rv.is_empty()) {
                let rv: u64 = rv.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version: {rv}"))
                })?;
                if rv > store.current_rv() {
                    return Err(ApiError::too_large_resource_version(rv, store.current_rv()));
                }
            }
            Ok(json_response(200, &store.list(&filter)))
        }
        (&Method::GET, Some(name)) => Ok(json_response(200, &shared.lock().get(kind, ns, name)?)),
        (&Method::POST, None) => {
            let obj = parse_json(body)?;
            let created = shared.write(|s| s.create(kind, ns, obj))?;
            Ok(json_response(201, &created))
        }
        (&Method::PUT, Some(name)) => {
            let obj = parse_json(body)?;
            let updated = shared.write(|s| s.update(kind, ns, name, obj, sub))?;
            Ok(json_response(200, &updated))
        }
        (&Method::PATCH, Some(name)) => {
            patch(shared, kind, ns, name, sub, query, content_type, body)
        }
        (&Method::DELETE, Some(name)) => {
            let options = if body.is_empty() {
                Value::Null
            } else {
                parse_json(body)?
            };
            let (code, obj) = shared.write(|s| s.delete(kind, ns, name, &options))?;
            Ok(json_response(code, &obj))
        }
        (&Method::DELETE, None) => {
            let filter = filter_for(&target, query)?;
            let options = if body.is_empty() {
                Value::Null
            } else {
                parse_json(body)?
            };
            let list = shared.write(|s| s.delete_collection(&filter, &options))?;
            Ok(json_response(200, &list))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on {}",
            kind.qualified_plural()
        ))),
    }
}

#[allow(clippy::too_many_arguments)]
fn patch(
    shared: &Arc<Shared>,
    kind: &ResourceKind,
    ns: Option<&str>,
    name: &str,
    sub: Subresource,
    query: &HashMap<String, String>,
    content_type: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    enum Kind {
        Merge,
        Json,
        Apply,
    }
    let patch_kind = match content_type {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => Kind::Merge,
        "application/json-patch+json" => Kind::Json,
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => Kind::Apply,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    let patch: Value = match patch_kind {
        Kind::Apply => {
            if query.get("fieldManager").is_none_or(|m| m.is_empty()) {
                return Err(ApiError::bad_request(
                    "PATCH requests with an apply-patch+yaml content type require a fieldManager query parameter",
                ));
            }
            let text = std::str::from_utf8(body)
                .map_err(|e| ApiError::bad_request(format!("apply patch is not UTF-8: {e}")))?;
            serde_saphyr::from_str(text).map_err(|e| {
                ApiError::bad_request(format!("error decoding YAML apply patch: {e}"))
            })?
        }
        _ => parse_json(body)?,
    };
    let (code, obj) = shared.write(|store| -> Result<(u16, Value), ApiError> {
        let current = match store.get(kind, ns, name) {
            Ok(c) => c,
            Err(e)
                if e.code == 404
                    && matches!(patch_kind, Kind::Apply)
                    && sub == Subresource::Main =>
            {
                let mut obj = patch.clone();
                if let Some(meta) = obj
                    .as_object_mut()
                    .map(|m| m.entry("metadata").or_insert_with(|| json!({})))
                {
                    if meta_str(&json!({"metadata": meta.clone()}), "name").is_empty() {
                        meta["name"] = json!(name);
                    } else if meta.get("name").and_then(Value::as_str) != Some(name) {
                        return Err(ApiError::bad_request(format!(
                            "the name of the object does not match the name on the URL ({name})"
                        )));
                    }
                }
                return Ok((201, store.create(kind, ns, obj)?));
            }
            Err(e) => return Err(e),
        };
        let mut patched = current;
        match patch_kind {
            Kind::Merge | Kind::Apply => json_patch::merge(&mut patched, &patch),
            Kind::Json => {
                let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                json_patch::patch(&mut patched, &ops.0).map_err(|e| ApiError {
                    code: 422,
                    reason: "Invalid",
                    message: format!(
                        "applying JSON patch to {} {name:?}: {e}",
                        kind.qualified_plural()
                    ),
                    details: None,
                })?;
            }
        }
        Ok((200, store.update(kind, ns, name, patched, sub)?))
    })?;
    Ok(json_response(code, &obj))
}

fn event_line(etype: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"type": etype, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark(kind: &ResourceKind, rv: u64, initial_end: bool) -> Value {
    let mut obj = json!({
        "kind": kind.kind,
        "apiVersion": kind.api_version(),
        "metadata": {"resourceVersion": rv.to_string()},
    });
    if initial_end {
        obj["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    obj
}

fn start_watch(
    shared: &Arc<Shared>,
    filter: Filter,
    query: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let bookmarks = flag(query, "allowWatchBookmarks");
    let send_initial = flag(query, "sendInitialEvents");
    let timeout = match query.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => DEFAULT_WATCH_TIMEOUT,
    };
    let requested_rv = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?,
        ),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut initial = Vec::new();
    let mut first_error = None;
    let (cursor, epoch) = {
        let store = shared.lock();
        let epoch = store.expire_epoch;
        let cursor = match requested_rv {
            Some(rv) if rv > store.current_rv() => {
                return Err(ApiError::too_large_resource_version(rv, store.current_rv()));
            }
            Some(rv) if !send_initial => {
                if rv < store.oldest_watchable() {
                    first_error = Some(ApiError::expired(rv, store.oldest_watchable() + 1));
                }
                rv
            }
            _ => {
                initial = store.snapshot(&filter);
                store.current_rv()
            }
        };
        (cursor, epoch)
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        let send = |b: Bytes| {
            let tx = tx.clone();
            async move { tx.send(b).await.is_ok() }
        };
        if let Some(e) = first_error {
            send(event_line("ERROR", &e.to_status())).await;
            return;
        }
        for obj in initial {
            if !send(event_line(EventType::Added.as_str(), &obj)).await {
                return;
            }
        }
        if send_initial
            && bookmarks
            && !send(event_line(
                "BOOKMARK",
                &bookmark(&filter.kind, cursor, true),
            ))
            .await
        {
            return;
        }
        watch_loop(shared, filter, (cursor, epoch), bookmarks, timeout, tx).await;
    });
    let body = StreamBody::new(stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    let mut resp = Response::new(BodyExt::boxed(body));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

async fn watch_loop(
    shared: Arc<Shared>,
    filter: Filter,
    (mut cursor, epoch): (u64, u64),
    bookmarks: bool,
    timeout: Duration,
    tx: mpsc::Sender<Bytes>,
) {
    let mut changed = shared.changed.subscribe();
    let mut shutdown = shared.shutdown.clone();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + shared.bookmark_interval,
        shared.bookmark_interval,
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        changed.borrow_and_update();
        let batch = {
            let store = shared.lock();
            if store.expire_epoch != epoch {
                Err(ApiError::expired(cursor, store.oldest_watchable() + 1))
            } else {
                store
                    .events_since(cursor, &filter)
                    .map(|evs| (evs, store.current_rv()))
            }
        };
        match batch {
            Ok((events, now)) => {
                for (etype, obj) in events {
                    if tx.send(event_line(etype.as_str(), &obj)).await.is_err() {
                        return;
                    }
                }
                cursor = now;
            }
            Err(e) => {
                let _ = tx.send(event_line("ERROR", &e.to_status())).await;
                return;
            }
        }
        tokio::select! {
            res = changed.changed() => if res.is_err() { return },
            _ = ticker.tick(), if bookmarks => {
                if tx.send(event_line("BOOKMARK", &bookmark(&filter.kind, cursor, false))).await.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if bookmarks {
                    let _ = tx.send(event_line("BOOKMARK", &bookmark(&filter.kind, cursor, false))).await;
                }
                return;
            }
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => return,
            _ = tx.closed() => return,
        }
    }
}

fn token_review(shared: &Shared, body: &[u8]) -> Response<Body> {
    let review = match parse_json(body) {
        Ok(v) => v,
        Err(e) => return error_response(&e),
    };
    let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
    let token = spec
        .get("token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if token.is_empty() {
        return error_response(&ApiError {
            code: 422,
            reason: "Invalid",
            message:
                "TokenReview.authentication.k8s.io \"\" is invalid: spec.token: Required value"
                    .to_string(),
            details: None,
        });
    }
    let handler = shared
        .tokenreview
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let identity = handler.and_then(|h| h(token));
    let status = match identity {
        Some(id) => {
            let mut user = json!({"username": id.username, "groups": id.groups});
            if let Some(uid) = id.uid {
                user["uid"] = json!(uid);
            }
            if !id.extra.is_empty() {
                user["extra"] = json!(id.extra);
            }
            let mut status = json!({"authenticated": true, "user": user});
            if let Some(aud) = spec.get("audiences") {
                status["audiences"] = aud.clone();
            }
            status
        }
        None => {
            json!({"user": {}, "error": "[invalid bearer token, service account token has been invalidated]"})
        }
    };
    json_response(
        201,
        &json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": spec,
            "status": status,
        }),
    )
}

fn group_list(shared: &Shared) -> Value {
    let store = shared.lock();
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for k in store
        .registry
        .kinds()
        .iter()
        .filter(|k| !k.group.is_empty())
    {
        match groups.iter_mut().find(|(g, _)| *g == k.group) {
            Some((_, versions)) if !versions.contains(&k.version) => {
                versions.push(k.version.clone())
            }
            Some(_) => {}
            None => groups.push((k.group.clone(), vec![k.version.clone()])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": vs, "preferredVersion": vs[0].clone()})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(shared: &Shared, group: &str, version: &str) -> Response<Body> {
    let store = shared.lock();
    let mut resources = Vec::new();
    for k in store
        .registry
        .kinds()
        .iter()
        .filter(|k| k.group == group && k.version == version)
    {
        resources.push(json!({
            "name": k.plural,
            "singularName": k.kind.to_lowercase(),
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        }));
        if k.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", k.plural),
                "singularName": "",
                "namespaced": k.namespaced,
                "kind": k.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return error_response(&ApiError::no_route(&format!("{group}/{version}")));
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json_response(
        200,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}
