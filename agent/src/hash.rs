//! The maps on the event path, hashed with foldhash (seeded per process)
//! instead of std's SipHash. Their keys are the agent's own values (pids,
//! fds, connection keys, metric labels), and SipHash was the largest
//! single item of the agent's CPU under load (7 % of its samples, more
//! in `hash_one` and `hash_slice`; perf on `cargo xtask bench http`).
//! foldhash is already in the build (through hashbrown): no new crate.

pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type Set<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
