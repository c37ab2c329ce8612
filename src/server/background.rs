//! The server's background tasks, stopped together.

use std::future::Future;

use tokio::task::JoinHandle;

/// The server's background tasks: stopped and joined together by [`Background::stop`],
/// aborted if dropped on an early return.
#[derive(Default)]
pub struct Background {
    tasks: Vec<JoinHandle<()>>,
}

impl Background {
    /// Runs `task` until [`Background::stop`].
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
    }

    /// Aborts every task and waits until each has stopped. They are aborted rather
    /// than asked: each may be inside a Redis call bounded only by a timeout, and
    /// none holds state worth finishing.
    pub async fn stop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
