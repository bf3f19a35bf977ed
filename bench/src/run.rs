//! One run: start the clients at the asked rate, start the publishers once
//! everyone is connected, stop on the first bound reached (duration, limit,
//! expect, hold, idle timeout, signal), and add up the summary.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::Duration;

use anyhow::Context as _;
use parking_lot::Mutex;
use starling_codec::QoS;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::{Command, CommonArgs, Mode};
use crate::client::{self, PubSpec, Role, SubSpec};
use crate::progress;
use crate::stats::{RunInfo, Stats, Summary};
use crate::sys;
use crate::transport::Connector;

/// Time clients get to disconnect once the run stops.
const GRACE: Duration = Duration::from_secs(5);

/// What every client of the run shares.
pub struct Ctx {
    pub mode: Mode,
    pub common: CommonArgs,
    pub role: Role,
    pub connector: Connector,
    pub stats: Stats,
    /// Cancelled when the run stops, for whatever reason.
    pub stop: CancellationToken,
    /// Cancelled once every client has connected (or failed to): the
    /// publishers' starting gun.
    pub start: CancellationToken,
    /// Bounds the handshakes under way (`--max-pending`).
    pub pending: Option<Semaphore>,
    settled: Notify,
    /// How many clients `settled` waits for; u64::MAX until all are
    /// launched. Only the last to settle wakes the waiter, not each one.
    settle_target: AtomicU64,
    stop_reason: Mutex<Option<&'static str>>,
}

impl Ctx {
    /// A client's connection phase is over, whatever its outcome.
    pub fn settle(&self) {
        // SeqCst on both sides (here and in wait_settled): each side writes
        // one atomic then reads the other's, and at least one must see the
        // other's write, or the waiter would sleep through the last settle.
        let settled = self.stats.settled.fetch_add(1, SeqCst) + 1;
        if settled >= self.settle_target.load(SeqCst) {
            self.settled.notify_one();
        }
    }

    /// Stops the run; the first reason given is the one reported.
    pub fn request_stop(&self, reason: &'static str) {
        self.stop_reason.lock().get_or_insert(reason);
        self.stop.cancel();
    }

    fn stop_reason(&self) -> &'static str {
        self.stop_reason.lock().unwrap_or("done")
    }
}

fn qos(value: u8) -> QoS {
    QoS::from_u8(value).unwrap_or(QoS::AtMostOnce)
}

struct Plan {
    mode: Mode,
    common: CommonArgs,
    role: Role,
    qos: u8,
    expected: Option<u64>,
    hold: Option<Duration>,
    idle_timeout: Option<Duration>,
    duration: Duration,
}

fn plan(command: Command) -> Plan {
    match command {
        Command::Conn(args) => Plan {
            mode: Mode::Conn,
            duration: args.common.duration(args.hold.is_some()),
            common: args.common,
            role: Role::Conn,
            qos: 0,
            expected: None,
            hold: args.hold.map(|s| Duration::from_secs_f64(s.max(0.0))),
            idle_timeout: None,
        },
        Command::Sub(args) => Plan {
            mode: Mode::Sub,
            duration: args
                .common
                .duration(args.expect.is_some() || args.idle_timeout.is_some()),
            common: args.common,
            qos: args.qos,
            expected: args.expect,
            hold: None,
            idle_timeout: args
                .idle_timeout
                .map(|s| Duration::from_secs_f64(s.max(0.0))),
            role: Role::Sub(SubSpec {
                topics: args.topic,
                qos: qos(args.qos),
                shared_group: args.shared_group,
                expect: args.expect,
            }),
        },
        Command::Pub(args) => {
            let period = args.period();
            Plan {
                mode: Mode::Pub,
                duration: args.common.duration(args.limit > 0),
                qos: args.qos,
                expected: (args.limit > 0).then(|| args.limit * u64::from(args.common.count)),
                hold: None,
                idle_timeout: None,
                role: Role::Pub(PubSpec {
                    topic: args.topic,
                    qos: qos(args.qos),
                    size: args.size,
                    period,
                    limit: args.limit,
                    inflight: args.inflight,
                    retain: args.retain,
                    fine_timer: !args.coarse_timer,
                }),
                common: args.common,
            }
        }
    }
}

