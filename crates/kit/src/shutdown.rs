//! Graceful shutdown: one trigger that servers and background loops watch, fired by SIGTERM or
//! SIGINT; a second signal exits at once.

use tokio::sync::watch;

/// A shutdown trigger shared by everything a service runs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    sender: std::sync::Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (sender, _) = watch::channel(false);
        Shutdown {
            sender: std::sync::Arc::new(sender),
        }
    }

    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.sender.borrow()
    }

    /// Resolves once the trigger fires (at once if it already has).
    pub fn triggered(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut receiver = self.sender.subscribe();
        async move {
            let _ = receiver.wait_for(|fired| *fired).await;
        }
    }

    /// Fires the trigger on the first SIGINT or SIGTERM; exits the process on the second.
    pub fn trigger_on_os_signals(&self) {
        self.trigger_on_os_signals_then(|| {});
    }

    /// As [`Shutdown::trigger_on_os_signals`], calling `before_exit` on the second signal (to
    /// stop child processes, say) before the process exits.
    pub fn trigger_on_os_signals_then(&self, before_exit: impl FnOnce() + Send + 'static) {
        let shutdown = self.clone();
        tokio::spawn(async move {
            wait_for_os_signal().await;
            tracing::info!("Shutdown requested; draining. Send the signal again to exit at once.");
            shutdown.trigger();
            wait_for_os_signal().await;
            tracing::warn!("Second shutdown signal; exiting without draining.");
            before_exit();
            std::process::exit(130);
        });
    }
}

async fn wait_for_os_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_when_triggered_even_if_they_subscribe_late() {
        let shutdown = Shutdown::new();
        let early = tokio::spawn(shutdown.triggered());
        shutdown.trigger();
        early.await.unwrap();
        shutdown.triggered().await;
        assert!(shutdown.is_triggered());
    }
}
