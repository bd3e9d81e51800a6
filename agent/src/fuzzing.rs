//! What the fuzz targets (fuzz/) drive: the connection tracker, fed as the
//! agent feeds it, and the decoder of the probes' ring-buffer records.
//! Not an API: it names what the targets need and nothing more.

pub use crate::conn::{
    db::SqlOptions,
    tracker::{Limits, Tracker},
};
pub use crate::exchange::{ConnKey, Task};
pub use crate::kernel::events::{decode, Chosen, Event, GoAct, Origin};
pub use crate::kernel::Runtime;
pub use crate::spans::{http::Options, Record, Value};
pub use crate::stats::Stats;
