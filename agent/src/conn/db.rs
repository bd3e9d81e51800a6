//! One key-value store client connection (Redis, memcached): commands
//! paired with their replies, in order (both protocols guarantee it,
//! pipelines and Redis's MULTI/EXEC included).
//!
//! No I/O: segments in, finished [`Call`]s out, like `http1`'s HTTP
//! connections. When reply framing is lost, the commands waiting for a
//! reply end as `ResponseLost` rather than being paired by guess, and the
//! reply stream resynchronises when the client next writes a command after
//! everything it sent was answered or given up.

use crate::exchange::{Outcome, ReplyStatus, Role, Task};
use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    sync::Arc,
};

use zerospan_protocols::{
    memcache,
    resp::{self, Command, Direction, Reply},
    stream::{Segment, Stamp},
};

use super::protocol::{Cx, Protocol, Verdict};
use crate::{
    linker::Start,
    spans::{
        self,
        context::SpanContext,
        db::{Call, Operation},
    },
    stats::Stats,
};

/// Most commands one connection may have waiting for replies (pipelines);
/// past it the oldest end unanswered.
const MAX_PENDING: usize = 1024;

/// How SQL connections report what they see.
#[derive(Clone, Copy, Debug)]
pub struct SqlOptions {
    /// Replace literals with `?` in `db.query.text`.
    pub sanitize: bool,
    /// Export the database user as `db.user` (off unless asked for).
    pub user: bool,
}

/// Most prepared statements (and, for PostgreSQL, named portals) one SQL
/// connection remembers; past it, new names are not remembered (counted).
pub const MAX_STATEMENTS: usize = 256;

/// Remembers `name → op` unless the map is full of other names.
pub fn remember<K: Hash + Eq>(
    map: &mut HashMap<K, Arc<Operation>>,
    name: K,
    op: Arc<Operation>,
    stats: &Stats,
) {
    if map.len() >= MAX_STATEMENTS && !map.contains_key(&name) {
        Stats::inc(&stats.db_statements_not_remembered);
        return;
    }
    map.insert(name, op);
}

/// Which store, and its two framers.
enum Framers {
    Redis {
        commands: resp::Framer,
        replies: resp::Framer,
    },
    Memcached {
        commands: memcache::Framer,
        replies: memcache::Framer,
    },
}

impl Framers {
    fn commands_lost(&self) -> bool {
        match self {
            Framers::Redis { commands, .. } => commands.is_lost(),
            Framers::Memcached { commands, .. } => commands.is_lost(),
        }
    }

    fn replies_lost(&self) -> bool {
        match self {
            Framers::Redis { replies, .. } => replies.is_lost(),
            Framers::Memcached { replies, .. } => replies.is_lost(),
        }
    }

    fn resync_commands_at(&mut self, bytes: &[u8]) {
        match self {
            Framers::Redis { commands, .. }
                if resp::looks_like_start(Direction::Commands, bytes) =>
            {
                commands.resync()
            }
            Framers::Memcached { commands, .. } if memcache::looks_like_start(bytes) => {
                commands.resync()
            }
            _ => {}
        }
    }

    fn resync_replies(&mut self) {
        match self {
            Framers::Redis { replies, .. } => replies.resync(),
            Framers::Memcached { replies, .. } => replies.resync(),
        }
    }
}

pub struct DbConn {
    /// `db.system.name`.
    pub system: &'static str,
    framers: Framers,
    pending: VecDeque<Call>,
    pub finished: Vec<Call>,
    last_at: Stamp,
    /// Replies still owed to commands that timed out (see `ReplySink`).
    owed: u32,
    /// Redis's database index, once known: 0 from a connection's start,
    /// then what `SELECT` chooses.
    namespace: Option<Arc<str>>,
}

/// Gives each framed command its context and queues it.
struct CommandSink<'a, F: FnMut() -> SpanContext> {
    pending: &'a mut VecDeque<Call>,
    finished: &'a mut Vec<Call>,
    owed: &'a mut u32,
    namespace: &'a mut Option<Arc<str>>,
    context: F,
    task: Task,
    stats: &'a Stats,
}

impl<F: FnMut() -> SpanContext> resp::Sink for CommandSink<'_, F> {
    fn on_command(&mut self, command: Command, at: Stamp) {
        self.queue(command, at);
    }

    fn on_reply(&mut self, _reply: Reply, _at: Stamp) {}
}

impl<F: FnMut() -> SpanContext> memcache::Sink for CommandSink<'_, F> {
    fn on_command(&mut self, command: Command, noreply: bool, at: Stamp) {
        self.queue(command, at);
        if noreply {
            // Nothing will answer it: complete as sent.
            if let Some(call) = self.pending.pop_back() {
                self.finished.push(call);
            }
        }
    }

    fn on_reply(&mut self, _reply: Reply, _at: Stamp) {}
}

