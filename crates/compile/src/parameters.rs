//! Provisioned proxies' parameters: the ConfigMap a GatewayClass or a Gateway names in
//! `parametersRef`. The class's ConfigMap gives defaults and a Gateway's overrides them key by
//! key (what the spec recommends); what neither sets takes Strait's defaults. A ConfigMap that
//! is missing, of another kind, or malformed (an unknown key, a value that does not parse)
//! rejects its object with `InvalidParameters`, naming the ConfigMap and the key.
//!
//! Waypoints are not Gateway objects: every waypoint takes the parameters of the
//! [`WAYPOINT_CLASS`] GatewayClass (or the defaults while it has none or invalid ones, so that a
//! typo does not take every waypoint of the mesh down with it).

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::api::core::v1::ConfigMap;
use strait_config::Workers;

use crate::context::{Context, name, ns};

/// The GatewayClass whose parameters every waypoint takes.
pub const WAYPOINT_CLASS: &str = "strait-waypoint";

/// The keys a parameters ConfigMap may set, under `data`.
pub const KEYS: [&str; 6] = [
    WORKERS,
    REPLICAS,
    REQUESTS_CPU,
    REQUESTS_MEMORY,
    LIMITS_CPU,
    LIMITS_MEMORY,
];
const WORKERS: &str = "workers";
const REPLICAS: &str = "replicas";
const REQUESTS_CPU: &str = "requests.cpu";
const REQUESTS_MEMORY: &str = "requests.memory";
const LIMITS_CPU: &str = "limits.cpu";
const LIMITS_MEMORY: &str = "limits.memory";

/// Requests every proxy gets unless told otherwise: enough for the scheduler to place it and
/// for a CPU autoscaler to have a base, small enough for a quiet namespace.
const DEFAULT_REQUESTS_CPU: Quantity = Quantity::fixed("100m", 0.1);
const DEFAULT_REQUESTS_MEMORY: Quantity = Quantity::fixed("64Mi", 64.0 * MIB);
/// A memory limit keeps a leak from taking the node down; there is no default CPU limit, so
/// the data path is never throttled.
const DEFAULT_LIMITS_MEMORY: Quantity = Quantity::fixed("512Mi", 512.0 * MIB);
const MIB: f64 = 1024.0 * 1024.0;

/// How one provisioned proxy runs, every source merged.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyParameters {
    /// `None`: the command's own default (one worker for a waypoint, one per CPU for a gateway).
    pub workers: Option<Workers>,
    /// `None`: not set by us, so the Deployment's default or an autoscaler decides.
    pub replicas: Option<u32>,
    pub requests_cpu: Quantity,
    pub requests_memory: Quantity,
    /// `None`: no CPU limit.
    pub limits_cpu: Option<Quantity>,
    pub limits_memory: Quantity,
}

impl Default for ProxyParameters {
    fn default() -> Self {
        ProxyParameters {
            workers: None,
            replicas: None,
            requests_cpu: DEFAULT_REQUESTS_CPU,
            requests_memory: DEFAULT_REQUESTS_MEMORY,
            limits_cpu: None,
            limits_memory: DEFAULT_LIMITS_MEMORY,
        }
    }
}

/// What one parameters ConfigMap sets; every key is optional.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Overrides {
    workers: Option<Workers>,
    replicas: Option<u32>,
    requests_cpu: Option<Quantity>,
    requests_memory: Option<Quantity>,
    limits_cpu: Option<Quantity>,
    limits_memory: Option<Quantity>,
}

