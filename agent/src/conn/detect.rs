//! The detector table: how each protocol is recognised from a
//! connection's first bytes, in the one order they are tried, and what the
//! kernel must capture (or sniff itself) for it.
//!
//! The tracker asks only while a connection is still being detected;
//! once a protocol has it, no detector runs on its segments again.
//! Adding a protocol adds one entry to [`DETECTORS`].

use std::sync::Arc;

use zerospan_protocols::{http1, memcache, mysql, postgres, resp, stream::Segment};

use super::{
    db::{DbConn, SqlOptions},
    h2::{self, H2Conn},
    http1::HttpConn,
    mysql::MysqlConn,
    postgres::PgConn,
    protocol::Protocol,
};
use crate::{exchange::Role, kernel::Deepen, spans::http::Options};

/// How the agent met the connection, which bounds what it may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Met {
    /// The traced process accepted it: a server.
    Accepted,
    /// The traced process connected it: a client.
    Connected,
    /// Already open when the agent attached: either side, and possibly
    /// in the middle of its stream.
    Joined,
}

/// What a detector is shown: a connection's next segment while it is
/// still being detected.
pub struct Seen<'s> {
    pub met: Met,
    /// Written by the traced process (else read).
    pub egress: bool,
    pub bytes: &'s [u8],
    /// What the syscall moved, of which `bytes` were captured.
    pub len: u64,
}

impl Seen<'_> {
    /// The traced process's side, when the bytes alone must tell it (a
    /// joined connection): whoever writes a request is the client.
    fn role_by_direction(&self) -> Role {
        if self.egress {
            Role::Client
        } else {
            Role::Server
        }
    }
}

/// What the protocols' connections are built with.
pub struct Settings<'a> {
    pub http: &'a Arc<Options>,
    pub sql: SqlOptions,
}

/// A detector's answer.
pub enum Recognised {
    Yes(Box<dyn Protocol>),
    /// Maybe: these bytes alone cannot tell (a MySQL greeting's 4-byte
    /// header, read on its own). The tracker holds them and asks this
    /// detector, alone, again with the next segment appended.
    NeedMore,
    No,
}

/// A check the kernel makes itself on a connection's first buffer,
/// because the agent would see it too late (ebpf/src/sniff.rs). Nothing
/// reads it at run time: it says here what the kernel does for each
/// protocol, and a test holds ebpf/src/sniff.rs to it.
#[allow(dead_code)]
pub struct KernelSniff {
    /// The function in ebpf/src/sniff.rs.
    pub function: &'static str,
    /// Which buffer it looks at.
    pub on: &'static str,
}

/// One protocol's entry.
pub struct Detector {
    pub protocol: &'static str,
    /// The connections it may be tried on.
    pub met: &'static [Met],
    /// What the kernel must capture more deeply once it is recognised.
    pub deepen: Option<Deepen>,
    #[allow(dead_code)] // see KernelSniff
    pub kernel: Option<KernelSniff>,
    pub recognise: fn(&Seen<'_>, &Settings<'_>) -> Recognised,
}

const ANY: &[Met] = &[Met::Accepted, Met::Connected, Met::Joined];
/// Database clients: the agent traces the calls a process makes, not the
/// database servers it may run.
const CLIENTS: &[Met] = &[Met::Connected, Met::Joined];

