//! Go programs' goroutines: who does the work a request causes.
//!
//! In a thread-per-request server, the thread that read a request makes
//! its calls. A Go program runs goroutines on any thread, so the probes
//! name the goroutine of each read and write instead (see `go_runtime.rs`
//! in the probes), and the linker asks this module two questions:
//!
//! - **Which goroutine is a call made for?** Usually the one that writes
//!   it. But `net/http`'s client hands each request to the connection's
//!   writer goroutine (`persistConn.writeLoop`): the goroutine that asked
//!   for the round trip on that connection is the one the write is for.
//! - **What was a goroutine started under?** A goroutine started by one
//!   that was serving a request (a handler's `go func() { … }()`, an
//!   errgroup) works for that request, and so do the ones it starts. That
//!   holds only while the request is in flight: a worker started by the
//!   first request it served must not stay that request's forever (OBI's
//!   bug #2577), so the linker checks the request is still in flight
//!   before it uses it, and counts it as stale otherwise.
//!
//! A `g` is reused for a new goroutine once its goroutine ends; every new
//! goroutine comes from `runtime.newproc1`, whose report clears what was
//! known of the old one (the linker also drops what the old one was
//! serving). When the kernel drops events, a report may be missing, so
//! everything is forgotten ([`Goroutines::events_lost`]) at the next tick,
//! when the agent reads the kernel's drop counters: what is linked from
//! events between the drop and that tick is the exposure left.
//!
//! Pure bookkeeping, bounded; no I/O.

use crate::hash::{Map, Set};

use crate::exchange::Task;

/// Who serves a request, for the calls it causes: a thread, or in a Go
/// program a goroutine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Doer {
    Thread(u32),
    Goroutine(u64),
}

/// The request a goroutine was started under: the span id of the server
/// request its starter was serving (or was started under), and who serves
/// that request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Under {
    pub doer: Doer,
    pub span_id: [u8; 8],
}

/// What a writer goroutine's request is, by `net/http`'s hand-off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asker {
    /// Not a `net/http` writer: the goroutine writes for itself.
    Itself,
    /// The goroutine that asked for the round trip.
    Goroutine(u64),
    /// A writer, but no round trip was seen asked for on its connection
    /// (its event lost, or it started before the probes).
    Unknown,
}

/// Most entries in each of the tables below; past it, a new goroutine or
/// connection is not remembered (its calls stay roots) and the agent
/// counts it.
const MAX_ENTRIES: usize = 65_536;

/// A round trip asked for on a connection, not written yet.
#[derive(Clone, Copy, Debug)]
struct Asked {
    g: u64,
    at_ns: u64,
}

#[derive(Default)]
pub struct Goroutines {
    /// Go processes.
    procs: Set<u32>,
    /// By (tgid, g): the request each goroutine was started under.
    under: Map<(u32, u64), Under>,
    /// By (tgid, writer g): the `*persistConn` a writer goroutine writes.
    writers: Map<(u32, u64), u64>,
    /// By (tgid, `*persistConn`): whose request the connection writes next.
    asked: Map<(u32, u64), Asked>,
    /// By (tgid, g): the connection a goroutine's round trip waits on,
    /// so that a reused `g` can take its old question back.
    asking: Map<(u32, u64), u64>,
}

/// A table was full: the fact was not remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

fn insert_bounded<K: std::hash::Hash + Eq, V>(
    map: &mut Map<K, V>,
    key: K,
    value: V,
) -> Result<(), Full> {
    if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
        return Err(Full);
    }
    map.insert(key, value);
    Ok(())
}

impl Goroutines {
    /// Whether `tgid` runs Go.
    pub fn set_go(&mut self, tgid: u32, go: bool) {
        if go {
            self.procs.insert(tgid);
        } else {
            self.forget_process(tgid);
        }
    }

    pub fn is_go(&self, tgid: u32) -> bool {
        self.procs.contains(&tgid)
    }

    /// Who did what `task` did in process `tgid`: its thread, or in a Go
    /// program its goroutine; `None` in a Go program when the probes did
    /// not name the goroutine (the thread means nothing there).
    pub fn doer(&self, tgid: u32, task: Task) -> Option<Doer> {
        if !self.is_go(tgid) {
            return Some(Doer::Thread(task.tid));
        }
        (task.goroutine != 0).then_some(Doer::Goroutine(task.goroutine))
    }

