//! Tests that hold the code to ARCHITECTURE.md's invariants, by reading
//! the sources: what each stage may import, and where I/O may happen.
//! (The kernel programs' names are held to the agent's in
//! `kernel::probes`'s tests; that parsers know nothing of the agent is
//! the `zerospan-protocols` crate boundary, checked here too.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path, text));
        }
    }
    out
}

fn agent_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The code before its unit tests: tests may reach anywhere.
fn non_test(text: &str) -> &str {
    let tests =
        regex_lite::Regex::new(r"#\[cfg\(test\)\]\s*(pub(\([a-z]+\))?\s+)?mod tests").unwrap();
    tests.find(text).map_or(text, |m| &text[..m.start()])
}

/// The agent's top-level modules a file names through `crate::`, in
/// paths (`crate::spans::Span`) and in `use crate::{a::…, b}` groups.
fn crate_modules(text: &str) -> BTreeSet<String> {
    fn head(path: &str) -> Option<String> {
        let head = path.trim().split("::").next()?.trim();
        let is_module = !head.is_empty()
            && head
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        is_module.then(|| head.to_owned())
    }
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            names.extend(head(
                rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or(""),
            ));
            continue;
        };
        // Each entry at the group's top level names a module first.
        let (mut depth, mut entry, mut end) = (0, String::new(), group.len());
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    end = i;
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    names.extend(head(&std::mem::take(&mut entry)));
                    continue;
                }
                _ => {}
            }
            entry.push(c);
        }
        names.extend(head(&entry));
        rest = &group[end..];
    }
    names
}

/// Top-level module → the top-level modules it imports, for the crate
/// whose sources are in `src`. A top-level file or a folder's `mod.rs` that
/// reached a sibling stage through `super::` would escape this: they may
/// not (tests aside).
fn module_graph_of(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let src = src.to_path_buf();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in sources(&src) {
        let rel = path.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        // This file quotes the patterns it looks for.
        if top == "lib" || top == "main" || top == "architecture" {
            continue;
        }
        let stage_level = rel.components().count() == 1 || rel.ends_with("mod.rs");
        assert!(
            !(stage_level && non_test(&text).contains("super::")),
            "{} reaches another stage through super::",
            rel.display()
        );
        let deps = graph.entry(top.clone()).or_default();
        deps.extend(
            crate_modules(non_test(&text))
                .into_iter()
                .filter(|m| *m != top),
        );
    }
    let known: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| known.contains(d));
    }
    graph
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    module_graph_of(&agent_src())
}

/// Architecture invariant: the stages form a graph without cycles, so
/// each can be read (and tested) knowing only what it imports.
#[test]
fn no_top_level_module_imports_one_that_imports_it() {
    let graph = module_graph();
    assert!(
        graph.len() > 10 && graph["conn"].contains("linker"),
        "{graph:?}"
    );
    assert_no_cycle(&graph);
}

/// The same in the probes: `main.rs` lists the modules, and the program
/// families import the shared ones, never each other back.
#[test]
fn no_probe_module_imports_one_that_imports_it() {
    let ebpf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ebpf/src");
    let graph = module_graph_of(&ebpf);
    assert!(
        graph.len() > 10 && graph["data"].contains("maps"),
        "{graph:?}"
    );
    assert_no_cycle(&graph);
}

/// Panics on the first import cycle in `graph`.
fn assert_no_cycle(graph: &BTreeMap<String, BTreeSet<String>>) {
    // Depth-first search for a back edge.
    fn visit<'g>(
        m: &'g str,
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'g str>,
        done: &mut BTreeSet<&'g str>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = path.iter().position(|p| *p == m) {
            panic!("import cycle: {} → {m}", path[at..].join(" → "));
        }
        path.push(m);
        for d in &graph[m] {
            visit(d, graph, path, done);
        }
        path.pop();
        done.insert(m);
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, graph, &mut Vec::new(), &mut done);
    }
}

/// What may import what, beyond having no cycle: the shared words import
/// nothing; the kernel stage knows no protocol, span or parent; exporters
/// know only spans.
#[test]
fn each_stage_imports_only_what_it_may() {
    let graph = module_graph();
    let allowed: &[(&str, &[&str])] = &[
        ("exchange", &[]),
        ("stats", &[]),
        ("hash", &[]),
        ("clock", &[]),
        ("kernel", &["exchange", "host", "hash", "stats"]),
        ("spans", &["exchange", "clock"]),
        ("export", &["spans", "stats"]),
    ];
    for (module, may) in allowed {
        let extra: Vec<&String> = graph[*module]
            .iter()
            .filter(|d| !may.contains(&d.as_str()))
            .collect();
        assert!(extra.is_empty(), "{module} imports {extra:?}");
    }
}

/// Architecture invariant: connection modules do no I/O. They are fed
/// segments and hand out records; everything they know comes in through
/// arguments, so the tracker runs unchanged under the fuzzer and in unit
/// tests. (`replay.rs` is a test harness that reads recorded files.)
#[test]
fn connection_modules_do_no_io() {
    // Paths, and the same names inside `use a::{…}` groups.
    let forbidden = [
        r"std::(\{[^;]*\b)?(fs|io|process|thread)\b",
        r"\b(TcpStream|UdpSocket|TcpListener)\b",
        r"\b(tokio|aya)\b",
        r"\bprocfs\b",
        r"kernel::(\{[^;]*\b)?probes\b",
    ]
    .map(|f| regex_lite::Regex::new(f).unwrap());
    let conn = agent_src().join("conn");
    let files = sources(&conn);
    assert!(files.len() >= 9, "{}", files.len());
    for (path, text) in files {
        if path.ends_with("replay.rs") {
            continue;
        }
        for f in &forbidden {
            assert!(!f.is_match(non_test(&text)), "{} names {f}", path.display());
        }
    }
}

/// Architecture invariant: parsers know nothing of the agent, and do no
/// I/O: `zerospan-protocols` depends on no other crate of ours (the agent
/// depends on it, so it cannot depend back), and its code names no I/O.
#[test]
fn parsers_know_nothing_of_the_agent() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocols");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap_or_default()
        .split("\n[")
        .next()
        .unwrap_or_default();
    assert!(!deps.contains("path ="), "{deps}");
    for (path, text) in sources(&root.join("src")) {
        let io = regex_lite::Regex::new(r"std::(\{[^;]*\b)?(fs|io|net|process|thread)\b|\btokio\b")
            .unwrap();
        assert!(
            !io.is_match(non_test(&text)),
            "{} names I/O",
            path.display()
        );
    }
}

#[test]
fn import_groups_are_read_by_their_first_segments() {
    let names = crate_modules(
        "use crate::{\n    exchange::{ConnKey, Task},\n    kernel::{events::Chosen, Deepen},\n    stats,\n};\nlet x = crate::spans::Span::new();",
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(names, ["exchange", "kernel", "spans", "stats"]);
}
