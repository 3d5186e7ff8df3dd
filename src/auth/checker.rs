//! The password checker: a small pool of threads that run argon2, so a worker never does. A login asks
//! the pool and waits (the request core's ticket); the pool calls back when the verdict is in. The queue
//! is bounded: a login storm gets "busy" answers at once instead of a queue that grows without end (the
//! next issue's lockout and rate limits sit in front of it).

use crate::base::pool::TaskPool;

/// What to check.
pub enum Check {
    /// A password against a user's PHC hash.
    Password { phc: String, password: String },
    /// A password for a user that does not exist: costs the same as a failed check, always fails (so a
    /// failed login takes the same time whether the user exists or not).
    Unknown { password: String },
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password (nor the hash).
        f.write_str(match self {
            Check::Password { .. } => "Check::Password",
            Check::Unknown { .. } => "Check::Unknown",
        })
    }
}

/// Called on a pool thread with the verdict (`true`: the password is right).
pub type Done = Box<dyn FnOnce(bool) + Send>;

/// The queue is full: too many checks waiting. The login is answered "try again later".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the password checker is busy: too many logins at once")]
pub struct Busy;

/// Other argon2 work for the pool's threads: hashing a new password (self-registration), with the
/// result handed back by the closure itself.
pub type Task = crate::base::pool::Task;

/// The pool: the checks and tasks share its threads and its bounded queue.
#[derive(Debug)]
pub struct Checker {
    pool: TaskPool,
}

impl Checker {
    /// `threads` checking threads (at least one, named `password-N`), with room for `queue` checks waiting.
    pub fn start(threads: usize, queue: usize) -> std::io::Result<Checker> {
        Ok(Checker {
            pool: TaskPool::start("password", threads, queue)?,
        })
    }

    /// Queues a check; `done` is called with the verdict on a pool thread. Never blocks.
    pub fn submit(&self, check: Check, done: Done) -> Result<(), Busy> {
        self.submit_task(Box::new(move || done(run(check))))
    }

    /// Queues other argon2 work (hashing a new password) on the same threads and the same bounded queue.
    pub fn submit_task(&self, task: Task) -> Result<(), Busy> {
        self.pool.submit(task).map_err(|_| Busy)
    }
}

fn run(check: Check) -> bool {
    match check {
        Check::Password { phc, password } => super::password::verify(&phc, &password),
        Check::Unknown { password } => super::password::dummy_verify(&password),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn checks_run_on_pool_threads_and_call_back() {
        let phc = super::super::password::hash("correct horse").unwrap();
        let checker = Checker::start(2, 8).unwrap();
        let (tx, rx) = mpsc::channel();
        for (i, password) in ["correct horse", "wrong horse"].into_iter().enumerate() {
            let tx = tx.clone();
            checker
                .submit(
                    Check::Password {
                        phc: phc.clone(),
                        password: password.into(),
                    },
                    Box::new(move |ok| {
                        let name = std::thread::current().name().map(str::to_owned);
                        tx.send((i, ok, name)).unwrap();
                    }),
                )
                .unwrap();
        }
        let tx2 = tx.clone();
        checker
            .submit(
                Check::Unknown {
                    password: "correct horse".into(),
                },
                Box::new(move |ok| tx2.send((2, ok, None)).unwrap()),
            )
            .unwrap();
        let mut got: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        got.sort_by_key(|g| g.0);
        assert!(got[0].1, "the right password");
        assert!(!got[1].1, "a wrong password");
        assert!(!got[2].1, "an unknown user never matches");
        assert!(got[0].2.as_deref().unwrap().starts_with("password-"));
    }

    #[test]
    fn a_full_queue_answers_busy_at_once() {
        // One thread, held by a check that waits on a gate; one queue slot.
        let checker = Checker::start(1, 1).unwrap();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        checker
            .submit(
                Check::Unknown {
                    password: "x".into(),
                },
                Box::new(move |_| {
                    started_tx.send(()).unwrap();
                    gate_rx.recv().unwrap();
                }),
            )
            .unwrap();
        started_rx.recv().unwrap(); // the thread is busy in the callback
        let queued = checker.submit(
            Check::Unknown {
                password: "y".into(),
            },
            Box::new(|_| {}),
        );
        assert_eq!(queued, Ok(()), "one waits in the queue");
        let refused = checker.submit(
            Check::Unknown {
                password: "z".into(),
            },
            Box::new(|_| {}),
        );
        assert_eq!(refused, Err(Busy));
        gate_tx.send(()).unwrap();
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = Check::Password {
            phc: "$argon2id$secret-hash".into(),
            password: "hunter2".into(),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("secret-hash"));
    }
}
