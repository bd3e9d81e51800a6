//! MariaDB client spans end to end: a private MariaDB server from Debian's
//! packages, the `mariadb` client and mysql-connector-python with
//! server-side prepared statements, real eBPF, spans read back from the
//! OTLP receiver.

use std::time::Duration;

use zerospan_tests::{procs::fixture, require_root, Agent, Collector, FlatSpan, Mariadb, TempDir};

fn by_start(mut spans: Vec<FlatSpan>) -> Vec<FlatSpan> {
    spans.sort_by_key(|s| s.span.start_time_unix_nano);
    spans
}

fn summary(spans: &[FlatSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} | {:?} | {:?} | {:?} | {:?}\n",
                s.span.name,
                s.str("db.query.text"),
                s.str("db.namespace"),
                s.str("error.type"),
                s.str("zerospan.incomplete")
            )
        })
        .collect()
}

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

fn common_attributes(spans: &[FlatSpan], db: &Mariadb, sanitized: bool) {
    for s in spans {
        assert!(s.is_client(), "{}", s.span.name);
        assert_eq!(s.str("db.system.name").as_deref(), Some("mariadb"));
        assert_eq!(s.str("server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(s.int("server.port"), Some(i64::from(db.port)));
        assert!(!s.has("zerospan.incomplete"), "{}", summary(spans));
        let text = s.str("db.query.text").unwrap_or_default();
        assert!(
            !sanitized || !text.contains("secret"),
            "literals never exported: {text}"
        );
    }
}

#[test]
fn mariadb_client_queries_errors_use_and_long_results() {
    require_root();
    let db = Mariadb::start();
    db.exec("CREATE DATABASE shop; CREATE DATABASE other");
    let collector = Collector::start();
    let dir = TempDir::new("mariadb-script");
    let script = dir.0.join("script.sql");
    std::fs::write(
        &script,
        "CREATE TABLE tasks (id int AUTO_INCREMENT PRIMARY KEY, title varchar(100));\n\
         INSERT INTO tasks (title) VALUES ('secret-1'), ('secret-2');\n\
         SELECT id, title FROM tasks WHERE title = 'secret-1';\n\
         UPDATE tasks SET title = 'secret-3' WHERE id = 2;\n\
         SELECT * FROM missing_table;\n\
         SELECT REPEAT('x', 200) FROM seq_1_to_5000;\n\
         use other\n\
         SELECT 42;\n",
    )
    .unwrap();
    let client = db.client_args().join(" ");
    let argv: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        format!("{client} --force shop < {} > /dev/null", script.display()),
    ];
    let agent = traced(&collector, &argv, &[]);
    let spans = by_start(collector.wait_for(8, Duration::from_secs(10), |_| true));
    let names: Vec<&str> = spans.iter().map(|s| s.span.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "CREATE",
            "INSERT tasks",
            "SELECT tasks",
            "UPDATE tasks",
            "SELECT missing_table",
            "SELECT seq_1_to_5000",
            // The client's `use` asks for the current database first.
            "SELECT",
            "SELECT",
        ],
        "{}\n{}",
        summary(&spans),
        agent.stderr()
    );
    common_attributes(&spans, &db, true);
    assert!(spans.iter().all(|s| !s.has("db.user")));
    let text = |i: usize| spans[i].str("db.query.text").unwrap();
    assert_eq!(text(1), "INSERT INTO tasks (title) VALUES (?), (?)");
    assert_eq!(text(2), "SELECT id, title FROM tasks WHERE title = ?");
    assert_eq!(text(6), "SELECT DATABASE()");
    assert_eq!(spans[2].str("db.collection.name").as_deref(), Some("tasks"));
    // ER_NO_SUCH_TABLE.
    assert_eq!(
        spans[4].str("db.response.status_code").as_deref(),
        Some("1146")
    );
    assert_eq!(spans[4].str("error.type").as_deref(), Some("1146"));
    assert_eq!(spans[4].span.status.as_ref().map(|st| st.code), Some(2));
    for (i, s) in spans.iter().enumerate() {
        assert_eq!(s.has("error.type"), i == 4, "{}", summary(&spans));
        // COM_INIT_DB moved the connection to `other` before the last query.
        let ns = if i == 7 { "other" } else { "shop" };
        assert_eq!(s.str("db.namespace").as_deref(), Some(ns));
    }
    // 1 MB of rows framed through without losing the stream.
    assert_eq!(agent.stat("desyncs.mysql"), Some(0), "{}", agent.stderr());
    assert_eq!(agent.stat("db_orphan_replies"), Some(0));
}

