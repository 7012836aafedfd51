//! The route engine: pure, shared by ingress gateways and waypoints.
//!
//! A [`RouteTable`] is built once per config version from a [`PortConfig`] (all regexes compiled,
//! hostnames and paths indexed). Per request, [`RouteTable::route`] picks the listener (listener
//! isolation), then the highest-precedence matching rule across every route attached to it, as
//! the Gateway API spec orders them. The filters module holds the pure request/response
//! transformations the proxy applies for the chosen rule.
//!
//! Precedence follows the HTTPRoute spec: route hostname (exact before wildcard before none,
//! longer first), then path (Exact, then RegularExpression, then PathPrefix by length — the
//! regex position is our choice, the spec leaves it to implementations), then method match,
//! then number of header matches, then number of query matches; remaining ties go to the oldest
//! route, then `namespace/name`, then rule order, then match order.

pub mod filters;
mod host;
mod matcher;
mod path;
mod table;

use http::{HeaderMap, Method};
use strait_config::{
    BackendTarget, ClusterKey, HeaderModifier, HttpFilter, HttpRule, PathMatch, PortConfig, Retry,
    RouteRef, Timeouts,
};

use filters::Filter;

pub use host::parse_host;

/// Why a [`RouteTable`] could not be built. Compile validates first, so this means a config
/// produced elsewhere (or a compile bug); the message names the route.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{route}: invalid regular expression {pattern:?}: {source}")]
    Regex {
        route: String,
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("{route}: invalid header name {name:?} in a match")]
    HeaderName { route: String, name: String },
    #[error("{route}: invalid method {method:?} in a match")]
    Method { route: String, method: String },
    #[error("{route}: too many route matches on one listener")]
    TooLarge { route: String },
}

/// What the proxy knows about a request when routing it. All borrowed: routing allocates nothing.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'r> {
    pub method: &'r Method,
    /// Host (or `:authority`) without port, lower-cased by the caller.
    pub host: &'r str,
    /// Path without the query string.
    pub path: &'r str,
    /// Raw query string without `?`.
    pub query: Option<&'r str>,
    pub headers: &'r HeaderMap,
    /// TLS server name, for HTTPS listeners (421 detection).
    pub sni: Option<&'r str>,
}

/// The routing outcome.
#[derive(Debug)]
pub enum Decision<'t> {
    /// No listener or no rule matches: answer 404.
    NotFound,
    /// HTTPS: the Host belongs to a different listener than the one SNI selected: answer 421.
    Misdirected,
    Matched(RouteMatch<'t>),
}

/// A matched rule, with what filters need to know about the match.
#[derive(Debug)]
pub struct RouteMatch<'t> {
    /// sectionName of the listener that took the request.
    pub listener: &'t str,
    pub route: &'t RouteRef,
    pub rule: &'t Rule,
    /// The path match that selected the rule (ReplacePrefixMatch needs it).
    pub path_match: &'t PathMatch,
}

/// A routing table for one port of a Gateway.
#[derive(Debug)]
pub struct RouteTable {
    inner: table::Table,
}

impl RouteTable {
    /// Builds the indexes for every listener and route on `port`.
    pub fn build(port: &PortConfig) -> Result<RouteTable, BuildError> {
        Ok(RouteTable {
            inner: table::Table::build(port)?,
        })
    }

    /// Finds the rule for a request. No allocation (unless the caller passes a host or SNI that
    /// is not lower-case), no linear scan over all routes.
    pub fn route<'t>(&'t self, req: &RequestInfo<'_>) -> Decision<'t> {
        self.inner.route(req)
    }

    /// The sectionName of the listener a host (lower-case, no port) selects, if any: what
    /// listener isolation gives the request, also usable to pick certificates by SNI.
    pub fn listener_for_host(&self, host: &str) -> Option<&str> {
        self.inner.listener_for_host(host)
    }
}

/// A rule ready to execute: filters precompiled, backends with cumulative weights.
#[derive(Debug)]
pub struct Rule {
    pub name: Option<String>,
    pub filters: Box<[Filter]>,
    pub backends: Vec<Backend>,
    pub timeouts: Timeouts,
    pub retry: Option<Retry>,
    total_weight: u64,
}

/// A backend of a rule.
#[derive(Debug)]
pub struct Backend {
    pub weight: u32,
    /// `None` for an invalid reference: requests that pick it get 500.
    pub cluster: Option<ClusterKey>,
    pub filters: Box<[Filter]>,
}

impl From<&HttpRule> for Rule {
    fn from(rule: &HttpRule) -> Rule {
        let backends: Vec<Backend> = rule
            .backends
            .iter()
            .map(|b| Backend {
                weight: b.weight,
                cluster: match &b.target {
                    BackendTarget::Cluster(key) => Some(key.clone()),
                    BackendTarget::Invalid { .. } => None,
                },
                filters: compile_filters(&b.filters),
            })
            .collect();
        let total_weight = backends.iter().map(|b| u64::from(b.weight)).sum();
        Rule {
            name: rule.name.clone(),
            filters: compile_filters(&rule.filters),
            backends,
            timeouts: rule.timeouts.clone(),
            retry: rule.retry.clone(),
            total_weight,
        }
    }
}

fn compile_filters(filters: &[HttpFilter]) -> Box<[Filter]> {
    filters.iter().map(Filter::from).collect()
}

impl Rule {
    /// Picks a backend by weight; `roll` is uniform random in `0..u64::MAX`. `None` when the rule
    /// has no backends or all weights are 0 (answer 500).
    pub fn pick_backend(&self, roll: u64) -> Option<&Backend> {
        if self.total_weight == 0 {
            return None;
        }
        let mut point = roll % self.total_weight;
        for backend in &self.backends {
            let w = u64::from(backend.weight);
            if point < w {
                return Some(backend);
            }
            point -= w;
        }
        None
    }
}

/// Re-exported so the proxy need not depend on config for header modifiers.
pub type Modifier = HeaderModifier;

#[cfg(test)]
mod tests;
