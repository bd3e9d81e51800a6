//! Harness for zerospan's integration tests.
//!
//! The tests run the real agent binary, as root, against real servers and
//! clients, and read what it exports from a real OTLP receiver built on
//! `opentelemetry-proto`'s generated tonic service.

pub mod collector;
pub mod deploy;
pub mod mariadb;
pub mod postgres;
pub mod procs;

pub use collector::{assert_child, hex, Collector, FlatSpan};
pub use mariadb::Mariadb;
pub use postgres::Postgres;
pub use procs::{
    curl, curl_user_agent, require_root, Agent, Cgroup, Fixture, Nginx, RedisServer, TempDir,
};
