//! The connection tracker, driven as the agent drives it from the probes'
//! events, by a program the fuzzer writes: connections opened, fed,
//! closed and reused on four keys in two processes, syscall bytes and TLS
//! plaintext in any order, with canned first messages of every protocol
//! the tracker detects (so the fuzzer reaches each one's states), sweeps,
//! lost events, runtimes, event-loop callbacks, Go events and chosen ids.
//!
//! Checked after every step: no panic, the connection table within its
//! limit, every span's time the right way round and within the times it
//! was fed, its process one that was fed, its name and attributes bounded,
//! and evictions and deepenings only of connections fed; after a stop, no
//! connection left.

#![no_main]

use std::{net::SocketAddr, sync::Arc, sync::OnceLock};

use libfuzzer_sys::fuzz_target;
use zerospan::fuzzing::{
    Chosen, ConnKey, GoAct, Limits, Options, Origin, Record, Runtime, SqlOptions, Stats, Task,
    Tracker, Value,
};
use zerospan_common::origin;
use zerospan_protocols::stream::{Segment, Stamp};

const LIMITS: Limits = Limits {
    max_connections: 3,
    request_timeout_ns: 5_000,
    idle_timeout_ns: 50_000,
    sql: SqlOptions {
        sanitize: true,
        user: true,
    },
};

/// Four connections: the fourth reuses the first one's fd in a new
/// connection, as a process does after a close the agent may not see.
const KEYS: [ConnKey; 4] = [
    ConnKey {
        tgid: 1,
        fd: 3,
        conn_id: 1,
    },
    ConnKey {
        tgid: 1,
        fd: 4,
        conn_id: 2,
    },
    ConnKey {
        tgid: 2,
        fd: 3,
        conn_id: 3,
    },
    ConnKey {
        tgid: 1,
        fd: 3,
        conn_id: 4,
    },
];

/// Most attributes a span may carry, and the longest text of any: bounds
/// the fuzzer checks (the longest kept today is a query's text).
const MAX_ATTRIBUTES: usize = 64;
const MAX_TEXT: usize = 64 * 1024;

/// The bytes the fuzzer writes, read as a program.
struct Program<'a>(&'a [u8]);

impl<'a> Program<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// A length: one byte, or two more when it is 255.
    fn len(&mut self) -> usize {
        match self.byte().unwrap_or(0) {
            255 => {
                let b = self.bytes(2);
                usize::from(b.first().copied().unwrap_or(0)) << 8
                    | usize::from(b.get(1).copied().unwrap_or(0))
            }
            n => usize::from(n),
        }
    }
}

