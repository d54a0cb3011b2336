//! Group commit at the master: the commands of concurrent calls share Raft log entries.
//!
//! openraft appends one entry at a time and waits for each to be flushed before it takes the
//! next, so an entry per command costs an fsync (and a round to the voters) per command. Here
//! one task proposes at a time: a command that arrives while an entry is in flight waits, and
//! the next entry carries every command that waited (at most [`MAX_BATCH`]). One call alone
//! goes out at once, as before; a storm of calls costs an fsync per batch, not per call.
//! The state machine applies a batch's commands in order and answers each (`Answers`).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use futures::channel::oneshot;
use openraft::error::{ClientWriteError, RaftError};
use sheep_core::group::{Answer, Command, Proposal, MAX_BATCH};

use crate::types::Raft;

/// The longest the master waits for one entry to be committed.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(4);
/// Commands waiting for an entry, at most: past it a call is refused (it is retried).
const MAX_WAITING: usize = 16 * MAX_BATCH;

/// Why a proposed command has no answer. Its command may still be committed (a timeout, a
/// lost leadership): callers that retry carry a request id, so it applies once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// This groupd is not (or no longer) the leader.
    NotLeader,
    /// Not committed within [`COMMIT_TIMEOUT`] (no quorum of voters?).
    Timeout,
    /// Too many commands wait already.
    Busy,
    /// Raft refused or stopped.
    Raft(String),
}

struct Waiting {
    cmd: Command,
    answer: oneshot::Sender<Result<Answer, Failure>>,
}

#[derive(Default)]
struct Queue {
    waiting: RefCell<VecDeque<Waiting>>,
    /// A task is proposing; it takes what waits once its entry is committed.
    busy: Cell<bool>,
}

pub struct Proposer {
    raft: Raft,
    queue: Rc<Queue>,
}

impl Proposer {
    pub fn new(raft: Raft) -> Proposer {
        Proposer { raft, queue: Rc::default() }
    }

    /// Commits `cmd` in the next entry this groupd proposes as the leader and answers what
    /// applying it answered. Must run on the groupd's `LocalSet`.
    pub async fn propose(&self, cmd: Command) -> Result<Answer, Failure> {
        let (answer, rx) = oneshot::channel();
        {
            let mut waiting = self.queue.waiting.borrow_mut();
            if waiting.len() >= MAX_WAITING {
                return Err(Failure::Busy);
            }
            waiting.push_back(Waiting { cmd, answer });
        }
        if !self.queue.busy.replace(true) {
            tokio::task::spawn_local(propose_waiting(self.raft.clone(), self.queue.clone()));
        }
        // The entry in flight and then ours: each bounded by COMMIT_TIMEOUT in the task; a
        // caller waits no longer than one of them.
        match tokio::time::timeout(COMMIT_TIMEOUT, rx).await {
            Err(_) => Err(Failure::Timeout),
            Ok(Err(_)) => Err(Failure::Raft("the proposing task stopped".into())),
            Ok(Ok(answer)) => answer,
        }
    }
}

/// Clears `busy` however the task ends, so that the next command starts a new one.
struct Busy(Rc<Queue>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.set(false);
    }
}

/// Proposes what waits, an entry at a time, until nothing does.
async fn propose_waiting(raft: Raft, queue: Rc<Queue>) {
    let _busy = Busy(queue.clone());
    loop {
        let batch: Vec<Waiting> = {
            let mut waiting = queue.waiting.borrow_mut();
            let n = waiting.len().min(MAX_BATCH);
            waiting.drain(..n).collect()
        };
        if batch.is_empty() {
            return;
        }
        let (cmds, answers): (Vec<Command>, Vec<_>) = batch.into_iter().map(|w| (w.cmd, w.answer)).unzip();
        let n = cmds.len();
        let res = tokio::time::timeout(COMMIT_TIMEOUT, raft.client_write(Proposal::Batch { batch: cmds })).await;
        let failure = match res {
            Ok(Ok(resp)) if resp.data.len() == n => {
                for (answer, tx) in resp.data.into_iter().zip(answers) {
                    let _ = tx.send(Ok(answer));
                }
                continue;
            }
            Ok(Ok(resp)) => {
                tracing::error!("an entry of {n} commands was answered {} times", resp.data.len());
                Failure::Raft(format!("an entry of {n} commands was answered {} times", resp.data.len()))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Failure::NotLeader,
            Ok(Err(e)) => Failure::Raft(e.to_string()),
            Err(_) => Failure::Timeout,
        };
        for tx in answers {
            let _ = tx.send(Err(failure.clone()));
        }
    }
}
