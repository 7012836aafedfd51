//! HTTPRoute translation: rules, matches, filters, backends, timeouts and retries.

use std::fmt;
use std::time::Duration;

use serde_json::Value;
use strait_config::{
    BackendTarget, Cors, HeaderMatch, HeaderModifier, HttpFilter, HttpMatch, HttpRule, PathMatch,
    PathModifier, QueryParamMatch, RequestMirror, RequestRedirect, Retry, StringMatch, Timeouts,
    UrlRewrite, WeightedBackend,
};
use strait_model::types::HttpRoute;

use crate::backends::{self, BackendRefSpec};
use crate::context::{Context, name, ns};
use crate::routes::{Compiled, Scope};

const KIND: &str = "HTTPRoute";

/// Parses a Gateway API duration (`500ms`, `1h2m`); zero means "no timeout".
pub(crate) fn parse_duration(s: &str) -> Result<Option<Duration>, String> {
    let d: gateway_api::Duration = s
        .parse()
        .map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    let d = Duration::new(d.as_secs(), d.subsec_nanos());
    Ok((!d.is_zero()).then_some(d))
}

/// Translates an HTTPRoute's rules for parents of `scope`.
pub(crate) fn compile_route<'a>(
    ctx: &Context<'a>,
    route: &HttpRoute,
    scope: Scope,
) -> Compiled<'a> {
    let route_ns = ns(&route.metadata);
    let mut out = Compiled::new(KIND, scope);
    for (ri, rule) in route.spec.rules.iter().flatten().enumerate() {
        let what = RuleName {
            kind: KIND,
            namespace: route_ns,
            name: name(&route.metadata),
            index: ri,
        };
        // Matches.
        let mut matches = Vec::new();
        for m in rule.matches.iter().flatten() {
            match translate_match(m) {
                Ok(m) => matches.push(m),
                Err(e) => {
                    out.unsupported
                        .get_or_insert_with(|| format!("{what}: {e}"));
                }
            }
        }
        if matches.is_empty() {
            matches.push(match_everything());
        }
        let (filters, backends) = translate_rule_actions(
            ctx,
            route_ns,
            &what,
            rule.filters.iter().flatten().map(to_value),
            rule.backend_refs.iter().flatten().map(|b| RuleBackend {
                spec: BackendRefSpec {
                    group: b.group.clone(),
                    kind: b.kind.clone(),
                    name: b.name.clone(),
                    namespace: b.namespace.clone(),
                    port: b.port,
                },
                weight: b.weight,
                filters: b.filters.iter().flatten().map(to_value).collect(),
            }),
            &mut out,
        );
        // Timeouts and retry.
        let mut timeouts = Timeouts::default();
        if let Some(t) = &rule.timeouts {
            for (field, value) in [
                (&mut timeouts.request, &t.request),
                (&mut timeouts.backend_request, &t.backend_request),
            ] {
                if let Some(v) = value {
                    match parse_duration(v) {
                        Ok(d) => *field = d,
                        Err(e) => {
                            out.unsupported
                                .get_or_insert_with(|| format!("{what}: {e}"));
                        }
                    }
                }
            }
        }
        let retry = rule.retry.as_ref().map(|r| Retry {
            codes: r
                .codes
                .iter()
                .flatten()
                .filter_map(|c| u16::try_from(*c).ok())
                .collect(),
            attempts: r.attempts.and_then(|a| u32::try_from(a).ok()).unwrap_or(1),
            backoff: r
                .backoff
                .as_deref()
                .and_then(|b| parse_duration(b).ok().flatten()),
        });
        out.rules.push(HttpRule {
            name: rule.name.clone(),
            matches,
            filters,
            backends,
            timeouts,
            retry,
        });
    }
    out
}

pub(crate) fn resolve_target<'a>(
    ctx: &Context<'a>,
    route_ns: &str,
    spec: &BackendRefSpec,
    out: &mut Compiled<'a>,
) -> BackendTarget {
    let grants_required = out.scope == Scope::Gateway;
    match backends::resolve(ctx, out.kind, route_ns, spec, grants_required) {
        Ok((key, backend)) => {
            out.clusters.push((key.clone(), backend));
            BackendTarget::Cluster(key)
        }
        Err(f) => {
            let reason = f.message.clone();
            out.ref_failure.get_or_insert(f);
            BackendTarget::Invalid { reason }
        }
    }
}

pub(crate) fn check_regex(what: &str, re: &str) -> Result<(), String> {
    regex::Regex::new(re)
        .map(|_| ())
        .map_err(|e| format!("invalid {what} regular expression {re:?}: {e}"))
}

