//! Decoding ring-buffer records into typed events.
//!
//! Records come from our own probes, but a version skew or a kernel quirk
//! must never crash the agent, so every read is bounds-checked and a record
//! that does not fit is reported as an error, not trusted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::exchange::{ConnKey, Task};

use zerospan_common::{
    context_origin, kind, ConnEvent, ContextEvent, DataEvent, EventHeader, GoEvent, OwnerEvent,
    ProcEvent, MAX_CAPTURE,
};

/// Who moved an event's bytes: its thread, and in Go its goroutine.
fn task_of(h: &EventHeader) -> Task {
    Task {
        tid: h.tid,
        goroutine: h.goroutine,
    }
}

/// What a Go program's runtime or `net/http` did (see [`Event::Go`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoAct {
    /// The goroutine started goroutine `object`.
    Spawn,
    /// The goroutine asked for a request on `*persistConn` `object`.
    RoundTrip,
    /// The goroutine writes `*persistConn` `object`'s requests.
    WriteLoop,
}

#[derive(Debug)]
pub enum Event<'a> {
    Data {
        key: ConnKey,
        task: Task,
        egress: bool,
        /// Plaintext from a TLS library's probes, not a syscall's bytes.
        tls: bool,
        enter_ns: u64,
        exit_ns: u64,
        len: u64,
        bytes: &'a [u8],
    },
    /// A TLS library write sent before its socket was known (see
    /// `conn::unowned`): a memory-buffer library object `ssl` of `tgid`.
    Unowned {
        tgid: u32,
        ssl: u64,
        task: Task,
        enter_ns: u64,
        exit_ns: u64,
        len: u64,
        bytes: &'a [u8],
    },
    /// The earlier writes of library object `ssl` were `key`'s.
    TlsOwner {
        key: ConnKey,
        ssl: u64,
    },
    ConnOpen {
        key: ConnKey,
        /// The thread that accepted or connected it.
        tid: u32,
        origin: u8,
        peer: Option<SocketAddr>,
        listen_fd: i32,
        at_ns: u64,
    },
    ConnClose {
        key: ConnKey,
    },
    /// Thread `tid` of a Node.js process starts the callback of a read on
    /// `key`.
    LoopEnter {
        key: ConnKey,
        tid: u32,
    },
    /// Thread `tid`'s read callback returned.
    LoopExit {
        tgid: u32,
        tid: u32,
    },
    /// The peer of accepted connection `key`, learnt in its first read.
    ConnPeer {
        key: ConnKey,
        peer: Option<SocketAddr>,
        /// The local port of the socket the probes read it from.
        local_port: u16,
    },
    /// The local address of `(tgid, fd)`'s outgoing connection.
    ConnLocal {
        tgid: u32,
        fd: i32,
        local: Option<SocketAddr>,
    },
    Fork {
        parent: u32,
        child: u32,
        comm: String,
    },
    /// An untraced process exec'd (discovery by selectors).
    ExecSeen {
        pid: u32,
    },
    Exec {
        pid: u32,
        comm: String,
    },
    Exit {
        pid: u32,
    },
    /// Ids the probes chose for a request (see [`Chosen`]).
    Context {
        key: ConnKey,
        egress: bool,
        chosen: Chosen,
    },
    /// Goroutine `task.goroutine` of Go process `tgid` did `act`, at
    /// `at_ns`.
    Go {
        tgid: u32,
        task: Task,
        act: GoAct,
        object: u64,
        at_ns: u64,
    },
}

/// The trace context the probes gave a request: for an outgoing request,
/// the `traceparent` they wrote into it; for a server request, the ids
/// they handed to the calls its thread makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chosen {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zero for a root.
    pub parent_id: [u8; 8],
    pub sampled: bool,
    pub origin: Origin,
    /// When it was chosen: inside the write of an outgoing request; the
    /// exit time of the read that holds a server request's head.
    pub at_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A new trace.
    New,
    /// The request's own valid `traceparent`.
    Header,
    /// The server request the writing thread was serving.
    Thread,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
    #[error("data record claims {claimed} captured bytes but carries {carried}")]
    BadCapture { claimed: usize, carried: usize },
}