impl Overrides {
    /// Reads a parameters ConfigMap; the error names the ConfigMap and, when one is at fault,
    /// the key.
    pub(crate) fn read(config_map: &ConfigMap) -> Result<Overrides, String> {
        let id = format!(
            "ConfigMap {}/{}",
            ns(&config_map.metadata),
            name(&config_map.metadata)
        );
        if let Some(key) = config_map
            .binary_data
            .iter()
            .flatten()
            .map(|(k, _)| k)
            .next()
        {
            return Err(format!(
                "{id}: binaryData key `{key}` is not read; parameters go under data"
            ));
        }
        let mut overrides = Overrides::default();
        for (key, value) in config_map.data.iter().flatten() {
            let value = value.trim();
            let invalid = |why: String| format!("{id}: {key}: {why}");
            match key.as_str() {
                WORKERS => overrides.workers = Some(value.parse().map_err(invalid)?),
                REPLICAS => {
                    // The Deployment's field is an int32.
                    let replicas = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| i32::try_from(*n).is_ok());
                    overrides.replicas = Some(replicas.ok_or_else(|| {
                        invalid(format!("`{value}` is not a number of replicas (0 or more)"))
                    })?)
                }
                REQUESTS_CPU => {
                    overrides.requests_cpu = Some(Quantity::parse(value).map_err(invalid)?)
                }
                REQUESTS_MEMORY => {
                    overrides.requests_memory = Some(Quantity::parse(value).map_err(invalid)?)
                }
                LIMITS_CPU => overrides.limits_cpu = Some(Quantity::parse(value).map_err(invalid)?),
                LIMITS_MEMORY => {
                    overrides.limits_memory = Some(Quantity::parse(value).map_err(invalid)?)
                }
                _ => {
                    return Err(format!(
                        "{id}: unknown key `{key}` (known: {})",
                        KEYS.join(", ")
                    ));
                }
            }
        }
        Ok(overrides)
    }

    /// These overrides on top of `defaults` (a class's), then Strait's defaults. A request
    /// nobody set stays within the limit somebody did set; a request set above its limit is an
    /// error, as the API server would refuse the Deployment.
    pub(crate) fn over(&self, defaults: &Overrides) -> Result<ProxyParameters, String> {
        fn pick(a: &Option<Quantity>, b: &Option<Quantity>) -> Option<Quantity> {
            a.clone().or_else(|| b.clone())
        }
        let limits_cpu = pick(&self.limits_cpu, &defaults.limits_cpu);
        let limits_memory =
            pick(&self.limits_memory, &defaults.limits_memory).unwrap_or(DEFAULT_LIMITS_MEMORY);
        let request = |set: Option<Quantity>,
                       default: Quantity,
                       limit: Option<&Quantity>,
                       resource| match set {
            Some(request) => match limit {
                Some(limit) if request.value > limit.value => Err(format!(
                    "requests.{resource} `{request}` is above limits.{resource} `{limit}`"
                )),
                _ => Ok(request),
            },
            None => Ok(match limit {
                Some(limit) if limit.value < default.value => limit.clone(),
                _ => default,
            }),
        };
        Ok(ProxyParameters {
            workers: self.workers.or(defaults.workers),
            replicas: self.replicas.or(defaults.replicas),
            requests_cpu: request(
                pick(&self.requests_cpu, &defaults.requests_cpu),
                DEFAULT_REQUESTS_CPU,
                limits_cpu.as_ref(),
                "cpu",
            )?,
            requests_memory: request(
                pick(&self.requests_memory, &defaults.requests_memory),
                DEFAULT_REQUESTS_MEMORY,
                Some(&limits_memory),
                "memory",
            )?,
            limits_cpu,
            limits_memory,
        })
    }
}

/// Where a `parametersRef` points, and whether Strait reads that kind.
pub(crate) struct ParametersRef<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    /// `None` for a GatewayClass reference without a namespace (a ConfigMap needs one).
    pub namespace: Option<&'a str>,
    pub name: &'a str,
}

impl ParametersRef<'_> {
    /// The overrides of the referenced ConfigMap; the error says what is wrong, prefixed with
    /// `owner` (kind and name of the referring object).
    pub(crate) fn resolve(&self, ctx: &Context<'_>, owner: &str) -> Result<Overrides, String> {
        let ParametersRef {
            group,
            kind,
            namespace,
            name: wanted,
        } = *self;
        if !group.is_empty() || kind != "ConfigMap" {
            return Err(format!(
                "{owner}: parametersRef {group}/{kind} {wanted} is not supported (only a core ConfigMap)"
            ));
        }
        let config_map = namespace.and_then(|namespace| {
            ctx.snapshot
                .config_maps
                .iter()
                .find(|c| ns(&c.metadata) == namespace && name(&c.metadata) == wanted)
        });
        let Some(config_map) = config_map else {
            return Err(format!(
                "{owner}: parametersRef ConfigMap {}/{wanted} not found",
                namespace.unwrap_or("(no namespace)")
            ));
        };
        Overrides::read(config_map).map_err(|e| format!("{owner}: parametersRef {e}"))
    }
}

