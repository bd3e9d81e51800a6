//! A counting OTLP receiver for `cargo xtask bench` and `soak`: the agent
//! exports to it over gRPC as it would to a real collector.
//!
//! `otlp-sink [PORT]` listens on PORT (default: any free one), prints
//! `READY <grpc endpoint>`, then `SPANS <count>` for each line on stdin,
//! and once more, exiting, when stdin closes.

use std::io::BufRead as _;

fn main() {
    let port = std::env::args()
        .nth(1)
        .map(|p| p.parse().expect("otlp-sink PORT"))
        .unwrap_or(0);
    let collector = zerospan_tests::Collector::counting_on(port);
    println!("READY {}", collector.grpc_endpoint);
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        println!("SPANS {}", collector.span_count());
    }
    println!("SPANS {}", collector.span_count());
}