fn read<T: Copy>(buf: &[u8]) -> Result<T, DecodeError> {
    if buf.len() < size_of::<T>() {
        return Err(DecodeError::Short(buf.len()));
    }
    // SAFETY: length checked above; T is a plain `#[repr(C)]` record and
    // read_unaligned copes with the ring buffer's 8-byte alignment.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn socket_addr(family: u16, port: u16, addr: &[u8; 16]) -> Option<SocketAddr> {
    let ip = match family {
        2 => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        10 => {
            let v6 = Ipv6Addr::from(*addr);
            // Dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d.
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

pub fn decode(buf: &[u8]) -> Result<Event<'_>, DecodeError> {
    let h: EventHeader = read(buf)?;
    let key = ConnKey {
        tgid: h.tgid,
        fd: h.fd,
        conn_id: h.conn_id,
    };
    Ok(match h.kind {
        kind::DATA => {
            if buf.len() < DataEvent::HEADER_SIZE {
                return Err(DecodeError::Short(buf.len()));
            }
            let at = std::mem::offset_of!(DataEvent, len);
            let len = u64::from_ne_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
            let at = std::mem::offset_of!(DataEvent, captured);
            let captured =
                u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
            let carried = buf.len() - DataEvent::HEADER_SIZE;
            if captured > carried || captured > MAX_CAPTURE || captured as u64 > len {
                return Err(DecodeError::BadCapture {
                    claimed: captured,
                    carried,
                });
            }
            let bytes = &buf[DataEvent::HEADER_SIZE..DataEvent::HEADER_SIZE + captured];
            // Only writes are sent before their socket is known.
            if h.fd == -1
                && h.source == zerospan_common::source::TLS
                && h.direction == zerospan_common::direction::EGRESS
            {
                return Ok(Event::Unowned {
                    tgid: h.tgid,
                    ssl: h.conn_id,
                    task: task_of(&h),
                    enter_ns: h.ts_enter_ns,
                    exit_ns: h.ts_exit_ns,
                    len,
                    bytes,
                });
            }
            Event::Data {
                key,
                task: task_of(&h),
                egress: h.direction == zerospan_common::direction::EGRESS,
                tls: h.source == zerospan_common::source::TLS,
                enter_ns: h.ts_enter_ns,
                exit_ns: h.ts_exit_ns,
                len,
                bytes,
            }
        }
        kind::TLS_OWNER => {
            let o: OwnerEvent = read(buf)?;
            Event::TlsOwner { key, ssl: o.ssl }
        }
        kind::CONN_OPEN => {
            let c: ConnEvent = read(buf)?;
            Event::ConnOpen {
                key,
                tid: h.tid,
                origin: c.origin,
                peer: socket_addr(c.family, c.peer_port, &c.peer_addr),
                listen_fd: c.listen_fd,
                at_ns: h.ts_exit_ns,
            }
        }
        kind::CONN_CLOSE => Event::ConnClose { key },
        kind::LOOP_ENTER => Event::LoopEnter { key, tid: h.tid },
        kind::LOOP_EXIT => Event::LoopExit {
            tgid: h.tgid,
            tid: h.tid,
        },
        kind::CONN_LOCAL => {
            let c: ConnEvent = read(buf)?;
            Event::ConnLocal {
                tgid: h.tgid,
                fd: h.fd,
                local: socket_addr(c.family, c.peer_port, &c.peer_addr),
            }
        }
        kind::CONN_PEER => {
            let c: ConnEvent = read(buf)?;
            Event::ConnPeer {
                key,
                peer: socket_addr(c.family, c.peer_port, &c.peer_addr),
                local_port: c.listen_fd as u16,
            }
        }
        kind::EXEC_SEEN => Event::ExecSeen { pid: h.tgid },
        kind::CONTEXT => {
            let c: ContextEvent = read(buf)?;
            Event::Context {
                key,
                egress: h.direction == zerospan_common::direction::EGRESS,
                chosen: Chosen {
                    trace_id: c.trace_id,
                    span_id: c.span_id,
                    parent_id: c.parent_id,
                    sampled: c.sampled & 1 == 1,
                    origin: match c.origin {
                        context_origin::HEADER => Origin::Header,
                        context_origin::THREAD => Origin::Thread,
                        _ => Origin::New,
                    },
                    at_ns: h.ts_exit_ns,
                },
            }
        }
        kind::PROC_FORK | kind::PROC_EXEC | kind::PROC_EXIT => {
            let p: ProcEvent = read(buf)?;
            match h.kind {
                kind::PROC_FORK => Event::Fork {
                    parent: h.tgid,
                    child: p.pid,
                    comm: comm(&p.comm),
                },
                kind::PROC_EXEC => Event::Exec {
                    pid: h.tgid,
                    comm: comm(&p.comm),
                },
                _ => Event::Exit { pid: h.tgid },
            }
        }
        kind::GO_SPAWN | kind::GO_ROUND_TRIP | kind::GO_WRITE_LOOP => {
            let g: GoEvent = read(buf)?;
            Event::Go {
                tgid: h.tgid,
                task: task_of(&h),
                act: match h.kind {
                    kind::GO_SPAWN => GoAct::Spawn,
                    kind::GO_ROUND_TRIP => GoAct::RoundTrip,
                    _ => GoAct::WriteLoop,
                },
                object: g.object,
                at_ns: h.ts_exit_ns,
            }
        }
        other => return Err(DecodeError::UnknownKind(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerospan_common::direction;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a plain record.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn header_layout_matches_the_probes() {
        assert_eq!(size_of::<EventHeader>(), 48);
        assert_eq!(DataEvent::HEADER_SIZE, 64);
        assert_eq!(
            std::mem::offset_of!(DataEvent, data),
            DataEvent::HEADER_SIZE
        );
    }

    #[test]
    fn decodes_a_data_record_with_its_captured_prefix() {
        let mut ev = DataEvent {
            header: EventHeader {
                kind: kind::DATA,
                direction: direction::EGRESS,
                tgid: 7,
                tid: 8,
                fd: 3,
                conn_id: 99,
                ts_enter_ns: 10,
                ts_exit_ns: 20,
                ..Default::default()
            },
            len: 1000,
            captured: 5,
            _pad: 0,
            data: [0; MAX_CAPTURE],
        };
        ev.data[..5].copy_from_slice(b"hello");
        let raw = bytes_of(&ev);
        let raw = &raw[..DataEvent::HEADER_SIZE + 5];
        match decode(raw).unwrap() {
            Event::Data {
                key,
                egress,
                len,
                bytes,
                ..
            } => {
                assert_eq!(
                    key,
                    ConnKey {
                        tgid: 7,
                        fd: 3,
                        conn_id: 99
                    }
                );
                assert!(egress);
                assert_eq!(len, 1000);
                assert_eq!(bytes, b"hello");
            }
            other => panic!("{other:?}"),
        }
        // Claiming more captured bytes than the record carries is refused.
        assert!(matches!(
            decode(&raw[..raw.len() - 1]),
            Err(DecodeError::BadCapture { .. })
        ));
    }

    #[test]
    fn a_tls_write_with_no_socket_and_its_owner() {
        let mut ev = DataEvent {
            header: EventHeader {
                kind: kind::DATA,
                direction: direction::EGRESS,
                source: zerospan_common::source::TLS,
                tgid: 7,
                tid: 8,
                fd: -1,
                conn_id: 0xdead,
                ts_enter_ns: 10,
                ts_exit_ns: 20,
                ..Default::default()
            },
            len: 24,
            captured: 3,
            _pad: 0,
            data: [0; MAX_CAPTURE],
        };
        ev.data[..3].copy_from_slice(b"PRI");
        let raw = bytes_of(&ev);
        match decode(&raw[..DataEvent::HEADER_SIZE + 3]).unwrap() {
            Event::Unowned {
                tgid: 7,
                ssl: 0xdead,
                task:
                    Task {
                        tid: 8,
                        goroutine: 0,
                    },
                enter_ns: 10,
                exit_ns: 20,
                len: 24,
                bytes: b"PRI",
            } => {}
            other => panic!("{other:?}"),
        }
        let owner = OwnerEvent {
            header: EventHeader {
                kind: kind::TLS_OWNER,
                tgid: 7,
                fd: 5,
                conn_id: 42,
                ..Default::default()
            },
            ssl: 0xdead,
        };
        match decode(&bytes_of(&owner)).unwrap() {
            Event::TlsOwner { key, ssl: 0xdead } => assert_eq!(
                key,
                ConnKey {
                    tgid: 7,
                    fd: 5,
                    conn_id: 42
                }
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn go_events_name_their_goroutines() {
        let spawn = GoEvent {
            header: EventHeader {
                kind: kind::GO_SPAWN,
                tgid: 7,
                tid: 8,
                goroutine: 0xc000_0010,
                ..Default::default()
            },
            object: 0xc000_0020,
        };
        match decode(&bytes_of(&spawn)).unwrap() {
            Event::Go {
                tgid: 7,
                task,
                act: GoAct::Spawn,
                object: 0xc000_0020,
                ..
            } => assert_eq!(
                task,
                Task {
                    tid: 8,
                    goroutine: 0xc000_0010
                }
            ),
            other => panic!("{other:?}"),
        }
        let mut ev = DataEvent {
            header: EventHeader {
                kind: kind::DATA,
                tgid: 7,
                tid: 8,
                fd: 3,
                goroutine: 0xc000_0030,
                ..Default::default()
            },
            len: 2,
            captured: 2,
            _pad: 0,
            data: [0; MAX_CAPTURE],
        };
        ev.data[..2].copy_from_slice(b"hi");
        let raw = bytes_of(&ev);
        match decode(&raw[..DataEvent::HEADER_SIZE + 2]).unwrap() {
            Event::Data { task, bytes, .. } => {
                assert_eq!(task.goroutine, 0xc000_0030);
                assert_eq!(bytes, b"hi");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_accepted_sockets_peer_learnt_later() {
        let ev = ConnEvent {
            header: EventHeader {
                kind: kind::CONN_PEER,
                tgid: 7,
                fd: 5,
                conn_id: 42,
                ..Default::default()
            },
            family: 2,
            peer_port: 51000,
            listen_fd: 8080,
            peer_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ..Default::default()
        };
        match decode(&bytes_of(&ev)).unwrap() {
            Event::ConnPeer {
                key,
                peer,
                local_port: 8080,
            } => {
                assert_eq!((key.tgid, key.fd, key.conn_id), (7, 5, 42));
                assert_eq!(peer, Some("127.0.0.1:51000".parse().unwrap()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert_eq!(decode(&[1, 2, 3]).unwrap_err(), DecodeError::Short(3));
        let h = EventHeader {
            kind: 77,
            ..Default::default()
        };
        assert_eq!(
            decode(&bytes_of(&h)).unwrap_err(),
            DecodeError::UnknownKind(77)
        );
    }

    #[test]
    fn v4_mapped_peers_read_as_ipv4() {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(
            socket_addr(10, 80, &addr),
            Some("127.0.0.1:80".parse().unwrap())
        );
        let mut one = [0u8; 16];
        one[15] = 1;
        assert_eq!(socket_addr(10, 80, &one), Some("[::1]:80".parse().unwrap()));
    }
}
