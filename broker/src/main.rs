//! `starling`: run one broker node.

use std::process::ExitCode;

use starling::config::cli::{self, Parsed};
use tracing_subscriber::EnvFilter;

/// jemalloc rather than the system allocator: it keeps objects of one size
/// class together and gives emptied pages back, so the memory of a burst
/// of connects (tasks, handshake buffers) is returned once those
/// connections park, instead of staying resident between the sessions'
/// long-lived allocations. See docs/adr/0002-idle-connections-park.md.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: pages emptied for a second go
/// back to the system (the default waits ten seconds and then keeps them
/// "muzzy", still counted as resident).
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 37] = b"dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    if std::env::args_os().nth(1).is_some_and(|a| a == "passwd") {
        args.nth(1);
        return match starling::auth::passwd_command::run(args) {
            Ok(done) => {
                eprintln!("{done}");
                ExitCode::SUCCESS
            }
            Err(starling::auth::passwd_command::PasswdError::Usage(error)) => error.exit(),
            Err(error) => {
                eprintln!("starling passwd: {error}");
                ExitCode::from(2)
            }
        };
    }
    let config = match cli::parse(std::env::args_os()) {
        Ok(config) => config,
        // --help, --version, or a command line clap refuses: clap prints
        // it and exits (2 for an error, 0 for help).
        Err(Parsed::Clap(error)) => error.exit(),
        Err(Parsed::Config(error)) => {
            eprintln!("starling: {error}");
            return ExitCode::from(2);
        }
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // Its worker threads let a subscriber's delivery go out before the
    // publisher's PUBACK (see `reply_order`).
    let runtime = match starling::reply_order::configure(&mut builder).build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("starling: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(starling::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        // A file the configuration names cannot be used: like a bad setting.
        Err(error @ starling::server::ServerError::Auth(_)) => {
            eprintln!("starling: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("starling: {error}");
            ExitCode::FAILURE
        }
    }
}
