//! PostgreSQL client spans end to end: a private PostgreSQL 15 server from
//! Debian's packages, real clients (psql, psycopg 3, pgbench), real eBPF,
//! spans read back from the OTLP receiver.

use std::time::Duration;

use zerospan_tests::{procs::fixture, require_root, Agent, Collector, FlatSpan, Postgres, TempDir};

fn by_start(mut spans: Vec<FlatSpan>) -> Vec<FlatSpan> {
    spans.sort_by_key(|s| s.span.start_time_unix_nano);
    spans
}

/// Runs `argv` under the agent, exporting to `collector`, until it exits.
fn traced(collector: &Collector, argv: &[String], extra: &[&str]) -> Agent {
    let mut args: Vec<&str> = vec!["--otlp-endpoint", &collector.grpc_endpoint];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend(argv.iter().map(String::as_str));
    let mut agent = Agent::start(&args, &[]);
    assert!(
        agent.wait(Duration::from_secs(60)).success(),
        "{}",
        agent.stderr()
    );
    agent
}

fn summary(spans: &[FlatSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} | {:?} | {:?} | {:?}\n",
                s.span.name,
                s.str("db.query.text"),
                s.str("error.type"),
                s.str("zerospan.incomplete")
            )
        })
        .collect()
}

/// Every span is a PostgreSQL client span to this server and database.
fn common_attributes(spans: &[FlatSpan], pg: &Postgres, db: &str) {
    for s in spans {
        assert!(s.is_client(), "{}", s.span.name);
        assert_eq!(s.str("db.system.name").as_deref(), Some("postgresql"));
        assert_eq!(s.str("db.namespace").as_deref(), Some(db));
        assert_eq!(s.str("server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(s.int("server.port"), Some(i64::from(pg.port)));
        assert!(!s.has("zerospan.incomplete"), "{}", summary(spans));
        let text = s.str("db.query.text").unwrap_or_default();
        assert!(
            !text.contains("secret") && !text.contains("postgres"),
            "literals and the user never exported: {text}"
        );
    }
}

#[test]
fn psql_simple_queries_errors_copy_and_long_results() {
    require_root();
    let pg = Postgres::start();
    pg.exec("postgres", "CREATE DATABASE shop");
    let dir = TempDir::new("psql");
    let rows = dir.0.join("rows.tsv");
    std::fs::write(&rows, "secret-a\nsecret-b\nsecret-c\n").unwrap();
    let script = dir.0.join("script.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE TABLE tasks (id serial PRIMARY KEY, title text NOT NULL, done boolean DEFAULT false);\n\
             INSERT INTO tasks (title) VALUES ('secret-title-1');\n\
             INSERT INTO tasks (title) VALUES ('secret-title-2');\n\
             SELECT id, title FROM tasks WHERE title = 'secret-title-1';\n\
             UPDATE tasks SET done = true WHERE id = 1;\n\
             DELETE FROM tasks WHERE id = 2;\n\
             SELECT * FROM missing_table;\n\
             \\copy tasks (title) FROM '{}'\n\
             SELECT repeat('x', 200) FROM generate_series(1, 5000);\n",
            rows.display()
        ),
    )
    .unwrap();
    let collector = Collector::start();
    let mut argv = pg.psql_args("shop");
    argv.extend(["-f".into(), script.display().to_string()]);
    let agent = traced(&collector, &argv, &[]);

    let spans = by_start(collector.wait_for(9, Duration::from_secs(10), |_| true));
    let names: Vec<&str> = spans.iter().map(|s| s.span.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "CREATE",
            "INSERT tasks",
            "INSERT tasks",
            "SELECT tasks",
            "UPDATE tasks",
            "DELETE tasks",
            "SELECT missing_table",
            "COPY tasks",
            "SELECT",
        ],
        "{}\n{}",
        summary(&spans),
        agent.stderr()
    );
    common_attributes(&spans, &pg, "shop");
    let text = |i: usize| spans[i].str("db.query.text").unwrap();
    assert_eq!(text(1), "INSERT INTO tasks (title) VALUES (?);");
    assert_eq!(text(3), "SELECT id, title FROM tasks WHERE title = ?;");
    assert_eq!(text(4), "UPDATE tasks SET done = true WHERE id = ?;");
    assert_eq!(text(7), "COPY tasks ( title ) FROM STDIN");
    assert_eq!(spans[1].str("db.operation.name").as_deref(), Some("INSERT"));
    assert_eq!(spans[1].str("db.collection.name").as_deref(), Some("tasks"));
    // The user is never exported unless asked for.
    assert!(spans.iter().all(|s| !s.has("db.user")));
    // The failing query: SQLSTATE 42P01, undefined_table.
    assert_eq!(
        spans[6].str("db.response.status_code").as_deref(),
        Some("42P01")
    );
    assert_eq!(spans[6].str("error.type").as_deref(), Some("42P01"));
    assert_eq!(spans[6].span.status.as_ref().map(|st| st.code), Some(2));
    for (i, s) in spans.iter().enumerate() {
        if i != 6 {
            assert!(!s.has("error.type"), "{}", summary(&spans));
        }
    }
    // 1 MB of rows framed through without losing the stream.
    assert_eq!(
        agent.stat("desyncs.postgresql"),
        Some(0),
        "{}",
        agent.stderr()
    );
    assert_eq!(agent.stat("db_orphan_replies"), Some(0));
}

