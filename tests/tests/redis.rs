//! Redis client spans end to end: real redis-server and redis-cli from
//! Debian, real eBPF, spans read back from the OTLP receiver.

use std::time::Duration;

use zerospan_tests::{procs::free_port, require_root, Agent, Collector, FlatSpan, RedisServer};

/// RESP for one command, as a client library writes it.
fn resp(args: &[&str]) -> String {
    let mut s = format!("*{}\r\n", args.len());
    for a in args {
        s.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s
}

fn in_order(spans: &[FlatSpan], pid_of: impl Fn(&FlatSpan) -> i64) -> Vec<FlatSpan> {
    let mut v: Vec<FlatSpan> = spans.to_vec();
    v.sort_by_key(|s| (pid_of(s), s.span.start_time_unix_nano));
    v
}

#[test]
fn redis_cli_commands_pipelines_and_transactions() {
    require_root();
    let port = free_port();
    let _redis = RedisServer::start(port);
    let dir = std::env::temp_dir().join(format!("zerospan-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pipeline: String = (0..100)
        .map(|i| resp(&["SET", &format!("key:{i}"), &i.to_string()]))
        .collect();
    std::fs::write(dir.join("pipeline.resp"), pipeline).unwrap();
    let tx = [
        resp(&["MULTI"]),
        resp(&["SET", "n", "1"]),
        resp(&["INCR", "n"]),
        resp(&["EXEC"]),
    ]
    .concat();
    std::fs::write(dir.join("tx.resp"), tx).unwrap();

    let collector = Collector::start();
    let cli = format!("redis-cli -p {port}");
    let script = format!(
        "{cli} SET k secret-value >/dev/null; {cli} GET k >/dev/null; {cli} INCR k >/dev/null; \
         {cli} --pipe < {d}/pipeline.resp >/dev/null; {cli} --pipe < {d}/tx.resp >/dev/null; \
         {cli} -n 3 SET other secret-value >/dev/null",
        d = dir.display()
    );
    let mut agent = Agent::start(
        &[
            "--otlp-endpoint",
            &collector.grpc_endpoint,
            "--",
            "sh",
            "-c",
            &script,
        ],
        &[],
    );
    assert!(
        agent.wait(Duration::from_secs(30)).success(),
        "{}",
        agent.stderr()
    );
    let _ = std::fs::remove_dir_all(&dir);

    let spans = in_order(&collector.spans(), |s| {
        s.res_int("process.pid").unwrap_or(0)
    });
    // 3 single commands, 100 pipelined + redis-cli's closing ECHO,
    // MULTI/SET/INCR/EXEC + ECHO, and SELECT 3 + SET.
    assert_eq!(spans.len(), 3 + 101 + 5 + 2, "{}", agent.stderr());
    for s in &spans {
        assert!(s.is_client());
        assert_eq!(s.str("db.system.name").as_deref(), Some("redis"));
        assert_eq!(
            s.str("db.operation.name").as_deref(),
            Some(s.span.name.as_str())
        );
        assert_eq!(s.str("server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(s.int("server.port"), Some(i64::from(port)));
        assert_eq!(
            s.res_str("process.executable.name").as_deref(),
            Some("redis-cli")
        );
        let text = s.str("db.query.text").unwrap();
        assert!(
            !text.contains("secret") && !text.contains("key:"),
            "arguments never exported: {text}"
        );
    }
    let names: Vec<&str> = spans.iter().map(|s| s.span.name.as_str()).collect();
    assert_eq!(&names[..3], ["SET", "GET", "INCR"]);
    assert_eq!(spans[0].str("db.query.text").as_deref(), Some("SET ? ?"));
    assert_eq!(spans[1].str("db.query.text").as_deref(), Some("GET ?"));
    assert!(!spans[0].has("error.type"));
    // INCR on "secret-value": an error reply.
    assert_eq!(spans[2].str("error.type").as_deref(), Some("ERR"));
    assert_eq!(
        spans[2].str("db.response.status_code").as_deref(),
        Some("ERR")
    );
    assert_eq!(spans[2].span.status.as_ref().map(|st| st.code), Some(2));
    // The pipeline: 100 SETs in order, then the ECHO redis-cli adds.
    assert!(names[3..103].iter().all(|n| *n == "SET"), "{names:?}");
    assert_eq!(names[103], "ECHO");
    assert!(spans[3..104].iter().all(|s| !s.has("error.type")));
    // The transaction: every command answered, EXEC included.
    assert_eq!(&names[104..109], ["MULTI", "SET", "INCR", "EXEC", "ECHO"]);
    assert!(spans[104..]
        .iter()
        .all(|s| !s.has("error.type") && !s.has("zerospan.incomplete")));
    // `redis-cli -n 3` selects database 3: db.namespace follows.
    assert_eq!(&names[109..], ["SELECT", "SET"]);
    assert_eq!(spans[109].str("db.query.text").as_deref(), Some("SELECT ?"));
    for (i, s) in spans.iter().enumerate() {
        let ns = if i == 110 { "3" } else { "0" };
        assert_eq!(
            s.str("db.namespace").as_deref(),
            Some(ns),
            "{}",
            s.span.name
        );
    }
    assert_eq!(agent.stat("desyncs.redis"), Some(0));
    assert_eq!(agent.stat("db_orphan_replies"), Some(0));
}
