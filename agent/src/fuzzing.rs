//! What the fuzz targets (fuzz/) drive: the connection tracker, fed as the
//! agent feeds it, the decoder of the probes' ring-buffer records, and the
//! readers of Go executables.
//! Not an API: it names what the targets need and nothing more.

pub use crate::conn::{
    db::SqlOptions,
    tracker::{Limits, Tracker},
};
pub use crate::exchange::{ConnKey, Task};
pub use crate::kernel::events::{decode, Chosen, Event, GoAct, Origin};
pub use crate::kernel::golang::fuzz_readers as go_binary_readers;
pub use crate::kernel::Runtime;
pub use crate::spans::{http::Options, Record, Value};
pub use crate::stats::Stats;