fn translate_match(
    m: &gateway_api::experimental::httproutes::HttpRouteRulesMatches,
) -> Result<HttpMatch, String> {
    use gateway_api::experimental::httproutes::{
        HttpRouteRulesMatchesHeadersType as H, HttpRouteRulesMatchesPathType as P,
        HttpRouteRulesMatchesQueryParamsType as Q,
    };
    let path = match &m.path {
        None => PathMatch::Prefix("/".into()),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            match p.r#type {
                Some(P::Exact) => PathMatch::Exact(value),
                None | Some(P::PathPrefix) => PathMatch::Prefix(value),
                Some(P::RegularExpression) => {
                    check_regex("path", &value)?;
                    PathMatch::RegularExpression(value)
                }
            }
        }
    };
    let mut headers = Vec::new();
    for h in m.headers.iter().flatten() {
        let value = match h.r#type {
            None | Some(H::Exact) => StringMatch::Exact(h.value.clone()),
            Some(H::RegularExpression) => {
                check_regex("header", &h.value)?;
                StringMatch::RegularExpression(h.value.clone())
            }
        };
        headers.push(HeaderMatch {
            name: h.name.clone(),
            value,
        });
    }
    let mut query_params = Vec::new();
    for q in m.query_params.iter().flatten() {
        let value = match q.r#type {
            None | Some(Q::Exact) => StringMatch::Exact(q.value.clone()),
            Some(Q::RegularExpression) => {
                check_regex("query parameter", &q.value)?;
                StringMatch::RegularExpression(q.value.clone())
            }
        };
        query_params.push(QueryParamMatch {
            name: q.name.clone(),
            value,
        });
    }
    let method = m
        .method
        .as_ref()
        .and_then(|m| serde_json::to_value(m).ok())
        .and_then(|v| v.as_str().map(str::to_ascii_uppercase));
    Ok(HttpMatch {
        path,
        headers,
        query_params,
        method,
    })
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn str_list(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn header_pairs(v: &Value, key: &str) -> Vec<(String, String)> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|h| Some((str_field(h, "name")?, str_field(h, "value")?)))
                .collect()
        })
        .unwrap_or_default()
}

fn header_modifier(v: &Value) -> HeaderModifier {
    HeaderModifier {
        set: header_pairs(v, "set"),
        add: header_pairs(v, "add"),
        remove: str_list(v, "remove"),
    }
}

fn path_modifier(v: Option<&Value>) -> Option<PathModifier> {
    let v = v?;
    match v.get("type").and_then(Value::as_str)? {
        "ReplaceFullPath" => Some(PathModifier::ReplaceFullPath(
            str_field(v, "replaceFullPath").unwrap_or_default(),
        )),
        "ReplacePrefixMatch" => Some(PathModifier::ReplacePrefixMatch(
            str_field(v, "replacePrefixMatch").unwrap_or_default(),
        )),
        _ => None,
    }
}

/// Translates one filter (rule or backend level, same JSON shape).
pub(crate) fn translate_filter<'a>(
    ctx: &Context<'a>,
    route_ns: &str,
    v: &Value,
    out: &mut Compiled<'a>,
) -> Result<HttpFilter, String> {
    let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
    let empty = Value::Null;
    match ty {
        "RequestHeaderModifier" => Ok(HttpFilter::RequestHeaderModifier(header_modifier(
            v.get("requestHeaderModifier").unwrap_or(&empty),
        ))),
        "ResponseHeaderModifier" => Ok(HttpFilter::ResponseHeaderModifier(header_modifier(
            v.get("responseHeaderModifier").unwrap_or(&empty),
        ))),
        "RequestRedirect" => {
            let r = v.get("requestRedirect").unwrap_or(&empty);
            let status_code = r
                .get("statusCode")
                .and_then(|s| {
                    s.as_u64()
                        .or_else(|| s.as_str().and_then(|s| s.parse().ok()))
                })
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(302);
            Ok(HttpFilter::RequestRedirect(RequestRedirect {
                scheme: str_field(r, "scheme").map(|s| s.to_ascii_lowercase()),
                hostname: str_field(r, "hostname"),
                path: path_modifier(r.get("path")),
                port: r
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok()),
                status_code,
            }))
        }
        "URLRewrite" => {
            let r = v.get("urlRewrite").unwrap_or(&empty);
            Ok(HttpFilter::UrlRewrite(UrlRewrite {
                hostname: str_field(r, "hostname"),
                path: path_modifier(r.get("path")),
            }))
        }
        "RequestMirror" => {
            let r = v.get("requestMirror").unwrap_or(&empty);
            let b = r.get("backendRef").unwrap_or(&empty);
            let spec = BackendRefSpec {
                group: str_field(b, "group"),
                kind: str_field(b, "kind"),
                name: str_field(b, "name").unwrap_or_default(),
                namespace: str_field(b, "namespace"),
                port: b
                    .get("port")
                    .and_then(Value::as_i64)
                    .and_then(|p| i32::try_from(p).ok()),
            };
            let backend = resolve_target(ctx, route_ns, &spec, out);
            let percent = if let Some(p) = r.get("percent").and_then(Value::as_f64) {
                p
            } else if let Some(f) = r.get("fraction") {
                let num = f.get("numerator").and_then(Value::as_f64).unwrap_or(0.0);
                let den = f
                    .get("denominator")
                    .and_then(Value::as_f64)
                    .unwrap_or(100.0);
                if den > 0.0 { num * 100.0 / den } else { 0.0 }
            } else {
                100.0
            };
            Ok(HttpFilter::RequestMirror(RequestMirror {
                backend,
                percent: percent.clamp(0.0, 100.0),
            }))
        }
        "CORS" => {
            let c = v.get("cors").unwrap_or(&empty);
            Ok(HttpFilter::Cors(Cors {
                allow_origins: str_list(c, "allowOrigins"),
                allow_methods: str_list(c, "allowMethods"),
                allow_headers: str_list(c, "allowHeaders"),
                expose_headers: str_list(c, "exposeHeaders"),
                allow_credentials: c
                    .get("allowCredentials")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                max_age: c
                    .get("maxAge")
                    .and_then(Value::as_u64)
                    .and_then(|m| u32::try_from(m).ok())
                    .unwrap_or(5),
            }))
        }
        other => Err(format!("filter type {other} is not supported")),
    }
}

