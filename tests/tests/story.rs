//! The story users show each other: one click on a Flask app backed by
//! PostgreSQL and Redis, which asks an auth service first, is one trace.

use std::{process::Command, time::Duration};

use zerospan_tests::{
    assert_child, curl, procs::fixture, procs::free_port, require_root, Agent, Collector, Fixture,
    FlatSpan, Postgres, RedisServer, TempDir,
};

#[test]
fn post_api_tasks_is_one_trace_with_its_auth_sql_and_redis_calls() {
    require_root();
    let pg = Postgres::start();
    pg.exec("postgres", "CREATE DATABASE shop");
    pg.exec(
        "shop",
        "CREATE TABLE tasks (id serial PRIMARY KEY, title text NOT NULL)",
    );
    let redis_port = free_port();
    let _redis = RedisServer::start(redis_port);
    let root = TempDir::new("auth");
    std::fs::write(root.0.join("auth"), "ok").unwrap();
    let auth = Fixture::http_server("127.0.0.1", &root.0, &[("OTEL_SERVICE_NAME", "auth")]);
    let app = Fixture::start(
        Command::new("python3")
            .arg(fixture("flask_app.py"))
            .arg(pg.port.to_string())
            .arg(redis_port.to_string())
            .arg(format!("http://127.0.0.1:{}/auth", auth.port))
            .env("OTEL_SERVICE_NAME", "tasks-api"),
    );
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[app.pid(), auth.pid()], &collector, &[]);
    let body = curl(&[
        "-s",
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"title": "secret plans"}"#,
        &format!("http://127.0.0.1:{}/api/tasks", app.port),
    ]);
    assert!(body.contains(r#""id":1"#), "{body}");
    // redis-py introduces itself on its first connection (CLIENT SETINFO
    // twice) and sends INCR as INCRBY.
    let spans = collector.wait_for(8, Duration::from_secs(10), |_| true);
    assert!(agent.stop().success());
    let names: Vec<String> = spans
        .iter()
        .map(|s| format!("{} {}", s.res_str("service.name").unwrap(), s.span.name))
        .collect();
    assert_eq!(spans.len(), 8, "{names:?}\n{}", agent.stderr());
    let find = |service: &str, name: &str| -> &FlatSpan {
        spans
            .iter()
            .find(|s| s.res_str("service.name").as_deref() == Some(service) && s.span.name == name)
            .unwrap_or_else(|| panic!("no {service} {name:?} in {names:?}"))
    };
    let request = find("tasks-api", "POST");
    assert!(request.is_server());
    assert_eq!(request.str("url.path").as_deref(), Some("/api/tasks"));
    assert_eq!(request.int("http.response.status_code"), Some(201));
    assert!(
        request.span.parent_span_id.is_empty(),
        "the click is the root"
    );

    let auth_call = find("tasks-api", "GET");
    assert_eq!(
        auth_call.str("url.full").as_deref(),
        Some(format!("http://127.0.0.1:{}/auth", auth.port).as_str())
    );
    let auth_server = find("auth", "GET");
    let insert = find("tasks-api", "INSERT tasks");
    assert_eq!(
        insert.str("db.query.text").as_deref(),
        Some("INSERT INTO tasks (title) VALUES ($1) RETURNING id")
    );
    assert_eq!(insert.str("db.namespace").as_deref(), Some("shop"));
    let incr = find("tasks-api", "INCRBY");
    let set = find("tasks-api", "SET");
    assert_eq!(set.str("db.query.text").as_deref(), Some("SET ? ?"));
    let hello: Vec<&FlatSpan> = spans.iter().filter(|s| s.span.name == "CLIENT").collect();
    assert_eq!(hello.len(), 2, "{names:?}");
    for child in [auth_call, insert, incr, set, hello[0], hello[1]] {
        assert!(child.is_client());
        assert_child(child, request);
    }
    assert_child(auth_server, auth_call);
    // In the order the handler made them.
    let starts: Vec<u64> = [auth_call, insert, incr, set]
        .iter()
        .map(|s| s.span.start_time_unix_nano)
        .collect();
    assert!(starts.is_sorted(), "{names:?}");
}