#[test]
fn connector_python_server_side_prepared_statements() {
    require_root();
    let db = Mariadb::start();
    db.exec(
        "CREATE DATABASE shop; \
         CREATE TABLE shop.items (id int PRIMARY KEY, name varchar(100) NOT NULL)",
    );
    let collector = Collector::start();
    let argv: Vec<String> = vec![
        "python3".into(),
        fixture("mysql_client.py").display().to_string(),
        db.port.to_string(),
    ];
    // Raw SQL, so that literals would show if the connector interpolated
    // them client-side: the placeholders prove server-side preparation.
    let agent = traced(&collector, &argv, &["--no-sanitize-sql", "--db-user"]);
    let spans = by_start(collector.wait_for(54, Duration::from_secs(10), |_| true));
    let names: Vec<&str> = spans.iter().map(|s| s.span.name.as_str()).collect();
    // The connector sets up its session, then prepares each statement once
    // and executes it.
    let mut want = vec!["SET", "SET"];
    want.extend(["INSERT items"; 50]);
    want.extend(["SELECT items", "INSERT items"]);
    assert_eq!(names, want, "{}\n{}", summary(&spans), agent.stderr());
    common_attributes(&spans, &db, false);
    assert!(spans
        .iter()
        .all(|s| s.str("db.user").as_deref() == Some("root")));
    assert_eq!(
        spans[0].str("db.query.text").as_deref(),
        Some("SET NAMES 'utf8mb4' COLLATE 'utf8mb4_general_ci'"),
        "--no-sanitize-sql keeps literals"
    );
    for s in &spans[2..52] {
        assert_eq!(
            s.str("db.query.text").as_deref(),
            Some("INSERT INTO items (id, name) VALUES (?, ?)")
        );
        assert!(!s.has("error.type"));
        assert_eq!(s.str("db.namespace").as_deref(), Some("shop"));
    }
    assert_eq!(
        spans[52].str("db.query.text").as_deref(),
        Some("SELECT name FROM items WHERE id = ?")
    );
    // ER_DUP_ENTRY.
    assert_eq!(spans[53].str("error.type").as_deref(), Some("1062"));
    assert_eq!(agent.stat("db_statements_unknown"), Some(0));
    assert_eq!(agent.stat("desyncs.mysql"), Some(0));
}

/// A connection that existed before the agent attached: recognised from
/// its first query, with no greeting or login seen.
#[test]
fn connection_opened_before_the_agent() {
    require_root();
    let db = Mariadb::start();
    db.exec(
        "CREATE DATABASE shop; \
         CREATE TABLE shop.items (id int PRIMARY KEY, name varchar(100) NOT NULL); \
         INSERT INTO shop.items VALUES (1, 'one')",
    );
    let mut client = zerospan_tests::Fixture::start(
        std::process::Command::new("python3")
            .arg(fixture("mysql_idle_client.py"))
            .arg(db.port.to_string()),
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
        [
            "SELECT items",
            "SELECT seq_1_to_5000",
            "SELECT items",
            "SELECT items"
        ],
        "{}\n{}",
        summary(&spans),
        agent.stderr()
    );
    for s in &spans {
        assert!(s.is_client());
        // Without the greeting, MySQL and MariaDB look alike.
        assert_eq!(s.str("db.system.name").as_deref(), Some("mysql"));
        assert!(!s.has("db.namespace"));
        assert_eq!(s.int("server.port"), Some(i64::from(db.port)));
        assert!(!s.has("error.type") && !s.has("zerospan.incomplete"));
    }
    assert_eq!(
        spans[3].str("db.query.text").as_deref(),
        Some("SELECT name FROM items WHERE id = ?")
    );
    assert_eq!(agent.stat("desyncs.mysql"), Some(0), "{}", agent.stderr());
    assert_eq!(agent.stat("db_orphan_replies"), Some(0));
}