/// The first messages of every protocol the tracker tells apart, in both
/// directions, and TLS records where they are expected.
fn canned() -> &'static [Vec<u8>] {
    static CANNED: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CANNED.get_or_init(|| {
        let h2_frame = |kind: u8, flags: u8, stream: u8, payload: &[u8]| {
            let mut f = vec![0, 0, payload.len() as u8, kind, flags, 0, 0, 0, stream];
            f.extend_from_slice(payload);
            f
        };
        let pg = |tag: u8, body: &[u8]| {
            let mut m = vec![tag];
            m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
            m.extend_from_slice(body);
            m
        };
        let mysql = |seq: u8, payload: &[u8]| {
            let n = payload.len() as u32;
            let mut p = vec![n as u8, (n >> 8) as u8, (n >> 16) as u8, seq];
            p.extend_from_slice(payload);
            p
        };
        let mut greeting = vec![0x0a];
        greeting.extend_from_slice(b"8.0.36\0");
        greeting.extend_from_slice(&[1, 0, 0, 0]);
        greeting.extend_from_slice(b"abcdefgh\0");
        greeting.extend_from_slice(&[0xff, 0xf7, 0x21, 0x02, 0x00, 0xff, 0xdf, 21]);
        greeting.extend_from_slice(&[0; 10]);
        greeting.extend_from_slice(b"ijklmnopqrst\0mysql_native_password\0");
        let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        preface.extend(h2_frame(4, 0, 0, &[0, 1, 0, 0, 0x10, 0]));
        // A ServerHello naming TLS 1.3 in supported_versions.
        let mut hello = vec![3, 3];
        hello.extend_from_slice(&[0; 32]);
        hello.extend_from_slice(&[0, 0x13, 0x01, 0, 0, 6, 0, 0x2b, 0, 2, 3, 4]);
        let mut handshake = vec![2, 0, 0, hello.len() as u8];
        handshake.extend(hello);
        let mut server_hello = vec![22, 3, 3, 0, handshake.len() as u8];
        server_hello.extend(handshake);
        // A MySQL login with a user, a database and the auth plugin.
        let mut login = vec![0x8d, 0xa6, 0xff, 0x01, 0, 0, 0, 1, 0x21];
        login.extend_from_slice(&[0; 23]);
        login.extend_from_slice(b"u\0\0d\0mysql_native_password\0");
        let mut startup = 196608u32.to_be_bytes().to_vec();
        startup.extend_from_slice(b"user\0u\0database\0d\0\0");
        let mut startup_msg = (startup.len() as u32 + 4).to_be_bytes().to_vec();
        startup_msg.extend(startup);
        vec![
            b"GET /a?q=1 HTTP/1.1\r\nHost: h\r\nCookie: c=1\r\n\r\n".to_vec(),
            b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                .to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n".to_vec(),
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".to_vec(),
            preface,
            // GET http://h/ on stream 1, then :status 200, both ending it.
            h2_frame(1, 5, 1, &[0x82, 0x86, 0x84, 0x41, 0x01, b'h']),
            h2_frame(1, 5, 1, &[0x88]),
            // A gRPC call: POST, content-type application/grpc, a message.
            h2_frame(1, 4, 3, &[0x83, 0x86, 0x44, 0x03, b'/', b's', b'/', 0x5f, 0x10, b'a', b'p', b'p', b'l', b'i', b'c', b'a', b't', b'i', b'o', b'n', b'/', b'g', b'r', b'p', b'c']),
            h2_frame(0, 1, 3, &[0, 0, 0, 0, 0]),
            h2_frame(1, 5, 3, &[0x88, 0x40, 0x0b, b'g', b'r', b'p', b'c', b'-', b's', b't', b'a', b't', b'u', b's', 0x01, b'0']),
            h2_frame(3, 0, 1, &[0, 0, 0, 8]),
            // A server's first frame: SETTINGS.
            h2_frame(4, 0, 0, &[]),
            h2_frame(7, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]),
            startup_msg,
            vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f],
            b"S".to_vec(),
            b"N".to_vec(),
            pg(b'R', &[0, 0, 0, 0]),
            pg(b'Z', b"I"),
            pg(b'Q', b"SELECT name FROM t WHERE id = 42\0"),
            pg(b'P', b"s1\0SELECT $1\0\0\0"),
            pg(b'B', b"\0s1\0\0\0\0\x01\0\0\0\x017\0\0"),
            pg(b'E', b"\0\0\0\0\0"),
            pg(b'S', b""),
            pg(b'C', b"SELECT 1\0"),
            pg(b'E', b"SERROR\0C42P01\0Mno such table\0\0"),
            mysql(0, &greeting),
            mysql(1, &login),
            mysql(2, &[0, 0, 0, 2, 0, 0, 0]),
            mysql(0, b"\x03SELECT * FROM t WHERE a = 'x'"),
            mysql(1, &[0xff, 0x7a, 0x04, b'#', b'4', b'2', b'S', b'0', b'2', b'n', b'o']),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec(),
            b"$1\r\nv\r\n+OK\r\n-ERR wrong\r\n".to_vec(),
            b"get k\r\n".to_vec(),
            b"VALUE k 0 1\r\nv\r\nEND\r\n".to_vec(),
            // A ClientHello's record header, and a ServerHello.
            vec![22, 3, 1, 0, 4, 1, 0, 0, 0],
            server_hello,
        ]
    })
}

/// What the fuzzer may not make the tracker do.
fn check(t: &mut Tracker, fed_from: u64, now: u64) {
    assert!(
        t.connections() <= LIMITS.max_connections,
        "the table keeps its limit"
    );
    for r in t.drain() {
        check_record(&r, fed_from, now);
    }
    for key in t.take_evictions() {
        assert!(KEYS.contains(&key), "an eviction names a connection fed");
    }
    for (key, _) in t.take_deepened() {
        assert!(KEYS.contains(&key), "a deepening names a connection fed");
    }
}

fn check_record(r: &Record, fed_from: u64, now: u64) {
    assert!(r.start_ns <= r.end_ns, "a span ends after it starts: {r:?}");
    assert!(
        fed_from <= r.start_ns && r.end_ns <= now,
        "a span's times are times the tracker was given: {r:?}"
    );
    assert!(
        KEYS.iter().any(|k| k.tgid == r.tgid),
        "a span's process is one fed"
    );
    assert!(
        r.attributes.len() <= MAX_ATTRIBUTES,
        "attributes are bounded"
    );
    assert!(r.name.len() <= MAX_TEXT, "the name is bounded");
    for (key, value) in &r.attributes {
        if let Value::Str(text) = value {
            assert!(text.len() <= MAX_TEXT, "{key} is bounded");
        }
    }
}

