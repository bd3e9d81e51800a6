//! Connections: the table that routes each segment to its protocol
//! ([`tracker`]), the one seam every protocol implements ([`protocol`]),
//! and one module per protocol's connection.
//!
//! This file holds only the types every stage shares about a connection
//! and how its exchanges end; it imports nothing else of the agent, so
//! span building and the linker can use them without depending on the
//! tracker.

pub mod db;
pub mod h2;
pub mod http1;
pub mod mysql;
pub mod postgres;
pub mod protocol;
pub mod tracker;
pub mod unowned;

use std::net::SocketAddr;

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
