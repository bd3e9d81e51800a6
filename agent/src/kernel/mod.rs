//! What the kernel tells the agent, and how the agent asks it: the eBPF
//! object's loading and attachment ([`probes`]), its ring-buffer records
//! decoded into typed events ([`events`]), uprobes on TLS libraries and
//! runtimes ([`tls_hooks`], found in files by [`openssl`] and [`golang`],
//! attached by [`uprobe`]), header injection's cgroup attachment
//! ([`propagation`]), and kernel struct offsets from BTF ([`btf`]).
//!
//! Nothing here knows a protocol, a span or a parent: the stages after it
//! import from here, never the other way round.

pub mod btf;
pub mod events;
pub mod golang;
pub mod openssl;
pub mod probes;
pub mod propagation;
pub mod tls_hooks;
pub mod uprobe;

/// How deeply the kernel should capture a connection, once the agent
/// recognised its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deepen {
    /// A database on a socket the probes did not see connect: its reads
    /// whole (responses), and its writes as requests.
    Database,
    /// HTTP/2: every header block in both directions.
    Http2,
}

/// What a traced process runs, for the rules that find parents in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Runtime {
    /// Go: goroutines move between threads.
    pub go: bool,
    /// Node.js, its read callbacks reported: its threads are event loops.
    pub event_loop: bool,
}