impl<F: FnMut() -> SpanContext> CommandSink<'_, F> {
    fn queue(&mut self, command: Command, at: Stamp) {
        if self.pending.len() >= MAX_PENDING {
            if let Some(mut oldest) = self.pending.pop_front() {
                oldest.outcome = Outcome::ResponseLost;
                Stats::inc(&self.stats.db_pipeline_overflow);
                self.finished.push(oldest);
                // Its reply still comes, first: skip it, not pair it.
                *self.owed += 1;
            }
        }
        let namespace = self.namespace.clone();
        if let Some(index) = command.db_index {
            // Commands after it, pipelined or not, run in that database.
            *self.namespace = Some(index.to_string().into());
        }
        self.pending.push_back(Call::sent(
            (self.context)(),
            Arc::new(Operation::command(&command)),
            namespace,
            None,
            self.task,
            at,
        ));
    }
}

struct ReplySink<'a> {
    pending: &'a mut VecDeque<Call>,
    finished: &'a mut Vec<Call>,
    owed: &'a mut u32,
    stats: &'a Stats,
}

impl resp::Sink for ReplySink<'_> {
    fn on_command(&mut self, _cmd: Command, _at: Stamp) {}

    fn on_reply(&mut self, reply: Reply, at: Stamp) {
        self.answer(reply, at);
    }
}

impl memcache::Sink for ReplySink<'_> {
    fn on_command(&mut self, _cmd: Command, _noreply: bool, _at: Stamp) {}

    fn on_reply(&mut self, reply: Reply, at: Stamp) {
        self.answer(reply, at);
    }
}

impl ReplySink<'_> {
    fn answer(&mut self, reply: Reply, at: Stamp) {
        // Replies arrive in order: the first ones answer the commands that
        // timed out, which are already reported.
        if *self.owed > 0 {
            *self.owed -= 1;
            Stats::inc(&self.stats.db_orphan_replies);
            return;
        }
        match self.pending.pop_front() {
            Some(mut call) => {
                call.reply = Some(match reply {
                    Reply::Ok => ReplyStatus::Ok,
                    Reply::Error(word) => ReplyStatus::Error(word),
                });
                call.end_at = at;
                self.finished.push(call);
            }
            // Pub/sub pushes, or replies to commands sent before we attached.
            None => Stats::inc(&self.stats.db_orphan_replies),
        }
    }
}

impl DbConn {
    pub fn redis() -> Self {
        Self::with(
            "redis",
            Framers::Redis {
                commands: resp::Framer::new(Direction::Commands),
                replies: resp::Framer::new(Direction::Replies),
            },
        )
    }

    pub fn memcached() -> Self {
        Self::with(
            "memcached",
            Framers::Memcached {
                commands: memcache::Framer::new(memcache::Direction::Commands),
                replies: memcache::Framer::new(memcache::Direction::Replies),
            },
        )
    }

    fn with(system: &'static str, framers: Framers) -> Self {
        DbConn {
            system,
            framers,
            pending: VecDeque::new(),
            finished: Vec::new(),
            last_at: Stamp::default(),
            owed: 0,
            namespace: None,
        }
    }

    /// The connection was seen from its start: Redis begins in database 0.
    pub fn seen_from_start(mut self) -> Self {
        if self.system == "redis" {
            self.namespace = Some("0".into());
        }
        self
    }

    /// Feeds one segment. `context` gives a new command its span context.
    pub fn feed(
        &mut self,
        egress: bool,
        task: Task,
        seg: Segment<'_>,
        context: impl FnMut() -> SpanContext,
        stats: &Stats,
    ) {
        self.last_at = seg.stamp;
        if egress {
            if self.framers.commands_lost() {
                self.framers.resync_commands_at(seg.bytes);
            }
            // Every earlier command was answered or given up: the next
            // reply starts a message.
            if self.framers.replies_lost() && self.pending.is_empty() {
                self.framers.resync_replies();
                // What was owed was in the lost bytes, or never comes.
                self.owed = 0;
            }
            let was_lost = self.framers.commands_lost();
            let mut sink = CommandSink {
                pending: &mut self.pending,
                finished: &mut self.finished,
                owed: &mut self.owed,
                namespace: &mut self.namespace,
                context,
                task,
                stats,
            };
            match &mut self.framers {
                Framers::Redis { commands, .. } => commands.feed(seg, &mut sink),
                Framers::Memcached { commands, .. } => commands.feed(seg, &mut sink),
            }
            if self.framers.commands_lost() && !was_lost {
                stats.desync(self.system);
            }
        } else {
            let was_lost = self.framers.replies_lost();
            let mut sink = ReplySink {
                pending: &mut self.pending,
                finished: &mut self.finished,
                owed: &mut self.owed,
                stats,
            };
            match &mut self.framers {
                Framers::Redis { replies, .. } => replies.feed(seg, &mut sink),
                Framers::Memcached { replies, .. } => replies.feed(seg, &mut sink),
            }
            if self.framers.replies_lost() && !was_lost {
                stats.desync(self.system);
                // The replies of every waiting command may have been in the
                // bytes we could not frame.
                self.end_pending(Outcome::ResponseLost, seg.stamp);
            }
        }
    }

