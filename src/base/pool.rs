//! A small pool of named threads behind a bounded queue, for blocking work that must never run on a worker
//! (argon2 hashing, calls to an upstream auth service). Submitting never blocks: a full queue is refused at
//! once, so a storm gets a quick "busy" instead of a queue that grows without end.

use crossbeam_channel::{Sender, TrySendError};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread::JoinHandle;

/// A unit of work for the pool.
pub type Task = Box<dyn FnOnce() + Send>;

/// The queue is full (or the pool is stopping): the task was not taken, and is dropped unrun.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// The pool. Dropping it lets the queued tasks finish, then joins the threads.
pub struct TaskPool {
    tasks: Option<Sender<Task>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for TaskPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Counts only: queued tasks may hold passwords and tokens.
        f.debug_struct("TaskPool")
            .field("threads", &self.threads.len())
            .field("queued", &self.queued())
            .finish()
    }
}

impl TaskPool {
    /// `threads` threads (at least one) named `NAME-N`, with room for `queue` tasks waiting (at least one).
    pub fn start(name: &str, threads: usize, queue: usize) -> std::io::Result<TaskPool> {
        let (tx, rx) = crossbeam_channel::bounded::<Task>(queue.max(1));
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let what = name.to_string();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    for task in rx {
                        // A panicking task (a bug of the submitter's) must not take a thread with it.
                        if catch_unwind(AssertUnwindSafe(task)).is_err() {
                            log::error!("a {what} task panicked");
                        }
                    }
                });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    // Stop the threads already started before reporting.
                    drop(tx);
                    for handle in handles {
                        let _ = handle.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(TaskPool {
            tasks: Some(tx),
            threads: handles,
        })
    }

    /// Queues `task`; never blocks.
    pub fn submit(&self, task: Task) -> Result<(), Full> {
        let Some(tasks) = &self.tasks else {
            return Err(Full);
        };
        match tasks.try_send(task) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Full),
        }
    }

    /// Tasks waiting.
    pub fn queued(&self) -> usize {
        self.tasks.as_ref().map_or(0, Sender::len)
    }

    /// Threads.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }
}

impl Drop for TaskPool {
    fn drop(&mut self) {
        self.tasks = None;
        let me = std::thread::current().id();
        for handle in self.threads.drain(..) {
            // A task that drops the last handle to its pool runs on a pool thread: joining itself would
            // never return.
            if handle.thread().id() != me {
                let _ = handle.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn tasks_run_on_named_threads_and_a_full_queue_is_refused() {
        let pool = TaskPool::start("test-pool", 1, 1).unwrap();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<String>();
        pool.submit(Box::new(move || {
            let name = std::thread::current().name().unwrap_or("").to_string();
            started_tx.send(name).unwrap();
            gate_rx.recv().unwrap();
        }))
        .unwrap();
        assert_eq!(started_rx.recv().unwrap(), "test-pool-0");
        assert_eq!(
            pool.submit(Box::new(|| {})),
            Ok(()),
            "one waits in the queue"
        );
        assert_eq!(pool.submit(Box::new(|| {})), Err(Full));
        gate_tx.send(()).unwrap();
    }

    #[test]
    fn a_panicking_task_leaves_the_thread_serving() {
        let pool = TaskPool::start("test-pool", 1, 4).unwrap();
        pool.submit(Box::new(|| panic!("deliberate"))).unwrap();
        let (tx, rx) = mpsc::channel();
        pool.submit(Box::new(move || tx.send(1).unwrap())).unwrap();
        assert_eq!(rx.recv().unwrap(), 1);
    }
}
