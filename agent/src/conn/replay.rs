//! Conversations of real clients with real servers, recorded once with
//! `testdata/record.py` (psql, psycopg 3, the mariadb client,
//! mysql-connector-python, redis-py and pymemcache, each against the
//! Debian server), replayed through the connection tracker: what each
//! gives is checked, and every chunk split at every byte must give exactly
//! the same calls as the whole.

use std::{net::SocketAddr, sync::Arc};

use zerospan_common::origin;
use zerospan_protocols::stream::{Segment, Stamp};

use crate::{
    conn::{
        db::SqlOptions,
        tracker::{Limits, Tracker},
    },
    exchange::{ConnKey, Task},
    spans::{Status, Value},
    stats::Stats,
};

const KEY: ConnKey = ConnKey {
    tgid: 7,
    fd: 3,
    conn_id: 1,
};

/// `(written by the client, bytes)` in the order they crossed the socket.
fn load(name: &str) -> Vec<(bool, Vec<u8>)> {
    let path = format!("{}/testdata/{name}.rec", env!("CARGO_MANIFEST_DIR"));
    let b = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let len = u32::from_be_bytes(b[i + 1..i + 5].try_into().unwrap()) as usize;
        out.push((b[i] == b'C', b[i + 5..i + 5 + len].to_vec()));
        i += 5 + len;
    }
    out
}

/// What a call became, as far as spans show it.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    system: &'static str,
    name: String,
    text: String,
    reply: String,
    namespace: Option<String>,
}

/// Replays `chunks`, chunk `split.0` cut in two at `split.1`.
fn replay(chunks: &[(bool, Vec<u8>)], split: Option<(usize, usize)>) -> (Vec<Seen>, Arc<Stats>) {
    let stats = Arc::new(Stats::default());
    let limits = Limits {
        max_connections: 8,
        request_timeout_ns: u64::MAX / 2,
        idle_timeout_ns: u64::MAX / 2,
        sql: SqlOptions {
            sanitize: true,
            user: false,
        },
    };
    let mut t = Tracker::new(limits, Default::default(), stats.clone());
    let peer: SocketAddr = "127.0.0.1:5432".parse().unwrap();
    t.open(KEY, origin::CONNECTED, Some(peer), None, 0);
    let mut ts = 0;
    for (i, (egress, bytes)) in chunks.iter().enumerate() {
        let cut = match split {
            Some((at, cut)) if at == i => cut,
            _ => bytes.len(),
        };
        for part in [&bytes[..cut], &bytes[cut..]] {
            if part.is_empty() {
                continue;
            }
            ts += 10;
            let seg = Segment {
                bytes: part,
                len: part.len() as u64,
                stamp: Stamp {
                    enter_ns: ts,
                    exit_ns: ts + 1,
                },
            };
            t.data(KEY, Task::thread(1), *egress, seg);
        }
    }
    t.close(KEY);
    let text =
        |r: &crate::spans::Record, key: &str| match r.attributes.iter().find(|(k, _)| *k == key) {
            Some((_, Value::Str(v))) => Some(v.clone()),
            _ => None,
        };
    let seen = t
        .drain()
        .map(|r| Seen {
            system: match text(&r, "db.system.name").as_deref() {
                Some("postgresql") => "postgresql",
                Some("mysql") => "mysql",
                Some("mariadb") => "mariadb",
                Some("redis") => "redis",
                Some("memcached") => "memcached",
                other => panic!("not a database span: {other:?}"),
            },
            name: text(&r, "db.operation.name").unwrap_or_default(),
            text: text(&r, "db.query.text").unwrap_or_default(),
            reply: match (&r.status, text(&r, "zerospan.incomplete")) {
                (Status::Error(_), _) => match text(&r, "db.response.status_code") {
                    Some(code) => format!("error {code}"),
                    None => text(&r, "error.type").unwrap_or_default(),
                },
                (_, Some(why)) => why,
                // Ended in the very write that sent it (this replay's
                // syscalls last 1 ns): nothing answers it.
                _ if r.end_ns == r.start_ns + 1 => "sent".into(),
                _ => "ok".into(),
            },
            namespace: text(&r, "db.namespace"),
        })
        .collect();
    (seen, stats)
}

