//! The conformance report, shaped like upstream's `ConformanceReport`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::runner::Outcome;

/// One test's result with what the report groups it by.
#[derive(Clone, Debug)]
pub struct TestResult {
    pub name: String,
    pub profile: String,
    /// `Core` or `Extended`.
    pub level: String,
    pub outcome: Outcome,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    api_version: &'static str,
    kind: &'static str,
    implementation: Implementation,
    date: String,
    #[serde(rename = "gatewayAPIVersion")]
    gateway_api_version: &'static str,
    mode: &'static str,
    profiles: Vec<Profile>,
}

#[derive(Serialize)]
struct Implementation {
    organization: &'static str,
    project: &'static str,
    url: &'static str,
    version: &'static str,
    contact: Vec<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    name: String,
    core: Level,
    extended: Level,
    supported_features: Vec<String>,
    unsupported_features: Vec<String>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct Level {
    result: String,
    statistics: Statistics,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    failed_tests: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    skipped_tests: Vec<String>,
}

#[derive(Serialize, Default)]
struct Statistics {
    #[serde(rename = "Passed")]
    passed: usize,
    #[serde(rename = "Failed")]
    failed: usize,
    #[serde(rename = "Skipped")]
    skipped: usize,
}

fn level(results: &[&TestResult]) -> Level {
    let mut l = Level::default();
    for r in results {
        match &r.outcome {
            Outcome::Pass => l.statistics.passed += 1,
            Outcome::Fail(_) => {
                l.statistics.failed += 1;
                l.failed_tests.push(r.name.clone());
            }
            Outcome::Skip(_) => {
                l.statistics.skipped += 1;
                l.skipped_tests.push(r.name.clone());
            }
        }
    }
    l.result = if l.statistics.failed > 0 {
        "failure"
    } else if l.statistics.passed == 0 {
        "skipped"
    } else if l.statistics.skipped > 0 {
        "partial"
    } else {
        "success"
    }
    .to_string();
    l
}

/// Renders the report YAML. `features`/`all_features` give the supported/unsupported lists.
pub fn render(
    results: &[TestResult],
    supported: &[String],
    all_features: &[String],
    date: String,
) -> anyhow::Result<String> {
    let mut by_profile: BTreeMap<&str, Vec<&TestResult>> = BTreeMap::new();
    for r in results {
        by_profile.entry(r.profile.as_str()).or_default().push(r);
    }
    let mut unsupported: Vec<String> = all_features
        .iter()
        .filter(|f| !supported.contains(f))
        .cloned()
        .collect();
    unsupported.sort();
    unsupported.dedup();
    let profiles = by_profile
        .into_iter()
        .map(|(name, rs)| {
            let core: Vec<&TestResult> = rs.iter().copied().filter(|r| r.level == "Core").collect();
            let ext: Vec<&TestResult> = rs.iter().copied().filter(|r| r.level != "Core").collect();
            Profile {
                name: name.to_string(),
                core: level(&core),
                extended: level(&ext),
                supported_features: supported.to_vec(),
                unsupported_features: unsupported.clone(),
            }
        })
        .collect();
    let report = Report {
        api_version: "gateway.networking.k8s.io/v1",
        kind: "ConformanceReport",
        implementation: Implementation {
            organization: "strait",
            project: "strait",
            url: "https://github.com/strait/strait",
            version: env!("CARGO_PKG_VERSION"),
            contact: vec!["@strait/maintainers"],
        },
        date,
        gateway_api_version: "v1.6.1",
        mode: "default",
        profiles,
    };
    Ok(serde_saphyr::to_string(&report)?)
}

/// The closing line: `N passed, M failed[, K skipped]`.
pub fn summary(results: &[TestResult]) -> String {
    let count = |f: fn(&Outcome) -> bool| results.iter().filter(|r| f(&r.outcome)).count();
    let passed = count(|o| matches!(o, Outcome::Pass));
    let failed = count(|o| matches!(o, Outcome::Fail(_)));
    let skipped = count(|o| matches!(o, Outcome::Skip(_)));
    format!("{passed} passed, {failed} failed, {skipped} skipped")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, level: &str, outcome: Outcome) -> TestResult {
        TestResult {
            name: name.into(),
            profile: "GATEWAY-HTTP".into(),
            level: level.into(),
            outcome,
        }
    }

    #[test]
    fn report_groups_by_level_and_counts() {
        let results = vec![
            r("A", "Core", Outcome::Pass),
            r("B", "Core", Outcome::Fail("x".into())),
            r("C", "Extended", Outcome::Skip("y".into())),
            r("D", "Extended", Outcome::Pass),
        ];
        let yaml = render(
            &results,
            &["HTTPRoute".into()],
            &["HTTPRoute".into(), "Mesh".into()],
            "d".into(),
        )
        .unwrap();
        let v: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        let p = &v["profiles"][0];
        assert_eq!(v["kind"], "ConformanceReport");
        assert_eq!(p["core"]["statistics"]["Passed"], 1);
        assert_eq!(p["core"]["statistics"]["Failed"], 1);
        assert_eq!(p["core"]["result"], "failure");
        assert_eq!(p["core"]["failedTests"][0], "B");
        assert_eq!(p["extended"]["result"], "partial");
        assert_eq!(p["extended"]["skippedTests"][0], "C");
        assert_eq!(p["unsupportedFeatures"][0], "Mesh");
        assert_eq!(summary(&results), "2 passed, 1 failed, 1 skipped");
    }
}