    /// A goroutine `child` started, under `under` if its starter served
    /// (or was started under) a request in flight. Nothing known of the
    /// last goroutine with the same `g` holds any more.
    pub fn spawned(&mut self, tgid: u32, child: u64, under: Option<Under>) -> Result<(), Full> {
        self.under.remove(&(tgid, child));
        self.writers.remove(&(tgid, child));
        if let Some(conn) = self.asking.remove(&(tgid, child)) {
            if self.asked.get(&(tgid, conn)).is_some_and(|a| a.g == child) {
                self.asked.remove(&(tgid, conn));
            }
        }
        match under {
            Some(under) => insert_bounded(&mut self.under, (tgid, child), under),
            None => Ok(()),
        }
    }

    /// The request goroutine `g` was started under, if any.
    pub fn under(&self, tgid: u32, g: u64) -> Option<Under> {
        self.under.get(&(tgid, g)).copied()
    }

    /// Forgets that `g` was started under a request that has ended: it
    /// will not be in flight again.
    pub fn forget_under(&mut self, tgid: u32, g: u64) {
        self.under.remove(&(tgid, g));
    }

    /// Goroutine `g` writes `*persistConn` `conn`'s requests.
    pub fn write_loop(&mut self, tgid: u32, g: u64, conn: u64) -> Result<(), Full> {
        insert_bounded(&mut self.writers, (tgid, g), conn)
    }

    /// Goroutine `g` asked, at `at_ns`, for a request on `*persistConn`
    /// `conn`.
    pub fn round_trip(&mut self, tgid: u32, g: u64, conn: u64, at_ns: u64) -> Result<(), Full> {
        insert_bounded(&mut self.asked, (tgid, conn), Asked { g, at_ns })?;
        insert_bounded(&mut self.asking, (tgid, g), conn)
    }

    /// Whom the request goroutine `g` writes now is for. A round trip is
    /// asked for once per request, so the answer is used up.
    pub fn asker(&mut self, tgid: u32, g: u64) -> Asker {
        let Some(&conn) = self.writers.get(&(tgid, g)) else {
            return Asker::Itself;
        };
        match self.asked.remove(&(tgid, conn)) {
            Some(a) => {
                if self.asking.get(&(tgid, a.g)) == Some(&conn) {
                    self.asking.remove(&(tgid, a.g));
                }
                Asker::Goroutine(a.g)
            }
            None => Asker::Unknown,
        }
    }

    /// Forgets round trips asked before `cutoff_ns` and never written
    /// (the request was cancelled before its write), and goroutines
    /// started under requests that are no longer `in_flight`.
    pub fn sweep(&mut self, cutoff_ns: u64, in_flight: impl Fn(u32, &Under) -> bool) {
        self.asked.retain(|_, a| a.at_ns >= cutoff_ns);
        let asked = &self.asked;
        self.asking
            .retain(|&(tgid, g), conn| asked.get(&(tgid, *conn)).is_some_and(|a| a.g == g));
        self.under.retain(|&(tgid, _), u| in_flight(tgid, u));
    }

    /// The kernel dropped events: a goroutine's start, or a round trip,
    /// may be missing, and what is known may belong to goroutines that
    /// ended. Forget it all; goroutines started from now on are followed.
    pub fn events_lost(&mut self) {
        self.under.clear();
        self.writers.clear();
        self.asked.clear();
        self.asking.clear();
    }

    /// Forgets what is known of `tgid`'s goroutines (it exited, or exec'd
    /// another image, whose goroutines may have the same addresses).
    pub fn forget_goroutines(&mut self, tgid: u32) {
        self.under.retain(|(t, _), _| *t != tgid);
        self.writers.retain(|(t, _), _| *t != tgid);
        self.asked.retain(|(t, _), _| *t != tgid);
        self.asking.retain(|(t, _), _| *t != tgid);
    }