/// The match a rule without matches gets: every request.
pub(crate) fn match_everything() -> HttpMatch {
    HttpMatch {
        path: PathMatch::Prefix("/".into()),
        headers: Vec::new(),
        query_params: Vec::new(),
        method: None,
    }
}

/// A filter, as JSON: HTTPRoute and GRPCRoute filters are different Rust types of one shape.
pub(crate) fn to_value<T: serde::Serialize>(filter: &T) -> Value {
    serde_json::to_value(filter).unwrap_or(Value::Null)
}

/// Names a rule in messages (`HTTPRoute ns/name: rule 2`). Formatted only when a message is
/// written, which is rare: compiling thousands of valid routes formats none.
pub(crate) struct RuleName<'a> {
    pub kind: &'static str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub index: usize,
}

impl fmt::Display for RuleName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let RuleName {
            kind,
            namespace,
            name,
            index,
        } = self;
        write!(f, "{kind} {namespace}/{name}: rule {index}")
    }
}

/// A backendRef of a rule, whatever the route kind.
pub(crate) struct RuleBackend {
    pub spec: BackendRefSpec,
    pub weight: Option<i32>,
    pub filters: Vec<Value>,
}

/// Translates a rule's filters and backends (shared by HTTPRoute and GRPCRoute). A filter that
/// cannot be applied must not be skipped silently: the whole rule then answers 500, naming `what`.
pub(crate) fn translate_rule_actions<'a>(
    ctx: &Context<'a>,
    route_ns: &str,
    what: &RuleName<'_>,
    filters: impl Iterator<Item = Value>,
    backend_refs: impl Iterator<Item = RuleBackend>,
    out: &mut Compiled<'a>,
) -> (Vec<HttpFilter>, Vec<WeightedBackend>) {
    let mut rule_error: Option<String> = None;
    let mut translate_all = |values: &mut dyn Iterator<Item = Value>, out: &mut Compiled<'a>| {
        let mut translated = Vec::new();
        for value in values {
            match translate_filter(ctx, route_ns, &value, out) {
                Ok(filter) => translated.push(filter),
                Err(e) => {
                    rule_error.get_or_insert(e);
                }
            }
        }
        translated
    };
    let mut filters = translate_all(&mut { filters }, out);
    let mut backends = Vec::new();
    for backend in backend_refs {
        let target = resolve_target(ctx, route_ns, &backend.spec, out);
        let filters = translate_all(&mut backend.filters.into_iter(), out);
        backends.push(WeightedBackend {
            weight: u32::try_from(backend.weight.unwrap_or(1)).unwrap_or(0),
            target,
            filters,
        });
    }
    if let Some(e) = rule_error {
        backends = vec![WeightedBackend {
            weight: 1,
            target: BackendTarget::Invalid {
                reason: format!("{what}: {e}"),
            },
            filters: Vec::new(),
        }];
        filters.clear();
    }
    (filters, backends)
}