#[test]
fn psycopg_extended_protocol_prepared_statements_and_big_reads() {
    require_root();
    let pg = Postgres::start();
    pg.exec("postgres", "CREATE DATABASE shop");
    pg.exec("postgres", "CREATE DATABASE raw");
    let collector = Collector::start();
    let script = format!(
        "python3 {} {port} && python3 {} {port}",
        fixture("pg_client.py").display(),
        fixture("pg_raw_client.py").display(),
        port = pg.port
    );
    let argv: Vec<String> = vec!["sh".into(), "-c".into(), script];
    let agent = traced(&collector, &argv, &[]);
    let spans = by_start(collector.wait_for(117, Duration::from_secs(10), |_| true));
    let (shop, raw): (Vec<FlatSpan>, Vec<FlatSpan>) = spans
        .into_iter()
        .partition(|s| s.str("db.namespace").as_deref() == Some("shop"));
    let names: Vec<&str> = shop.iter().map(|s| s.span.name.as_str()).collect();
    let mut want = vec!["CREATE"];
    want.extend(["INSERT items"; 100]);
    want.extend(["SELECT items", "INSERT items"]);
    want.extend(["UPDATE items"; 10]);
    want.push("DELETE items");
    assert_eq!(names, want, "{}\n{}", summary(&shop), agent.stderr());
    common_attributes(&shop, &pg, "shop");
    // Prepared once, executed 100 times: every execution knows its SQL.
    for s in &shop[1..101] {
        assert_eq!(
            s.str("db.query.text").as_deref(),
            Some("INSERT INTO items (id, name) VALUES ($1, $2)")
        );
        assert!(!s.has("error.type"));
    }
    assert_eq!(
        shop[101].str("db.query.text").as_deref(),
        Some("SELECT name FROM items WHERE id = $1")
    );
    // The duplicate key: SQLSTATE 23505, unique_violation.
    assert_eq!(
        shop[102].str("db.response.status_code").as_deref(),
        Some("23505")
    );
    assert_eq!(shop[102].str("error.type").as_deref(), Some("23505"));
    assert_eq!(shop[102].span.status.as_ref().map(|st| st.code), Some(2));
    // The pipeline and what follows it: all answered, none failed.
    assert!(shop[103..].iter().all(|s| !s.has("error.type")));

    // The raw client's 4 MB result, read 1 MiB at a time: the probes
    // capture the head and tail of each read, and the agent finds the end
    // of the result in the tail.
    let names: Vec<&str> = raw.iter().map(|s| s.span.name.as_str()).collect();
    assert_eq!(names, ["SELECT", "SELECT", "SELECT"], "{}", summary(&raw));
    common_attributes(&raw, &pg, "raw");
    assert!(!raw[0].has("error.type"));
    assert_eq!(raw[1].str("db.query.text").as_deref(), Some("SELECT ?/?"));
    assert_eq!(raw[1].str("error.type").as_deref(), Some("22012"));
    assert!(!raw[2].has("error.type"));
    assert!(
        agent.stat("db_resyncs").unwrap() >= 1,
        "the big reads were not framed from their tails: {}",
        agent.stderr()
    );
    assert_eq!(agent.stat("db_orphan_replies"), Some(0));
    assert_eq!(agent.stat("db_statements_unknown"), Some(0));
}

