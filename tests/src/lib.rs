//! Harness for zerospan's integration tests.
//!
//! The tests run the real agent binary, as root, against real servers and
//! clients, and read what it exports from a real OTLP receiver built on
//! `opentelemetry-proto`'s generated tonic service.

pub mod collector;
pub mod deploy;
pub mod golang;
pub mod mariadb;
pub mod pki;
pub mod postgres;
pub mod procs;

pub use collector::{assert_child, hex, Collector, FlatSpan};
pub use mariadb::Mariadb;
pub use postgres::Postgres;
pub use procs::{
    curl, curl_user_agent, require_root, Agent, Cgroup, Fixture, Nginx, RedisServer, TempDir,
};

/// The line of a `zerospan doctor` report for `check`.
pub fn doctor_line<'a>(report: &'a str, check: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(check))
        .unwrap_or_else(|| panic!("no {check:?} line in:\n{report}"))
}
