//! A counting OTLP receiver for `cargo xtask bench`: the agent exports to it
//! over gRPC as it would to a real collector.
//!
//! Prints `READY <grpc endpoint>`, then, when stdin closes or gets a line,
//! `SPANS <count>` and exits.

use std::io::BufRead as _;

fn main() {
    let collector = zerospan_tests::Collector::counting();
    println!("READY {}", collector.grpc_endpoint);
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    println!("SPANS {}", collector.span_count());
}
