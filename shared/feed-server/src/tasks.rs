//! Background work a server owns (workers, sweepers, log tails): started
//! with the services, awaited when the server has drained, so a process
//! does not exit in the middle of a job it holds.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;

/// Named background tasks; each ends when the server's shutdown fires.
#[derive(Default)]
pub struct Tasks {
    running: Vec<(&'static str, JoinHandle<()>)>,
}

impl Tasks {
    /// Starts `work` as a task named `name` (the name appears in logs).
    pub fn spawn(&mut self, name: &'static str, work: impl Future<Output = ()> + Send + 'static) {
        self.running.push((name, tokio::spawn(work)));
    }

    /// Owns a task started elsewhere.
    pub fn adopt(&mut self, name: &'static str, task: JoinHandle<()>) {
        self.running.push((name, task));
    }

    /// How many tasks are owned.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// True when no task is owned.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Waits for every task to end (shutdown has fired), up to `limit` in
    /// all; the ones still running then are aborted and named in the log.
    pub async fn join(self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        for (name, mut task) in self.running {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.is_panic() => tracing::error!(task = name, "background task panicked"),
                Ok(Err(_)) => {}
                Err(_) => {
                    tracing::warn!(task = name, "background task still running after shutdown; aborted");
                    task.abort();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Shutdown;

    #[tokio::test]
    async fn join_waits_for_tasks_that_finish_their_work_after_shutdown() {
        let shutdown = Shutdown::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let mut tasks = Tasks::default();
        let stop = shutdown.clone();
        tasks.spawn("finisher", async move {
            stop.wait().await;
            // The job in hand completes after the signal.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = done_tx.send(());
        });
        shutdown.trigger();
        tasks.join(Duration::from_secs(5)).await;
        assert!(done_rx.await.is_ok(), "join returned before the task finished");
    }

    #[tokio::test]
    async fn join_aborts_a_task_that_ignores_shutdown_after_the_limit() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = SetOnDrop(dropped.clone());
        let mut tasks = Tasks::default();
        tasks.spawn("stuck", async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        tasks.join(Duration::from_millis(100)).await;
        for _ in 0..100 {
            if dropped.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the stuck task was not aborted");
    }
}