/// pgbench's TPC-B-like transaction over the extended protocol: seven
/// statements per transaction, each exactly one span.
#[test]
fn pgbench_extended_gives_one_span_per_statement() {
    require_root();
    let pg = Postgres::start();
    pg.exec("postgres", "CREATE DATABASE bench");
    let conn = |db: &str| -> Vec<String> {
        let argv = pg.psql_args(db);
        // psql's connection options, which pgbench shares.
        argv[3..9].to_vec()
    };
    let init = std::process::Command::new("pgbench")
        .args(["-i", "-q", "-s", "1"])
        .args(conn("bench"))
        .arg("bench")
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    const TRANSACTIONS: usize = 200;
    let collector = Collector::start();
    let mut argv: Vec<String> = vec![
        "pgbench".into(),
        "-n".into(),
        "-M".into(),
        "extended".into(),
    ];
    argv.extend(["-c".into(), "2".into(), "-j".into(), "2".into()]);
    argv.extend(["-t".into(), (TRANSACTIONS / 2).to_string()]);
    argv.extend(conn("bench"));
    argv.push("bench".into());
    let agent = traced(&collector, &argv, &["--db-user"]);
    let statements = [
        "BEGIN",
        "UPDATE pgbench_accounts",
        "SELECT pgbench_accounts",
        "UPDATE pgbench_tellers",
        "UPDATE pgbench_branches",
        "INSERT pgbench_history",
        "END",
    ];
    let spans = collector.wait_for(
        TRANSACTIONS * statements.len(),
        Duration::from_secs(10),
        |s| statements.contains(&s.span.name.as_str()),
    );
    for name in statements {
        let n = spans.iter().filter(|s| s.span.name == name).count();
        assert_eq!(n, TRANSACTIONS, "{name}: {}", agent.stderr());
    }
    common_attributes(&spans, &pg, "bench");
    // Asked for with --db-user.
    assert!(spans
        .iter()
        .all(|s| s.str("db.user").as_deref() == Some("postgres")));
    assert!(spans.iter().all(|s| !s.has("error.type")));
    assert_eq!(
        spans
            .iter()
            .find(|s| s.span.name == "SELECT pgbench_accounts")
            .and_then(|s| s.str("db.query.text"))
            .as_deref(),
        Some("SELECT abalance FROM pgbench_accounts WHERE aid = $1;")
    );
    assert_eq!(agent.stat("desyncs.postgresql"), Some(0));
    assert_eq!(agent.stat("db_orphan_replies"), Some(0));
}

/// A connection (and a prepared statement) that existed before the agent
/// attached: recognised from its first query, no garbage spans.
#[test]
fn connection_opened_before_the_agent() {
    require_root();
    let pg = Postgres::start();
    pg.exec("postgres", "CREATE DATABASE shop");
    let mut client = zerospan_tests::Fixture::start(
        std::process::Command::new("python3")
            .arg(fixture("pg_idle_client.py"))
            .arg(pg.port.to_string()),
    );
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[client.pid()], &collector, &[]);
    client.send_line("go");
    assert_eq!(client.read_line().trim(), "DONE");
    let spans = by_start(collector.wait_for(4, Duration::from_secs(10), |_| true));
    agent.stop();
    let names: Vec<&str> = spans.iter().map(|s| s.span.name.as_str()).collect();
    assert_eq!(
        names,
        ["SELECT pg_class", "postgresql", "SELECT", "SELECT pg_class"],
        "{}\n{}",
        summary(&spans),
        agent.stderr()
    );
    for s in &spans {
        assert!(s.is_client());
        assert_eq!(s.str("db.system.name").as_deref(), Some("postgresql"));
        // The startup packet, and with it the database, went by unseen.
        assert!(!s.has("db.namespace"));
        assert_eq!(s.int("server.port"), Some(i64::from(pg.port)));
        assert!(!s.has("error.type") && !s.has("zerospan.incomplete"));
    }
    assert_eq!(
        spans[0].str("db.query.text").as_deref(),
        Some("SELECT count(*) FROM pg_class WHERE relname = $1")
    );
    // The statement prepared before the agent: no SQL to show, counted.
    assert!(!spans[1].has("db.query.text"));
    assert_eq!(agent.stat("db_statements_unknown"), Some(1));
    assert_eq!(
        agent.stat("desyncs.postgresql"),
        Some(0),
        "{}",
        agent.stderr()
    );
}
