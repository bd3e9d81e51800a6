//! zerospan's protocol parsers.
//!
//! Pure: bytes in, messages out, through callbacks. No I/O, no clocks, no
//! allocation without a bound, and no panics on any input, which the unit
//! tests (every split point, garbage) and the fuzz targets in `fuzz/` check.

pub mod h2;
pub mod http1;
mod lines;
pub mod memcache;
pub mod mysql;
pub mod postgres;
mod prefixed;
pub mod resp;
pub mod sql;
pub mod stream;
pub mod tls;
