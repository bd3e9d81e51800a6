//! Pure protocol parsers: bytes in, messages out. No I/O, no clocks.

pub mod http1;
