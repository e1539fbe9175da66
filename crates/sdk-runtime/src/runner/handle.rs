//! A running strategy's handle: its plan, an offline context switch, stop, and the run's report.

use kit::shutdown::Shutdown;
use tokio::sync::{mpsc, oneshot};

use super::RunError;
use super::live::Command;
use super::plan::Plan;

/// How a strategy's run ended.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub plan: Plan,
    /// Live events taken in.
    pub events: u64,
}

/// A running strategy.
#[derive(Debug)]
pub struct StrategyHandle {
    pub(super) plan: Plan,
    pub(super) online: bool,
    pub(super) stop: Shutdown,
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) done: oneshot::Receiver<u64>,
    pub(super) thread: std::thread::JoinHandle<()>,
}

impl StrategyHandle {
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Runs an offline strategy's nodes under a new compute context from now on. Every node
    /// whose cache holds data from another compute key is cleared (and counted); returns how
    /// many. A submitted strategy keeps its context: its queues belong to it.
    pub async fn switch_context(&self, context: wire::ComputeContext) -> Result<usize, RunError> {
        if self.online {
            return Err(RunError::ContextFixedOnline);
        }
        let (reply, cleared) = oneshot::channel();
        self.commands
            .send(Command::SwitchContext(context, reply))
            .await
            .map_err(|_| RunError::Stopped)?;
        cleared.await.map_err(|_| RunError::Stopped)
    }

    /// Stops taking new events; what is buffered is still processed and published.
    pub fn stop(&self) {
        self.stop.trigger();
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the run to end (feeds exhausted and queues closed, or stopped).
    pub async fn join(self) -> Result<RunReport, RunError> {
        match self.done.await {
            Ok(events) => Ok(RunReport {
                plan: self.plan,
                events,
            }),
            Err(_) => {
                let reason = match self.thread.join() {
                    Err(panic) => panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "the engine thread panicked".into()),
                    Ok(()) => "the engine thread ended without a result".into(),
                };
                Err(RunError::Crashed(reason))
            }
        }
    }
}