    /// Ends every command still waiting: the connection closed, the agent
    /// stopped, or its replies could not be framed.
    pub fn end_pending(&mut self, outcome: Outcome, at: Stamp) {
        if outcome == Outcome::TimedOut {
            // Their replies may still come, ahead of any later command's.
            self.owed = self.owed.saturating_add(self.pending.len() as u32);
        }
        for mut call in self.pending.drain(..) {
            call.outcome = outcome;
            call.end_at = at;
            self.finished.push(call);
        }
    }
}

/// The span context of each call a database connection's framer finds in
/// one segment: the child of what the thread serves, or a root.
pub fn call_context<'c, 'a>(
    cx: &'c mut Cx<'a>,
    task: Task,
    at: Stamp,
) -> impl FnMut() -> SpanContext + use<'c, 'a> {
    move || cx.start(Role::Client, task, at, Start::UNLINKED)
}

/// Hands a database connection's finished calls out as records.
pub fn collect(system: &'static str, finished: &mut Vec<Call>, cx: &mut Cx<'_>) {
    for call in finished.drain(..) {
        cx.finish(spans::db::record(system, &call, cx.ends, cx.key.tgid));
    }
}

impl Protocol for DbConn {
    fn name(&self) -> &'static str {
        self.system
    }

    fn feed(&mut self, egress: bool, task: Task, seg: Segment<'_>, cx: &mut Cx<'_>) -> Verdict {
        let stats = cx.stats;
        self.feed(egress, task, seg, call_context(cx, task, seg.stamp), stats);
        collect(self.system, &mut self.finished, cx);
        Verdict::Continue
    }

    fn waiting_since(&self) -> Option<u64> {
        self.pending.front().map(|c| c.sent_at.enter_ns)
    }

    fn end_all(&mut self, outcome: Outcome, cx: &mut Cx<'_>) {
        self.end_pending(outcome, self.last_at);
        collect(self.system, &mut self.finished, cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::seg;

    fn names(calls: &[Call]) -> Vec<(String, Option<ReplyStatus>, Outcome)> {
        calls
            .iter()
            .map(|c| (c.op.name.clone().unwrap(), c.reply.clone(), c.outcome))
            .collect()
    }

    #[test]
    fn pipelines_and_transactions_pair_in_order() {
        let stats = Stats::default();
        let mut c = DbConn::redis();
        let cmds = b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n\
            *2\r\n$4\r\nINCR\r\n$1\r\nk\r\n*1\r\n$4\r\nEXEC\r\n";
        c.feed(
            true,
            Task::thread(7),
            seg(cmds, 10),
            SpanContext::root,
            &stats,
        );
        c.feed(
            false,
            Task::thread(7),
            seg(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n", 20),
            SpanContext::root,
            &stats,
        );
        c.feed(
            false,
            Task::thread(7),
            seg(b"*2\r\n+OK\r\n-ERR value is not an integer\r\n", 30),
            SpanContext::root,
            &stats,
        );
        let ok = Some(ReplyStatus::Ok);
        assert_eq!(
            names(&c.finished),
            vec![
                ("MULTI".into(), ok.clone(), Outcome::Complete),
                ("SET".into(), ok.clone(), Outcome::Complete),
                ("INCR".into(), ok.clone(), Outcome::Complete),
                ("EXEC".into(), ok, Outcome::Complete),
            ]
        );
        assert_eq!(c.finished[3].end_at.exit_ns, 31);
        assert_eq!(c.finished[0].task, Task::thread(7));
    }

    #[test]
    fn error_replies_and_lost_framing() {
        let stats = Stats::default();
        let mut c = DbConn::redis();
        c.feed(
            true,
            Task::thread(1),
            seg(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", 10),
            SpanContext::root,
            &stats,
        );
        c.feed(
            false,
            Task::thread(1),
            seg(b"-WRONGTYPE Operation against a key\r\n", 20),
            SpanContext::root,
            &stats,
        );
        assert_eq!(
            c.finished[0].reply,
            Some(ReplyStatus::Error("WRONGTYPE".into()))
        );
        // A reply whose type line was not captured: the waiting command is
        // given up, and the next command/reply pair is framed again.
        c.feed(
            true,
            Task::thread(1),
            seg(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", 30),
            SpanContext::root,
            &stats,
        );
        let lost = Segment {
            bytes: b"",
            len: 5000,
            stamp: Stamp {
                enter_ns: 40,
                exit_ns: 41,
            },
        };
        c.feed(false, Task::thread(1), lost, SpanContext::root, &stats);
        assert_eq!(c.finished[1].outcome, Outcome::ResponseLost);
        c.feed(
            true,
            Task::thread(1),
            seg(b"*1\r\n$4\r\nPING\r\n", 50),
            SpanContext::root,
            &stats,
        );
        c.feed(
            false,
            Task::thread(1),
            seg(b"+PONG\r\n", 60),
            SpanContext::root,
            &stats,
        );
        assert_eq!(c.finished[2].op.name.as_deref(), Some("PING"));
        assert_eq!(c.finished[2].reply, Some(ReplyStatus::Ok));
    }

    #[test]
    fn redis_select_sets_the_namespace_of_later_commands() {
        let stats = Stats::default();
        let mut c = DbConn::redis().seen_from_start();
        let cmds = b"*1\r\n$4\r\nPING\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n*1\r\n$4\r\nPING\r\n";
        c.feed(
            true,
            Task::thread(1),
            seg(cmds, 10),
            SpanContext::root,
            &stats,
        );
        c.feed(
            false,
            Task::thread(1),
            seg(b"+PONG\r\n+OK\r\n+PONG\r\n", 20),
            SpanContext::root,
            &stats,
        );
        let ns: Vec<Option<&str>> = c.finished.iter().map(|c| c.namespace.as_deref()).collect();
        assert_eq!(ns, [Some("0"), Some("0"), Some("2")]);
        // Joined mid-stream: unknown until a SELECT.
        let mut c = DbConn::redis();
        c.feed(
            true,
            Task::thread(1),
            seg(b"*1\r\n$4\r\nPING\r\n", 30),
            SpanContext::root,
            &stats,
        );
        c.feed(
            false,
            Task::thread(1),
            seg(b"+PONG\r\n", 40),
            SpanContext::root,
            &stats,
        );
        assert_eq!(c.finished[0].namespace, None);
    }

    #[test]
    fn memcached_noreply_commands_do_not_shift_the_pairing() {
        let stats = Stats::default();
        let mut c = DbConn::memcached();
        let cmds = b"set a 0 0 1 noreply\r\nx\r\nget a\r\ndelete b\r\n";
        c.feed(
            true,
            Task::thread(1),
            seg(cmds, 10),
            SpanContext::root,
            &stats,
        );
        c.feed(
            false,
            Task::thread(1),
            seg(b"VALUE a 0 1\r\nx\r\nEND\r\nNOT_FOUND\r\n", 20),
            SpanContext::root,
            &stats,
        );
        let ok = Some(ReplyStatus::Ok);
        assert_eq!(
            names(&c.finished),
            vec![
                ("set".into(), None, Outcome::Complete),
                ("get".into(), ok.clone(), Outcome::Complete),
                ("delete".into(), ok, Outcome::Complete),
            ]
        );
        assert_eq!(c.system, "memcached");
    }

    #[test]
    fn query_text_never_holds_arguments() {
        let op = |name: &str, args| {
            Operation::command(&Command {
                name: name.into(),
                args,
                db_index: None,
            })
            .query_text
        };
        assert_eq!(op("SET", 2), "SET ? ?");
        assert_eq!(op("PING", 0), "PING");
        let long = op("MSET", 40);
        assert!(
            long.starts_with("MSET ? ?") && long.ends_with(" …"),
            "{long}"
        );
    }

    /// A late reply to a command that timed out must not pair with the
    /// next command.
    #[test]
    fn late_replies_after_a_timeout_are_skipped() {
        let stats = Stats::default();
        let mut c = DbConn::redis();
        c.feed(
            true,
            Task::thread(1),
            seg(b"*1\r\n$4\r\nPING\r\n", 10),
            SpanContext::root,
            &stats,
        );
        c.end_pending(Outcome::TimedOut, Stamp::default());
        c.feed(
            true,
            Task::thread(1),
            seg(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", 20),
            SpanContext::root,
            &stats,
        );
        c.feed(
            false,
            Task::thread(1),
            seg(b"+PONG\r\n-ERR nope\r\n", 30),
            SpanContext::root,
            &stats,
        );
        let got = names(&c.finished);
        assert_eq!(got[0], ("PING".into(), None, Outcome::TimedOut));
        assert_eq!(
            got[1],
            (
                "GET".into(),
                Some(ReplyStatus::Error("ERR".into())),
                Outcome::Complete
            )
        );
    }
}
