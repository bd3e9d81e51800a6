//! `zerospan`: zero-code distributed tracing for Linux.
//!
//! The binary (`main.rs`) is [`cli`]; the library exists so the fuzz
//! targets (fuzz/) can drive the connection tracker as the agent does
//! ([`fuzzing`]). Nothing else is a public API.

// The probes recover syscall arguments from x86_64's saved registers
// (see ebpf/src/data.rs, `late_args`); other architectures need their own
// offsets first.
#[cfg(not(target_arch = "x86_64"))]
compile_error!("zerospan supports x86_64 only for now");

mod agent;
#[cfg(test)]
mod architecture;
mod clock;
mod config;
mod conn;
mod doctor;
mod exchange;
mod export;
#[doc(hidden)]
pub mod fuzzing;
mod hash;
mod host;
mod kernel;
mod linker;
mod logger;
mod metrics;
mod spans;
mod stats;
#[cfg(test)]
mod test_support;

use clap::{CommandFactory as _, FromArgMatches as _};

/// The `zerospan` command: its arguments, settings and environment, then
/// `doctor` or the agent.
pub fn cli() -> std::process::ExitCode {
    let matches = config::Args::command().get_matches();
    let mut args = match config::Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    if args.mode == Some(config::Mode::Doctor) {
        let ready = doctor::report(&doctor::run_checks());
        return if ready {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        };
    }
    let env = |k: &str| std::env::var(k).ok();
    if let Err(e) = config::settings::layer(&mut args, &matches, env) {
        eprintln!("zerospan: {e:#}");
        return std::process::ExitCode::from(2);
    }
    logger::init(args.log_level, args.verbose, args.log_format);
    let cfg = match config::Config::resolve(args, env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("zerospan: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    // One runtime, one thread: the event path is sequential by design, and
    // the exporters only wait on I/O.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("zerospan: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(agent::run(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zerospan: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
