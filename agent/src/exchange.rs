//! What every stage says about a connection and its exchanges: which
//! connection ([`ConnKey`]), who moved its bytes ([`Task`]), which side
//! the traced process is on ([`Role`]), where it travelled
//! ([`Endpoints`]), how an exchange ended ([`Outcome`]) and what a
//! database answered ([`ReplyStatus`]).
//!
//! It imports nothing of the agent, so the kernel's events, the
//! connection tracker, the linker and span building can all use it
//! without depending on one another.

use std::net::SocketAddr;

/// Identifies one connection: fd numbers are reused, `conn_id` is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: i32,
    pub conn_id: u64,
}

impl ConnKey {
    /// The top bit of the ids of sockets the agent seeded from `/proc` (they
    /// predate it); the probes' ids are the boot-time ns the connection
    /// opened at, which never reach it.
    pub const SEEDED: u64 = 1 << 63;

    /// When the connection opened, if known: not for a seeded socket.
    pub fn opened_ns(&self) -> Option<u64> {
        (self.conn_id & Self::SEEDED == 0).then_some(self.conn_id)
    }
}

/// Who made an event happen: a thread, and in a Go program the goroutine
/// running on it, when the probes know it (0 when not).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Task {
    pub tid: u32,
    pub goroutine: u64,
}

impl Task {
    /// A thread of a program that is not Go (or whose goroutine is not
    /// known).
    #[cfg(test)]
    pub const fn thread(tid: u32) -> Task {
        Task { tid, goroutine: 0 }
    }
}

/// Which side of the exchange the traced process is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// How an exchange ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    /// No response within the request timeout.
    TimedOut,
    /// The connection closed before a response.
    Closed,
    /// Still waiting for its response when the agent stopped.
    AgentStopped,
    /// The response may have been in bytes the agent could not frame
    /// (see `http1`); rather than guess, the exchange ends unanswered.
    ResponseLost,
}

/// The addresses of the connection the exchange travelled on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Endpoints {
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    /// The connection is TLS (its plaintext came from the TLS library).
    pub tls: bool,
    /// The TLS version the server chose, read from its ServerHello.
    pub tls_version: Option<&'static str>,
}

/// What a database or cache answered a call, as much as spans need: the
/// same for every database protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyStatus {
    Ok,
    /// Its error code: PostgreSQL's SQLSTATE, MySQL's error number,
    /// Redis's first word (`WRONGTYPE`), memcached's error line.
    Error(String),
}
