//! `strait-perf`: the helpers of `tests/perf/run.sh`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod hold;
mod hot_text;
mod mesh;
mod parse;
mod report;
mod rss_peak;

#[derive(Parser)]
#[command(name = "strait-perf", about = "Helpers of tests/perf/run.sh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the mesh topology (network namespaces in 198.18.0.0/15), print KEY=value lines,
    /// wait for SIGTERM/SIGINT, tear it down.
    Mesh {
        /// Where to write topology.yaml and env.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Open COUNT keep-alive connections (one request each) and hold them until a signal.
    Hold {
        addr: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[arg(long, default_value = "example.com")]
        host: String,
        #[arg(long, default_value = "/api/hold")]
        path: String,
    },
    /// Print the highest summed VmRSS (KiB) of PIDS and their descendants, sampled while
    /// WHILE_PID runs, without forking (it shares a core with the load generator).
    RssPeak {
        /// Sample until this process exits.
        #[arg(long = "while")]
        while_pid: u32,
        /// Milliseconds between samples.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
        #[arg(required = true)]
        pids: Vec<u32>,
    },
    /// Print `metric<TAB>value` lines from a load generator's output.
    Parse {
        #[command(subcommand)]
        tool: Tool,
    },
    /// Write the linker script that places the functions callgrind PROFILES saw BINARY execute
    /// together at the start of its .text (see tests/perf/hot-text.sh).
    HotText {
        /// The `strait` binary the profiles were recorded from.
        #[arg(long)]
        binary: PathBuf,
        /// Where to write the script.
        #[arg(long)]
        out: PathBuf,
        /// One line saying what the profiles were recorded from, kept in the script.
        #[arg(long, default_value = "")]
        trained_on: String,
        /// Roles (subcommands) that must each have a profile, comma-separated.
        #[arg(long, value_delimiter = ',')]
        require_roles: Vec<String>,
        /// callgrind output files (recorded with `--demangle=no`).
        #[arg(required = true)]
        profiles: Vec<PathBuf>,
    },
    /// Write docs/performance.md from the recorded rounds and print the table.
    Report {
        /// The results file (round, section, target, metric, value; tab-separated).
        results: PathBuf,
        /// Machine description (CPU, kernel, tool versions).
        #[arg(long)]
        machine: PathBuf,
        /// Free-form notes of the run (skipped parts, warnings).
        #[arg(long)]
        notes: Option<PathBuf>,
        /// One line describing the run (rounds, durations).
        #[arg(long, default_value = "")]
        run: String,
        /// Where to write the document.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum Tool {
    /// `wrk --latency` output.
    Wrk {
        output: PathBuf,
        /// utime+stime of the proxy over the test, in clock ticks.
        #[arg(long)]
        cpu_ticks: Option<u64>,
        #[arg(long, default_value_t = 100)]
        clk_tck: u64,
    },
    /// h2load output and its --log-file.
    H2load {
        output: PathBuf,
        log: PathBuf,
        #[arg(long)]
        cpu_ticks: Option<u64>,
        #[arg(long, default_value_t = 100)]
        clk_tck: u64,
    },
    /// `iperf3 -J` output.
    Iperf3 { output: PathBuf },
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Mesh { dir } => {
            runtime()?.block_on(mesh::run(&dir.unwrap_or_else(mesh::default_dir)))
        }
        Command::Hold {
            addr,
            count,
            host,
            path,
        } => runtime()?.block_on(hold::run(addr, count, &host, &path)),
        Command::RssPeak {
            while_pid,
            interval_ms,
            pids,
        } => {
            let peak = rss_peak::run(while_pid, &pids, Duration::from_millis(interval_ms));
            println!("{peak}");
            Ok(())
        }
        Command::Parse { tool } => {
            let out = match tool {
                Tool::Wrk {
                    output,
                    cpu_ticks,
                    clk_tck,
                } => parse::wrk(&read(&output)?)
                    .with_context(|| output.display().to_string())?
                    .lines(cpu_ticks, clk_tck),
                Tool::H2load {
                    output,
                    log,
                    cpu_ticks,
                    clk_tck,
                } => parse::h2load(&read(&output)?, &read(&log)?)
                    .with_context(|| output.display().to_string())?
                    .lines(cpu_ticks, clk_tck),
                Tool::Iperf3 { output } => {
                    parse::iperf3(&read(&output)?).with_context(|| output.display().to_string())?
                }
            };
            print!("{out}");
            Ok(())
        }
        Command::HotText {
            binary,
            out,
            trained_on,
            require_roles,
            profiles,
        } => {
            let summary = hot_text::run(&binary, &out, &trained_on, &require_roles, &profiles)?;
            println!("{summary}");
            Ok(())
        }
        Command::Report {
            results,
            machine,
            notes,
            run,
            out,
        } => {
            let parsed = report::parse_results(&read(&results)?)
                .with_context(|| results.display().to_string())?;
            let notes = match notes {
                Some(path) if path.exists() => read(&path)?,
                _ => String::new(),
            };
            let doc = report::document(&parsed, &read(&machine)?, &notes, &run);
            std::fs::write(&out, doc).with_context(|| format!("writing {}", out.display()))?;
            print!(
                "{}\n{}",
                report::table(&parsed),
                report::targets_table(&parsed)
            );
            Ok(())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")
}
