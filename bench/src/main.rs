//! `starling-bench`: load and benchmark MQTT brokers, modelled on
//! emqtt-bench. `conn` opens idle connections, `sub` subscribes and
//! measures what arrives (rate, losses, end-to-end latency), `pub`
//! publishes at a rate or flat out. Progress goes to stderr every second;
//! a JSON summary goes to stdout (or `--json FILE`) at the end.
//!
//! Exit codes: 0 when the run had no error and lost nothing, 1 when it
//! had errors or losses, 2 when it could not run at all.

mod cli;
mod client;
mod conn;
mod ids;
mod latency;
mod progress;
mod run;
mod stats;
mod sys;
mod template;
mod timer;
mod transport;
mod ws;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, CommonArgs};
use crate::stats::Summary;

/// jemalloc rather than glibc's allocator: the tool allocates and frees a
/// task, buffers and a handshake per client, 10,000 at a time, and
/// glibc's allocator spent a few percent of the tool's CPU on it, CPU
/// taken from the broker it shares the machine with.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn common(command: &Command) -> &CommonArgs {
    match command {
        Command::Conn(a) => &a.common,
        Command::Sub(a) => &a.common,
        Command::Pub(a) => &a.common,
    }
}

/// A multi-threaded runtime, or with `--threads 1` one that runs every
/// task on the main thread: a task woken by I/O then runs where the I/O
/// was seen, with no hand-over to another thread.
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if threads > 1 {
        builder.worker_threads(threads);
    }
    builder.enable_all().build()
}

fn write_summary(summary: &Summary, target: Option<&Path>) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(summary)?;
    text.push('\n');
    match target {
        Some(path) if path != Path::new("-") => std::fs::write(path, text)?,
        _ => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = common(&cli.command).json.clone();
    let runtime = match runtime(common(&cli.command).threads) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("starling-bench: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    // The run is a task on the runtime's workers, not on the main thread
    // that `block_on` parks: clients it spawns go to a worker's own queue
    // instead of waking a worker from outside for each of them.
    let outcome = runtime.block_on(async { tokio::spawn(run::run(cli.command)).await? });
    let summary = match outcome {
        Ok(summary) => summary,
        Err(error) => {
            eprintln!("starling-bench: {error:#}");
            return ExitCode::from(2);
        }
    };
    // Clients still closing after the grace period are dropped here.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    if let Err(error) = write_summary(&summary, json.as_deref()) {
        eprintln!("starling-bench: cannot write the summary: {error:#}");
        return ExitCode::from(2);
    }
    if summary.ok() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "starling-bench: {} errors, {} messages lost",
            summary.errors.total, summary.lost
        );
        ExitCode::FAILURE
    }
}
