//! zerospan's kernel side: syscall and sched tracepoints.
//!
//! The probes stay small on purpose. They filter by traced tgid, keep track of
//! which fds are sockets, copy a bounded prefix of every buffer moved on a
//! tracked socket, and hand everything to userspace through one ring buffer.
//! All protocol parsing happens in the agent, in safe Rust.
//!
//! One module per program family; `maps`, `helpers` and `emit` are what
//! they share, and no module imports one that imports it back.
#![no_std]
#![no_main]

mod data;
mod emit;
mod go_runtime;
mod go_tls;
mod h2_frames;
mod helpers;
mod maps;
mod node_loop;
mod propagate;
mod sched;
mod sniff;
mod sockets;
mod tcp_state;
mod tls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