/// Tried in this order; the first that says yes takes the connection.
/// HTTP/2 goes first (its preface is unlike anything else), the stores
/// and databases next, PostgreSQL before MySQL (a PostgreSQL message can
/// pass MySQL's looser check), and HTTP/1 last: on a connection the
/// traced process accepted or connected it takes whatever is left, and
/// its framer tells if the bytes are not HTTP.
pub static DETECTORS: &[Detector] = &[
    Detector {
        protocol: "http2",
        met: ANY,
        deepen: Some(Deepen::Http2),
        kernel: Some(KernelSniff {
            function: "is_h2_preface",
            on: "the first read of an accepted connection and the first write \
                 of an outgoing one (of writev/sendmsg, the first iovec entry; \
                 plain or TLS plaintext), from three octets",
        }),
        recognise: |s, set| {
            let role = match s.met {
                Met::Accepted => {
                    // A server whose client spoke first, or one that
                    // speaks first itself (after an h2c upgrade's 101).
                    let preface = if s.egress {
                        h2::starts_server_preface(s.bytes)
                    } else {
                        h2::starts_preface(s.bytes)
                    };
                    if !preface {
                        return Recognised::No;
                    }
                    Role::Server
                }
                Met::Connected if s.egress && h2::starts_preface(s.bytes) => Role::Client,
                // A client that reads the server's SETTINGS before it
                // writes its own preface (h2load against nghttpd, which
                // sends them on accept): its framer still asks for that
                // preface before anything it writes.
                Met::Connected if !s.egress && h2::starts_server_preface(s.bytes) => Role::Client,
                Met::Connected => return Recognised::No,
                Met::Joined if h2::starts_preface(s.bytes) => s.role_by_direction(),
                Met::Joined => {
                    return match h2::joined_role(s.egress, s.bytes) {
                        Some(role) => {
                            Recognised::Yes(Box::new(H2Conn::joined(role, set.http.clone())))
                        }
                        None => Recognised::No,
                    }
                }
            };
            Recognised::Yes(Box::new(H2Conn::new(role, set.http.clone())))
        },
    },
    Detector {
        protocol: "redis",
        met: CLIENTS,
        deepen: None,
        kernel: None,
        recognise: |s, _| {
            if !(s.egress && resp::looks_like_start(resp::Direction::Commands, s.bytes)) {
                return Recognised::No;
            }
            Recognised::Yes(Box::new(store(DbConn::redis(), s.met)))
        },
    },
    Detector {
        protocol: "memcached",
        met: CLIENTS,
        deepen: None,
        kernel: None,
        recognise: |s, _| {
            if !(s.egress && memcache::looks_like_start(s.bytes)) {
                return Recognised::No;
            }
            Recognised::Yes(Box::new(store(DbConn::memcached(), s.met)))
        },
    },
    Detector {
        protocol: "postgresql",
        met: CLIENTS,
        deepen: Some(Deepen::Database),
        kernel: Some(KernelSniff {
            function: "is_pg_startup",
            on: "the first write of an outgoing connection",
        }),
        recognise: |s, set| {
            if !s.egress {
                return Recognised::No;
            }
            // The probes decide a startup themselves from the same bytes,
            // except when they cannot see them whole (a startup written
            // with writev): `deepen` asks anyway.
            if s.met == Met::Connected && postgres::is_startup(s.bytes, s.len) {
                return Recognised::Yes(Box::new(PgConn::new(set.sql)));
            }
            // Joined mid-stream: a query.
            if postgres::looks_like_query_start(s.bytes, s.len)
                && postgres::starts_messages(postgres::Direction::Frontend, s.bytes, s.len)
            {
                return Recognised::Yes(Box::new(PgConn::mid_stream(set.sql)));
            }
            Recognised::No
        },
    },
    Detector {
        protocol: "mysql",
        met: CLIENTS,
        deepen: Some(Deepen::Database),
        kernel: Some(KernelSniff {
            function: "is_mysql_greeting",
            on: "the first read of an outgoing connection",
        }),
        recognise: |s, set| match s.met {
            // The server speaks first.
            Met::Connected if !s.egress && mysql::looks_like_greeting(s.bytes) => {
                Recognised::Yes(Box::new(MysqlConn::new(set.sql)))
            }
            Met::Connected if !s.egress && mysql::could_be_greeting_header(s.bytes) => {
                Recognised::NeedMore
            }
            Met::Joined if s.egress && mysql::looks_like_command(s.bytes, s.len) => {
                Recognised::Yes(Box::new(MysqlConn::mid_stream(set.sql)))
            }
            _ => Recognised::No,
        },
    },
    Detector {
        protocol: "http",
        met: ANY,
        deepen: None,
        kernel: None,
        recognise: |s, set| {
            let role = match s.met {
                Met::Accepted => Role::Server,
                Met::Connected => Role::Client,
                Met::Joined if http1::starts_request(s.bytes) => s.role_by_direction(),
                Met::Joined => return Recognised::No,
            };
            Recognised::Yes(Box::new(HttpConn::new(role, set.http.clone())))
        },
    },
];

/// A key-value store's client: from its start when the agent saw it
/// connect.
fn store(conn: DbConn, met: Met) -> DbConn {
    if met == Met::Connected {
        conn.seen_from_start()
    } else {
        conn
    }
}