/// A loopback address the fuzzer picks.
fn addr(b: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1 + (b >> 6)], 8000 + u16::from(b >> 1)))
}

/// An address, or none when the low bit is clear.
fn address(b: u8) -> Option<SocketAddr> {
    (b & 1 == 1).then(|| addr(b))
}

fuzz_target!(|data: &[u8]| {
    let mut t = Tracker::new(
        LIMITS,
        Arc::new(Options::default()),
        Arc::new(Stats::default()),
    );
    let mut program = Program(data);
    // Time starts past the timeouts, so a sweep's cutoff is a time the
    // tracker could have been given.
    let start = 1_000_000u64;
    let mut now = start;
    while let Some(op) = program.byte() {
        let arg = program.byte().unwrap_or(0);
        let key = KEYS[usize::from(arg & 3)];
        let egress = arg & 4 == 4;
        let task = Task {
            tid: key.tgid * 10 + u32::from(arg >> 6),
            // Two goroutines per thread, as many as the Go events' objects.
            goroutine: if arg & 0x20 == 0x20 {
                0xc000_0000 + u64::from(arg >> 6 & 1)
            } else {
                0
            },
        };
        now += 1 + u64::from(arg >> 3 & 3) * 1_000;
        match op % 16 {
            0 => {
                let how = [origin::ACCEPTED, origin::CONNECTED, origin::PREEXISTING]
                    [usize::from(op >> 4) % 3];
                let local = address(program.byte().unwrap_or(0));
                t.open(key, how, address(arg >> 2), local, now);
            }
            1 | 2 | 3 => {
                let bytes = if op % 16 == 3 {
                    let canned = canned();
                    let pick = program.byte().unwrap_or(0);
                    &canned[usize::from(pick) % canned.len()][..]
                } else {
                    let n = program.len();
                    program.bytes(n.min(zerospan_common::MAX_CAPTURE))
                };
                // Some syscalls move more than the probes copy.
                let unseen = if op & 0x10 == 0x10 && op % 16 != 3 {
                    u64::from(arg) * 7
                } else {
                    0
                };
                let seg = Segment {
                    bytes,
                    len: bytes.len() as u64 + unseen,
                    stamp: Stamp {
                        enter_ns: now,
                        exit_ns: now + 1,
                    },
                };
                now += 1;
                if op % 16 == 2 || (op % 16 == 3 && op & 0x80 == 0x80) {
                    t.plaintext(key, task, egress, seg);
                } else {
                    t.data(key, task, egress, seg);
                }
            }
            4 => t.close(key),
            5 => {
                now += u64::from(op >> 4) * 4_000;
                t.sweep(now);
            }
            6 => t.events_lost(),
            7 => t.process_exited(key.tgid),
            8 => {
                let runtime = Runtime {
                    go: op & 0x10 == 0x10,
                    event_loop: op & 0x20 == 0x20,
                };
                if op & 0x40 == 0x40 {
                    t.exec(key.tgid, runtime);
                } else {
                    t.set_runtime(key.tgid, runtime);
                }
            }
            9 => t.read_callback(key.tgid, task.tid, (op & 0x10 == 0x10).then_some(key)),
            10 => t.connected(task.tid, key),
            11 => {
                let act =
                    [GoAct::Spawn, GoAct::RoundTrip, GoAct::WriteLoop][usize::from(op >> 4) % 3];
                t.go_event(
                    key.tgid,
                    (task, now),
                    act,
                    0xc000_0000 + u64::from(op >> 6 & 1),
                );
            }
            12 if op & 0x10 == 0x10 => t.local_known(key.tgid, key.fd, addr(arg)),
            12 => t.peer_known(key, addr(arg), 8000 + u16::from(op >> 5)),
            13 => {
                let id = program.bytes(2);
                let b = |i: usize| id.get(i).copied().unwrap_or(1);
                t.chosen(
                    key,
                    egress,
                    Chosen {
                        trace_id: [b(0); 16],
                        span_id: [b(1); 8],
                        parent_id: [if op & 0x10 == 0x10 { b(0) } else { 0 }; 8],
                        sampled: op & 0x20 == 0x20,
                        origin: [Origin::New, Origin::Header, Origin::Thread]
                            [usize::from(op >> 6) % 3],
                        at_ns: now,
                    },
                );
            }
            14 => {
                let _ = t.runtime(key.tgid);
            }
            _ => t.close_all(),
        }
        check(&mut t, start, now + 1);
    }
    t.close_all();
    check(&mut t, start, now + 1);
    assert_eq!(t.connections(), 0, "a stop forgets every connection");
});