    pub fn forget_process(&mut self, tgid: u32) {
        self.procs.remove(&tgid);
        self.forget_goroutines(tgid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(tid: u32, goroutine: u64) -> Task {
        Task { tid, goroutine }
    }

    #[test]
    fn a_go_program_is_served_by_goroutines_and_others_by_threads() {
        let mut go = Goroutines::default();
        go.set_go(1, true);
        assert_eq!(go.doer(1, task(7, 0xc0)), Some(Doer::Goroutine(0xc0)));
        assert_eq!(go.doer(1, task(7, 0)), None);
        assert_eq!(go.doer(2, task(7, 0xc0)), Some(Doer::Thread(7)));
        go.set_go(1, false);
        assert_eq!(go.doer(1, task(7, 0xc0)), Some(Doer::Thread(7)));
    }

    #[test]
    fn a_writer_writes_for_whoever_asked_once() {
        let mut go = Goroutines::default();
        go.set_go(1, true);
        go.write_loop(1, 0xa0, 0x500).unwrap();
        assert_eq!(go.asker(1, 0xb0), Asker::Itself);
        assert_eq!(go.asker(1, 0xa0), Asker::Unknown);
        go.round_trip(1, 0xc0, 0x500, 0).unwrap();
        assert_eq!(go.asker(1, 0xa0), Asker::Goroutine(0xc0));
        // Used up: the next request on the connection is asked for again.
        assert_eq!(go.asker(1, 0xa0), Asker::Unknown);
        // Another process's connection at the same address is its own.
        go.round_trip(2, 0xd0, 0x500, 0).unwrap();
        assert_eq!(go.asker(1, 0xa0), Asker::Unknown);
    }

    #[test]
    fn a_reused_g_forgets_its_last_goroutine() {
        let mut go = Goroutines::default();
        go.set_go(1, true);
        let under = Under {
            doer: Doer::Goroutine(0xc0),
            span_id: [1; 8],
        };
        go.spawned(1, 0xa0, Some(under)).unwrap();
        go.write_loop(1, 0xa0, 0x500).unwrap();
        assert_eq!(go.under(1, 0xa0), Some(under));
        // The goroutine ended; its g is reused by one started under nothing.
        go.spawned(1, 0xa0, None).unwrap();
        assert_eq!(go.under(1, 0xa0), None);
        assert_eq!(go.asker(1, 0xa0), Asker::Itself);
    }

    #[test]
    fn lost_events_forget_everything_but_which_processes_run_go() {
        let mut go = Goroutines::default();
        go.set_go(1, true);
        let under = Under {
            doer: Doer::Goroutine(0xc0),
            span_id: [1; 8],
        };
        go.spawned(1, 0xa0, Some(under)).unwrap();
        go.write_loop(1, 0xb0, 0x500).unwrap();
        go.round_trip(1, 0xc0, 0x500, 0).unwrap();
        go.events_lost();
        assert_eq!(go.under(1, 0xa0), None);
        assert_eq!(go.asker(1, 0xb0), Asker::Itself);
        assert!(go.is_go(1));
    }

    #[test]
    fn a_reused_g_takes_back_the_round_trip_its_old_goroutine_asked() {
        let mut go = Goroutines::default();
        go.set_go(1, true);
        go.write_loop(1, 0x71, 0x500).unwrap();
        // 0xc0 asked, and ended before its request was written; a new
        // goroutine gets its g.
        go.round_trip(1, 0xc0, 0x500, 10).unwrap();
        go.spawned(1, 0xc0, None).unwrap();
        assert_eq!(go.asker(1, 0x71), Asker::Unknown);
    }

    #[test]
    fn the_sweep_forgets_unwritten_round_trips_and_ended_requests() {
        let mut go = Goroutines::default();
        go.set_go(1, true);
        go.write_loop(1, 0x71, 0x500).unwrap();
        go.round_trip(1, 0xc0, 0x500, 10).unwrap();
        let under = |span: u8| Under {
            doer: Doer::Goroutine(0xa),
            span_id: [span; 8],
        };
        go.spawned(1, 0xd1, Some(under(1))).unwrap();
        go.spawned(1, 0xd2, Some(under(2))).unwrap();
        go.sweep(20, |_, u| u.span_id == [2; 8]);
        assert_eq!(go.asker(1, 0x71), Asker::Unknown);
        assert_eq!(go.under(1, 0xd1), None);
        assert_eq!(go.under(1, 0xd2), Some(under(2)));
        assert!(go.asking.is_empty());
    }
}
