//! The per-port routing table: listener selection by hostname, then per listener a hostname
//! index of path indexes over pre-sorted match rows.

use std::borrow::Cow;
use std::cmp::Reverse;

use strait_config::{HttpMatch, HttpRoute, ListenerConfig, PathMatch, PortConfig, RouteRef};

use crate::host::{HostIndex, HostKey};
use crate::matcher::{Conditions, full_regex};
use crate::path::PathIndex;
use crate::{BuildError, Decision, RequestInfo, RouteMatch, Rule};

#[derive(Debug)]
pub(crate) struct Table {
    listeners: Vec<Listener>,
    by_host: HostIndex<usize>,
}

#[derive(Debug)]
struct Listener {
    name: String,
    routes: Vec<RouteRef>,
    rules: Vec<Rule>,
    rows: Vec<Row>,
    hosts: HostIndex<PathIndex>,
}

/// One HTTPRouteMatch of one rule, with everything needed to order and evaluate it.
#[derive(Debug)]
struct Row {
    route: usize,
    rule: usize,
    path: PathMatch,
    conditions: Conditions,
    key: SortKey,
}

/// Precedence within one hostname: smaller sorts first. The path class is implied by which
/// list of the [`PathIndex`] the row is in.
type SortKey = (
    Reverse<usize>,
    Reverse<bool>,
    Reverse<usize>,
    Reverse<usize>,
    usize,
    usize,
    usize,
);

impl Table {
    pub(crate) fn build(port: &PortConfig) -> Result<Table, BuildError> {
        let mut listeners = Vec::with_capacity(port.listeners.len());
        let mut by_host = HostIndex::default();
        for (i, listener) in port.listeners.iter().enumerate() {
            by_host.entry(HostKey::parse(listener.hostname.as_deref()), || i);
            listeners.push(Listener::build(listener)?);
        }
        Ok(Table { listeners, by_host })
    }

    pub(crate) fn listener_for_host(&self, host: &str) -> Option<&str> {
        let host = lower(host);
        self.by_host
            .first(&host)
            .and_then(|&i| self.listeners.get(i))
            .map(|l| l.name.as_str())
    }

    pub(crate) fn route<'t>(&'t self, req: &RequestInfo<'_>) -> Decision<'t> {
        let host = lower(req.host);
        let Some(&chosen) = self.by_host.first(&host) else {
            return Decision::NotFound;
        };
        if let Some(sni) = req.sni {
            let sni = lower(sni);
            if let Some(&by_sni) = self.by_host.first(&sni)
                && by_sni != chosen
            {
                return Decision::Misdirected;
            }
        }
        let Some(listener) = self.listeners.get(chosen) else {
            return Decision::NotFound;
        };
        listener.route(&host, req)
    }
}

fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

impl Listener {
    fn build(config: &ListenerConfig) -> Result<Listener, BuildError> {
        // Route-level tie-break: oldest first, then namespace/name.
        let mut order: Vec<usize> = (0..config.http_routes.len()).collect();
        order.sort_by(|&a, &b| {
            let (ra, rb) = (&config.http_routes[a], &config.http_routes[b]);
            (&ra.creation_timestamp, &ra.route.namespace, &ra.route.name).cmp(&(
                &rb.creation_timestamp,
                &rb.route.namespace,
                &rb.route.name,
            ))
        });
        let mut listener = Listener {
            name: config.name.clone(),
            routes: Vec::with_capacity(order.len()),
            rules: Vec::new(),
            rows: Vec::new(),
            hosts: HostIndex::default(),
        };
        for (rank, &i) in order.iter().enumerate() {
            listener.add_route(&config.http_routes[i], rank)?;
        }
        let rows = &listener.rows;
        for index in listener.hosts.values_mut() {
            index.sort_by_key(|r| rows[r as usize].key);
        }
        Ok(listener)
    }

    fn add_route(&mut self, route: &HttpRoute, rank: usize) -> Result<(), BuildError> {
        let label = format!(
            "{} {}/{}",
            route.route.kind, route.route.namespace, route.route.name
        );
        let route_idx = self.routes.len();
        self.routes.push(route.route.clone());

        let mut keys: Vec<HostKey> = Vec::new();
        for h in &route.hostnames {
            let key = HostKey::parse(Some(h));
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            keys.push(HostKey::Any);
        }

        for (rule_no, rule) in route.rules.iter().enumerate() {
            let rule_idx = self.rules.len();
            self.rules.push(Rule::from(rule));
            // Compile always fills in the default match; be lenient with other producers.
            let default_match;
            let matches = if rule.matches.is_empty() {
                default_match = [HttpMatch {
                    path: PathMatch::Prefix("/".into()),
                    headers: Vec::new(),
                    query_params: Vec::new(),
                    method: None,
                }];
                &default_match[..]
            } else {
                &rule.matches[..]
            };
            for (match_no, m) in matches.iter().enumerate() {
                let conditions = Conditions::compile(m, &label)?;
                let path_len = match &m.path {
                    PathMatch::Exact(p)
                    | PathMatch::Prefix(p)
                    | PathMatch::RegularExpression(p) => p.len(),
                };
                let key = (
                    Reverse(path_len),
                    Reverse(conditions.has_method()),
                    Reverse(conditions.header_count()),
                    Reverse(conditions.query_count()),
                    rank,
                    rule_no,
                    match_no,
                );
                let row = u32::try_from(self.rows.len()).map_err(|_| BuildError::TooLarge {
                    route: label.clone(),
                })?;
                let regex = match &m.path {
                    PathMatch::RegularExpression(p) => Some(full_regex(p, &label)?),
                    _ => None,
                };
                self.rows.push(Row {
                    route: route_idx,
                    rule: rule_idx,
                    path: m.path.clone(),
                    conditions,
                    key,
                });
                for host in &keys {
                    let index = self.hosts.entry(host.clone(), PathIndex::default);
                    match (&m.path, &regex) {
                        (PathMatch::Exact(p), _) => index.add_exact(p, row),
                        (PathMatch::Prefix(p), _) => index.add_prefix(p, row),
                        (PathMatch::RegularExpression(_), Some(re)) => {
                            index.add_regex(re.clone(), row)
                        }
                        (PathMatch::RegularExpression(_), None) => {}
                    }
                }
            }
        }
        Ok(())
    }

    fn route<'t>(&'t self, host: &str, req: &RequestInfo<'_>) -> Decision<'t> {
        for index in self.hosts.lookup(host) {
            let found = index.find(req.path, |r| {
                self.rows
                    .get(r as usize)
                    .is_some_and(|row| row.conditions.matches(req.method, req.headers, req.query))
            });
            if let Some(row) = found.and_then(|r| self.rows.get(r as usize)) {
                let (Some(route), Some(rule)) =
                    (self.routes.get(row.route), self.rules.get(row.rule))
                else {
                    continue;
                };
                return Decision::Matched(RouteMatch {
                    listener: &self.name,
                    route,
                    rule,
                    path_match: &row.path,
                });
            }
        }
        Decision::NotFound
    }
}