/// A Kubernetes resource quantity (`250m`, `1.5`, `512Mi`, `1e3`), kept as written, with its
/// value for comparing a request to its limit.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantity {
    text: Cow<'static, str>,
    value: f64,
}

impl Quantity {
    /// Parses the API server's quantity grammar: a non-negative decimal number, then a binary
    /// (`Ki`…`Ei`) or decimal (`m`, `k`, `M`…`E`) suffix or an exponent (`e3`, `E-2`).
    pub fn parse(text: &str) -> Result<Quantity, String> {
        let invalid = || {
            format!(
                "`{text}` is not a quantity (a number with an optional suffix: 250m, 2, 512Mi, 1G)"
            )
        };
        let unsigned = text.strip_prefix('+').unwrap_or(text);
        let number_len = unsigned
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(unsigned.len());
        let (number, suffix) = unsigned.split_at(number_len);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid());
        }
        let number: f64 = number.parse().map_err(|_| invalid())?;
        let scale = match suffix {
            "" => 1.0,
            "m" => 1e-3,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "P" => 1e15,
            "E" => 1e18,
            "Ki" => 1024f64,
            "Mi" => 1024f64.powi(2),
            "Gi" => 1024f64.powi(3),
            "Ti" => 1024f64.powi(4),
            "Pi" => 1024f64.powi(5),
            "Ei" => 1024f64.powi(6),
            exponent => {
                let digits = exponent.strip_prefix(['e', 'E']).ok_or_else(invalid)?;
                let unsigned = digits.strip_prefix(['+', '-']).unwrap_or(digits);
                if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid());
                }
                10f64.powi(digits.parse().map_err(|_| invalid())?)
            }
        };
        Ok(Quantity {
            text: Cow::Owned(text.to_string()),
            value: number * scale,
        })
    }

    /// A default above, its value worked out by hand (a test parses each to check it).
    const fn fixed(text: &'static str, value: f64) -> Quantity {
        Quantity {
            text: Cow::Borrowed(text),
            value,
        }
    }

    /// The quantity as written (what the Deployment carries).
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn config_map(pairs: &[(&str, &str)]) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = Some("infra".into());
        cm.metadata.name = Some("params".into());
        cm.data = Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        cm
    }

    fn read(pairs: &[(&str, &str)]) -> Result<Overrides, String> {
        Overrides::read(&config_map(pairs))
    }

    #[test]
    fn quantities_follow_the_api_servers_grammar() {
        let value = |text| Quantity::parse(text).map(|q| q.value);
        assert_eq!(value("250m"), Ok(0.25));
        assert_eq!(value("2"), Ok(2.0));
        assert_eq!(value("+1.5"), Ok(1.5));
        assert_eq!(value(".5"), Ok(0.5));
        assert_eq!(value("1."), Ok(1.0));
        assert_eq!(value("512Mi"), Ok(512.0 * 1024.0 * 1024.0));
        assert_eq!(value("1G"), Ok(1e9));
        assert_eq!(value("1e3"), Ok(1000.0));
        assert_eq!(value("15E-1"), Ok(1.5));
        for bad in [
            "", "-1", "m", "1.2.3", "1mi", "1Mib", "1e", "1e+", "1e1.5", "one", "1 Gi", ".", "1ee2",
        ] {
            let error = Quantity::parse(bad).expect_err(bad);
            assert!(error.contains(&format!("`{bad}`")), "{error}");
        }
    }

    #[test]
    fn every_key_is_read_and_strait_defaults_fill_the_rest() {
        let all = read(&[
            ("workers", "4"),
            ("replicas", "3"),
            ("requests.cpu", "500m"),
            ("requests.memory", "128Mi"),
            ("limits.cpu", "2"),
            ("limits.memory", "1Gi"),
        ])
        .expect("valid");
        let params = all.over(&Overrides::default()).expect("consistent");
        assert_eq!(params.workers, Some("4".parse().expect("a count")));
        assert_eq!(params.replicas, Some(3));
        assert_eq!(params.requests_cpu.as_str(), "500m");
        assert_eq!(params.requests_memory.as_str(), "128Mi");
        assert_eq!(params.limits_cpu.as_ref().map(Quantity::as_str), Some("2"));
        assert_eq!(params.limits_memory.as_str(), "1Gi");

        let defaults = ProxyParameters::default();
        assert_eq!(defaults.workers, None);
        assert_eq!(defaults.replicas, None);
        assert_eq!(defaults.requests_cpu.as_str(), "100m");
        assert_eq!(defaults.requests_memory.as_str(), "64Mi");
        assert_eq!(defaults.limits_cpu, None, "no CPU limit unless asked for");
        assert_eq!(defaults.limits_memory.as_str(), "512Mi");
        for fixed in [
            DEFAULT_REQUESTS_CPU,
            DEFAULT_REQUESTS_MEMORY,
            DEFAULT_LIMITS_MEMORY,
        ] {
            assert_eq!(
                Quantity::parse(fixed.as_str()),
                Ok(fixed.clone()),
                "{fixed}"
            );
        }
        assert_eq!(
            Overrides::default().over(&Overrides::default()),
            Ok(defaults),
            "nothing set is the defaults"
        );
    }

    #[test]
    fn a_gateway_overrides_its_class_key_by_key() {
        let class =
            read(&[("workers", "2"), ("replicas", "2"), ("limits.cpu", "4")]).expect("valid");
        let gateway = read(&[("workers", "auto"), ("requests.cpu", "1")]).expect("valid");
        let params = gateway.over(&class).expect("consistent");
        assert_eq!(
            params.workers,
            Some(Workers::PerCpu),
            "the Gateway's own value wins"
        );
        assert_eq!(
            params.replicas,
            Some(2),
            "the class's value where the Gateway is silent"
        );
        assert_eq!(params.requests_cpu.as_str(), "1");
        assert_eq!(params.limits_cpu.as_ref().map(Quantity::as_str), Some("4"));
    }

    #[test]
    fn a_default_request_stays_within_a_lower_limit_but_a_set_one_may_not_exceed_it() {
        let small = read(&[("limits.memory", "32Mi"), ("limits.cpu", "50m")]).expect("valid");
        let params = small.over(&Overrides::default()).expect("consistent");
        assert_eq!(params.requests_memory.as_str(), "32Mi");
        assert_eq!(params.requests_cpu.as_str(), "50m");

        let above = read(&[("requests.memory", "1Gi")]).expect("valid");
        let error = above.over(&Overrides::default()).expect_err("1Gi > 512Mi");
        assert_eq!(
            error,
            "requests.memory `1Gi` is above limits.memory `512Mi`"
        );
        // The limit may come from the class and the request from the Gateway.
        let class = read(&[("limits.cpu", "1")]).expect("valid");
        let gateway = read(&[("requests.cpu", "1500m")]).expect("valid");
        let error = gateway.over(&class).expect_err("1.5 > 1");
        assert_eq!(error, "requests.cpu `1500m` is above limits.cpu `1`");
    }

    #[test]
    fn malformed_parameters_name_the_config_map_and_the_key() {
        let cases: [(&[(&str, &str)], &str); 5] = [
            (
                &[("workers", "two")],
                "ConfigMap infra/params: workers: `two` is not a number of workers (1 or more) nor `auto`",
            ),
            (
                &[("replicas", "-1")],
                "ConfigMap infra/params: replicas: `-1` is not a number of replicas (0 or more)",
            ),
            (
                &[("limits.memory", "lots")],
                "ConfigMap infra/params: limits.memory: `lots`",
            ),
            (
                &[("requests.cpu", "")],
                "ConfigMap infra/params: requests.cpu: ``",
            ),
            (
                &[("worker", "2")],
                "ConfigMap infra/params: unknown key `worker` (known: workers, replicas, requests.cpu, requests.memory, limits.cpu, limits.memory)",
            ),
        ];
        for (pairs, expected) in cases {
            let error = read(pairs).expect_err(expected);
            assert!(error.starts_with(expected), "{error}\nexpected: {expected}");
        }
        let mut binary = config_map(&[]);
        binary.binary_data = Some(BTreeMap::from([(
            "workers".to_string(),
            k8s_openapi::ByteString(b"2".to_vec()),
        )]));
        assert_eq!(
            Overrides::read(&binary).expect_err("binaryData"),
            "ConfigMap infra/params: binaryData key `workers` is not read; parameters go under data"
        );
        assert_eq!(
            read(&[]),
            Ok(Overrides::default()),
            "an empty ConfigMap sets nothing"
        );
    }
}