/// Runs the benchmark the command describes and returns its summary.
pub async fn run(command: Command) -> anyhow::Result<Summary> {
    let plan = plan(command);
    let common = plan.common;
    match sys::raise_nofile_limit() {
        Ok(limit) if u64::from(common.count) + 64 > limit => eprintln!(
            "starling-bench: warning: {} clients but only {limit} open files allowed (ulimit -n)",
            common.count
        ),
        Ok(_) => {}
        Err(error) => {
            eprintln!("starling-bench: warning: cannot read the open files limit: {error}")
        }
    }
    let connector = Connector::new(&common)
        .await
        .context("cannot set up the connection")?;
    let ctx = Arc::new(Ctx {
        mode: plan.mode,
        pending: (common.max_pending > 0).then(|| Semaphore::new(common.max_pending as usize)),
        common,
        role: plan.role,
        connector,
        stats: Stats::new(),
        stop: CancellationToken::new(),
        start: CancellationToken::new(),
        settled: Notify::new(),
        settle_target: AtomicU64::new(u64::MAX),
        stop_reason: Mutex::new(None),
    });

    tokio::spawn(stop_after(ctx.clone(), plan.duration, "duration"));
    tokio::spawn(stop_on_signal(ctx.clone()));
    let reporter = tokio::spawn(progress::report(ctx.clone(), plan.idle_timeout));

    let mut tasks = JoinSet::new();
    let launched = launch(&ctx, &mut tasks).await;
    wait_settled(&ctx, launched).await;
    if !ctx.stop.is_cancelled() {
        let ready = ctx.stats.ready.load(Relaxed);
        if !ctx.common.quiet {
            eprintln!(
                "starling-bench: {ready}/{launched} clients ready in {:.3}s",
                ctx.stats.elapsed().as_secs_f64()
            );
        }
        if let Some(path) = &ctx.common.ready_file {
            std::fs::write(path, format!("{ready}\n"))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        ctx.start.cancel();
        if let Some(hold) = plan.hold {
            tokio::spawn(stop_after(ctx.clone(), hold, "hold"));
        }
    }

    loop {
        tokio::select! {
            joined = tasks.join_next() => if joined.is_none() { break },
            () = ctx.stop.cancelled() => break,
        }
    }
    if ctx.stop.is_cancelled() {
        let drained =
            tokio::time::timeout(GRACE, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tasks.abort_all();
        }
    } else {
        ctx.request_stop(match plan.mode {
            Mode::Pub => "limit",
            _ => "clients_gone",
        });
    }
    let _ = reporter.await;

    let snapshot = ctx.stats.snapshot();
    if !ctx.common.quiet {
        eprintln!(
            "{}",
            progress::line(
                ctx.mode,
                u64::from(ctx.common.count),
                &Default::default(),
                &snapshot
            )
        );
    }
    let info = RunInfo {
        mode: ctx.mode.name(),
        transport: ctx.common.transport.name(),
        version: ctx.common.version,
        qos: plan.qos,
        clients: u64::from(ctx.common.count),
        expected: plan.expected,
        stopped_by: ctx.stop_reason(),
    };
    Ok(Summary::new(&info, &snapshot))
}

/// Spawns the clients, `--connrate` per second; returns how many.
async fn launch(ctx: &Arc<Ctx>, tasks: &mut JoinSet<()>) -> u32 {
    let common = &ctx.common;
    let mut pacer = (common.connrate > 0).then(|| {
        let mut interval =
            tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(common.connrate)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        interval
    });
    let mut launched = 0;
    for n in 0..common.count {
        if let Some(pacer) = &mut pacer {
            tokio::select! {
                _ = pacer.tick() => {}
                () = ctx.stop.cancelled() => break,
            }
        } else if ctx.stop.is_cancelled() {
            break;
        }
        tasks.spawn(client::run(
            ctx.clone(),
            common.start_number.wrapping_add(n),
        ));
        launched += 1;
    }
    launched
}

/// Waits until every launched client is connected or has failed.
async fn wait_settled(ctx: &Ctx, launched: u32) {
    // Set before the first look at the count: a client settling after it
    // sees the target and notifies (a notification with nobody waiting is
    // kept for the next `notified`).
    ctx.settle_target.store(u64::from(launched), SeqCst);
    while ctx.stats.settled.load(SeqCst) < u64::from(launched) {
        tokio::select! {
            () = ctx.settled.notified() => {}
            () = ctx.stop.cancelled() => return,
        }
    }
}

async fn stop_after(ctx: Arc<Ctx>, after: Duration, reason: &'static str) {
    tokio::select! {
        () = tokio::time::sleep(after) => ctx.request_stop(reason),
        () = ctx.stop.cancelled() => {}
    }
}

async fn stop_on_signal(ctx: Arc<Ctx>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => ctx.request_stop("signal"),
            _ = term.recv() => ctx.request_stop("signal"),
            () = ctx.stop.cancelled() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::select! {
        _ = tokio::signal::ctrl_c() => ctx.request_stop("signal"),
        () = ctx.stop.cancelled() => {}
    }
}
