//! Connections: the table that routes each segment to its protocol
//! ([`tracker`]), the table that recognises each protocol ([`detect`]),
//! the one seam every protocol implements ([`protocol`]), and one module
//! per protocol's connection.
//!
//! No I/O anywhere here: segments come in from the kernel's events,
//! span context from the linker, and finished exchanges leave as neutral
//! [`Record`](crate::spans::Record)s. The types other stages share about a
//! connection (its key, role, endpoints, outcome) are in
//! [`exchange`](crate::exchange), so that they need not depend on this.

pub mod db;
pub mod detect;
pub mod h2;
pub mod http1;
pub mod mysql;
pub mod postgres;
pub mod protocol;
#[cfg(test)]
mod replay;
pub mod tracker;
pub mod unowned;
