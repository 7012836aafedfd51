//! `strait-conformance`: replays the Gateway API conformance corpus (data form) against Strait's
//! standalone mode and writes an upstream-shaped conformance report.
//!
//! Everything is driven by each test's `cases.yaml`; a new test folder runs without code changes.

mod certs;
mod client;
mod cluster;
mod expect;
mod mesh;
mod report;
mod runner;
mod spec;
mod status;
mod target;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use crate::report::TestResult;
use crate::runner::{Outcome, Run};

#[derive(Parser, Debug)]
#[command(about = "Replay the Gateway API conformance corpus against Strait")]
struct Cli {
    /// Corpus directory (INDEX.md format: base/, <Test>/cases.yaml, <Test>/manifests.yaml).
    #[arg(long)]
    corpus: PathBuf,
    /// Only run tests whose `profile` is one of these (others are reported as skipped).
    #[arg(long)]
    profile: Vec<String>,
    /// Only run these tests (by folder / ShortName).
    #[arg(long = "test")]
    tests: Vec<String>,
    /// Treat these features as supported in addition to the built-in list.
    #[arg(long = "feature")]
    extra_features: Vec<String>,
    /// Write the YAML report here.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            println!("0 passed, 1 failed");
            ExitCode::FAILURE
        }
    }
}

/// Test folders (those with a cases.yaml), sorted.
fn test_dirs(corpus: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(corpus)
        .map_err(|e| anyhow::anyhow!("{}: {e}", corpus.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("cases.yaml").is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    let mut features: Vec<String> = runner::SUPPORTED_FEATURES
        .iter()
        .map(|s| s.to_string())
        .collect();
    features.extend(cli.extra_features.iter().cloned());
    let scratch = WorkDir::create()?;
    let work = scratch.path();
    let mut run = Run {
        corpus: cli.corpus.clone(),
        work: work.to_path_buf(),
        generated: certs::generate()?,
        cluster: cluster::Cluster::default(),
        features: features.clone(),
    };
    let mut results = Vec::new();
    let mut all_features = Vec::new();
    // Built on the first mesh test, shared by all of them.
    let mut mesh_world: Option<Result<mesh::MeshWorld, String>> = None;
    for dir in test_dirs(&cli.corpus)? {
        let spec = match spec::load(&dir) {
            Ok(s) => s,
            Err(e) => {
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if cli.tests.is_empty() || cli.tests.contains(&name) {
                    let r = TestResult {
                        name,
                        profile: String::new(),
                        level: String::new(),
                        outcome: Outcome::Fail(format!("{e:#}")),
                    };
                    print_result(&r);
                    results.push(r);
                }
                continue;
            }
        };
        if !cli.tests.is_empty() && !cli.tests.contains(&spec.test) {
            continue;
        }
        all_features.extend(spec.features.iter().cloned());
        let started = std::time::Instant::now();
        let outcome = if !cli.profile.is_empty() && !cli.profile.contains(&spec.profile) {
            Outcome::Skip(format!("profile {} not selected", spec.profile))
        } else if spec.profile.starts_with("MESH") {
            if let Some(reason) = runner::missing_features(&spec, &features) {
                Outcome::Skip(reason)
            } else {
                if mesh_world.is_none() {
                    mesh_world = Some(
                        mesh::MeshWorld::start(&cli.corpus, work)
                            .await
                            .map_err(|e| format!("{e:#}")),
                    );
                }
                match mesh_world.as_mut() {
                    Some(Ok(world)) => world.run_test(&spec, &dir).await,
                    Some(Err(e)) => Outcome::Fail(format!("mesh topology: {e}")),
                    None => Outcome::Fail("mesh topology missing".into()),
                }
            }
        } else {
            run.run_test(&spec, &dir).await
        };
        let r = TestResult {
            name: spec.test.clone(),
            profile: spec.profile.clone(),
            level: spec.level.clone(),
            outcome,
        };
        if !matches!(r.outcome, Outcome::Skip(_)) {
            tracing::info!(test = %r.name, elapsed = ?started.elapsed(), "test finished");
        }
        print_result(&r);
        results.push(r);
    }
    if let Some(Ok(world)) = mesh_world {
        world.shutdown().await;
    }
    if let Some(path) = &cli.report {
        let yaml = report::render(&results, &features, &all_features, now_rfc3339())?;
        std::fs::write(path, yaml).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    let failed = results
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Fail(_)));
    println!("{}", report::summary(&results));
    Ok(!failed)
}

/// The run's scratch directory (manifests, the mesh world's files), removed with everything in
/// it when the run ends, however it ends.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> anyhow::Result<WorkDir> {
        let path = std::env::temp_dir().join(format!("strait-conformance-{}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(WorkDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn print_result(r: &TestResult) {
    match &r.outcome {
        Outcome::Pass => println!("PASS {}", r.name),
        Outcome::Fail(why) => println!("FAIL {}: {}", r.name, why.replace('\n', " ")),
        Outcome::Skip(why) => println!("SKIP {}: {why}", r.name),
    }
}

/// The current UTC time as RFC 3339 (no date crate needed for one timestamp).
fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests;