/// The whole conversation's calls, after checking that every split of
/// every chunk gives the same. The first chunk is the one the protocol is
/// recognised from, which must come whole (it did from every client
/// recorded; a MySQL greeting whose header is read alone is the exception,
/// checked separately).
fn calls(name: &str) -> Vec<Seen> {
    let chunks = load(name);
    let (whole, stats) = replay(&chunks, None);
    assert_eq!(stats.desyncs.load(std::sync::atomic::Ordering::Relaxed), 0);
    for (i, (_, bytes)) in chunks.iter().enumerate().skip(1) {
        for cut in 1..bytes.len() {
            let (split, _) = replay(&chunks, Some((i, cut)));
            assert_eq!(split, whole, "{name}: chunk {i} cut at {cut}");
        }
    }
    whole
}

fn summary(calls: &[Seen]) -> Vec<(String, String)> {
    calls
        .iter()
        .map(|c| (c.name.clone(), c.reply.clone()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn psql() {
    let c = calls("psql");
    assert_eq!(
        summary(&c),
        pairs(&[
            ("CREATE", "ok"),
            ("INSERT", "ok"),
            ("SELECT", "ok"),
            ("SELECT", "error 42P01"),
            ("COPY", "ok"),
            ("SELECT", "ok"),
        ])
    );
    assert!(c.iter().all(|c| c.system == "postgresql"));
    assert!(c.iter().all(|c| c.namespace.as_deref() == Some("shop")));
    assert_eq!(c[1].text, "INSERT INTO tasks (title) VALUES (?);");
}

#[test]
fn psycopg() {
    let c = calls("psycopg");
    assert_eq!(
        summary(&c),
        pairs(&[
            ("CREATE", "ok"),
            ("INSERT", "ok"),
            ("INSERT", "ok"),
            ("INSERT", "ok"),
            ("SELECT", "ok"),
            ("INSERT", "error 23505"),
            ("UPDATE", "ok"),
            ("UPDATE", "ok"),
            ("UPDATE", "ok"),
        ])
    );
    assert_eq!(c[2].text, "INSERT INTO items (id, name) VALUES ($1, $2)");
}

#[test]
fn mariadb_client() {
    let c = calls("mariadb");
    assert!(c.iter().all(|c| c.system == "mariadb"));
    assert_eq!(
        summary(&c),
        pairs(&[
            ("CREATE", "ok"),
            ("INSERT", "ok"),
            ("SELECT", "ok"),
            ("SELECT", "error 1146"),
            ("SELECT", "ok"),
            ("SELECT", "ok"),
        ])
    );
    assert_eq!(c.last().unwrap().namespace.as_deref(), Some("mysql"));
}

#[test]
fn mysql_connector_prepared_statements() {
    let c = calls("connector");
    // The connector reads each packet's header alone, the greeting's too.
    let chunks = load("connector");
    assert_eq!(replay(&chunks, Some((0, 4))).0, c);
    eprintln!("{c:#?}");
    let names: Vec<String> = c.iter().map(|c| c.name.clone()).collect();
    assert_eq!(
        names,
        ["SET", "SET", "INSERT", "INSERT", "INSERT", "SELECT", "INSERT"]
    );
    assert_eq!(c[2].text, "INSERT INTO items (id, name) VALUES (?, ?)");
    assert_eq!(c[6].reply, "error 1062");
}

#[test]
fn redis_py() {
    let c = calls("redis");
    let names: Vec<String> = c.iter().map(|c| c.name.clone()).collect();
    assert_eq!(
        names,
        [
            "CLIENT", "CLIENT", "SET", "GET", "INCRBY", "SET", "SET", "SET", "SET", "SET", "MULTI",
            "SET", "INCRBY", "EXEC", "SELECT", "PING"
        ]
    );
    // This Redis (7.0) predates CLIENT SETINFO: redis-py's introduction
    // fails, as it expects.
    assert_eq!(c[0].reply, "error ERR");
    assert_eq!(c[4].reply, "error ERR");
    assert_eq!(c[14].namespace.as_deref(), Some("0"));
    assert_eq!(c[15].namespace.as_deref(), Some("2"));
}

#[test]
fn pymemcache() {
    let c = calls("memcached");
    let names: Vec<String> = c.iter().map(|c| c.name.clone()).collect();
    assert_eq!(
        names,
        ["set", "get", "get", "delete", "incr", "add", "set", "get"]
    );
    assert_eq!(c[2].text, "get ? ?");
    // pymemcache sends noreply unless asked not to: complete when written.
    assert!(c.iter().filter(|c| c.reply == "sent").count() >= 4);
}