/// The tracker's answer for a segment of a connection being detected.
pub enum Detection {
    Found {
        protocol: Box<dyn Protocol>,
        deepen: Option<Deepen>,
        /// Its detector's name, for the logs.
        by: &'static str,
    },
    /// Detector `by` needs the next segment too.
    Hold {
        by: usize,
    },
    None,
}

/// Tries the table in order on `seen`, or only detector `only` (the one
/// that asked for more).
pub fn detect(seen: &Seen<'_>, set: &Settings<'_>, only: Option<usize>) -> Detection {
    for (i, d) in DETECTORS.iter().enumerate() {
        if only.is_some_and(|o| o != i) || !d.met.contains(&seen.met) {
            continue;
        }
        match (d.recognise)(seen, set) {
            Recognised::Yes(protocol) => {
                return Detection::Found {
                    protocol,
                    deepen: d.deepen,
                    by: d.protocol,
                }
            }
            Recognised::NeedMore if only.is_none() => return Detection::Hold { by: i },
            Recognised::NeedMore | Recognised::No => {}
        }
    }
    Detection::None
}

/// The segment a held one and its successor make together, capped.
pub fn joined<'b>(held: &[u8], next: &Segment<'_>, buf: &'b mut Vec<u8>) -> &'b [u8] {
    buf.clear();
    buf.extend_from_slice(held);
    buf.extend_from_slice(&next.bytes[..next.bytes.len().min(256)]);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel sniffs lives in this table: every check in
    /// ebpf/src/sniff.rs is some detector's, and every detector's is there.
    #[test]
    fn the_kernels_sniffs_are_the_tables() {
        let sniff = include_str!("../../../ebpf/src/sniff.rs");
        // Every function there, whatever its visibility.
        let mut in_kernel: Vec<&str> = sniff
            .lines()
            .filter_map(|l| l.split_once("fn ").map(|(_, rest)| rest))
            .filter_map(|l| l.split('(').next())
            .collect();
        in_kernel.sort_unstable();
        let mut in_table: Vec<&str> = DETECTORS
            .iter()
            .filter_map(|d| d.kernel.as_ref().map(|k| k.function))
            .collect();
        in_table.sort_unstable();
        assert!(!in_kernel.is_empty());
        assert_eq!(in_kernel, in_table);
    }

    fn settings() -> Settings<'static> {
        static HTTP: std::sync::OnceLock<Arc<Options>> = std::sync::OnceLock::new();
        Settings {
            http: HTTP.get_or_init(|| Arc::new(Options::default())),
            sql: SqlOptions {
                sanitize: true,
                user: false,
            },
        }
    }

    fn found(met: Met, egress: bool, bytes: &[u8]) -> Option<&'static str> {
        let seen = Seen {
            met,
            egress,
            bytes,
            len: bytes.len() as u64,
        };
        match detect(&seen, &settings(), None) {
            Detection::Found { protocol, .. } => Some(protocol.name()),
            Detection::Hold { .. } => Some("held"),
            Detection::None => None,
        }
    }

    #[test]
    fn the_first_bytes_pick_the_protocol() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_eq!(found(Met::Accepted, false, preface), Some("http2"));
        assert_eq!(found(Met::Connected, true, preface), Some("http2"));
        // The server's SETTINGS, read before the client's preface is written.
        let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        assert_eq!(found(Met::Connected, false, &settings), Some("http2"));
        // A SETTINGS acknowledgement is no server's first frame.
        assert_eq!(
            found(Met::Connected, false, &[0, 0, 0, 4, 1, 0, 0, 0, 0]),
            Some("http")
        );
        assert_eq!(found(Met::Joined, false, preface), Some("http2"));
        let get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        assert_eq!(found(Met::Connected, true, get), Some("redis"));
        assert_eq!(found(Met::Joined, true, get), Some("redis"));
        // Not from a server: the agent does not trace database servers.
        assert_eq!(found(Met::Accepted, false, get), Some("http"));
        assert_eq!(found(Met::Connected, true, b"get k\r\n"), Some("memcached"));
        // A MySQL greeting's header read alone: held for the next read.
        assert_eq!(found(Met::Connected, false, &[74, 0, 0, 0]), Some("held"));
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(found(Met::Joined, false, request), Some("http"));
        assert_eq!(found(Met::Joined, true, b"\x00\x01random"), None);
        // An accepted or connected connection is HTTP/1 until its framer
        // says otherwise.
        assert_eq!(found(Met::Connected, true, b"\x00\x01random"), Some("http"));
    }
}
