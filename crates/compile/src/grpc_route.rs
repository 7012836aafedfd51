//! GRPCRoute translation onto the HTTP route model: a gRPC call is an HTTP/2 request to
//! `/<service>/<method>`, so method matches become path matches.

use strait_config::{HeaderMatch, HttpMatch, HttpRule, PathMatch, StringMatch, Timeouts};
use strait_model::types::GrpcRoute;

use crate::backends::BackendRefSpec;
use crate::context::{Context, name, ns};
use crate::http_route::{
    RuleBackend, RuleName, check_regex, match_everything, to_value, translate_rule_actions,
};
use crate::routes::{Compiled, Scope};

const KIND: &str = "GRPCRoute";

fn method_path(
    m: &gateway_api::experimental::grpcroutes::GrpcRouteRulesMatchesMethod,
) -> Result<PathMatch, String> {
    use gateway_api::experimental::grpcroutes::GrpcRouteRulesMatchesMethodType as T;
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    match m.r#type {
        None | Some(T::Exact) => Ok(match (service, method) {
            (Some(s), Some(m)) => PathMatch::Exact(format!("/{s}/{m}")),
            (Some(s), None) => PathMatch::Prefix(format!("/{s}")),
            (None, Some(m)) => PathMatch::RegularExpression(format!("/[^/]+/{}", regex::escape(m))),
            (None, None) => PathMatch::Prefix("/".into()),
        }),
        Some(T::RegularExpression) => {
            let s = service.unwrap_or("[^/]+");
            let m = method.unwrap_or("[^/]+");
            check_regex("gRPC service", s)?;
            check_regex("gRPC method", m)?;
            Ok(PathMatch::RegularExpression(format!("/(?:{s})/(?:{m})")))
        }
    }
}

/// Translates a GRPCRoute's rules for parents of `scope`.
pub(crate) fn compile_route<'a>(
    ctx: &Context<'a>,
    route: &GrpcRoute,
    scope: Scope,
) -> Compiled<'a> {
    use gateway_api::experimental::grpcroutes::GrpcRouteRulesMatchesHeadersType as H;
    let route_ns = ns(&route.metadata);
    let mut out = Compiled::new(KIND, scope);
    for (ri, rule) in route.spec.rules.iter().flatten().enumerate() {
        let what = RuleName {
            kind: KIND,
            namespace: route_ns,
            name: name(&route.metadata),
            index: ri,
        };
        let mut matches = Vec::new();
        for m in rule.matches.iter().flatten() {
            let translated = (|| -> Result<HttpMatch, String> {
                let path = match &m.method {
                    Some(method) => method_path(method)?,
                    None => PathMatch::Prefix("/".into()),
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
                Ok(HttpMatch {
                    path,
                    headers,
                    query_params: Vec::new(),
                    method: None,
                })
            })();
            match translated {
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
        out.rules.push(HttpRule {
            name: rule.name.clone(),
            matches,
            filters,
            backends,
            timeouts: Timeouts::default(),
            retry: None,
        });
    }
    out
}
