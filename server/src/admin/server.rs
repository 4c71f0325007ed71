//! The admin port's thread: one OS thread running a current-thread tokio runtime with one
//! axum server, like the gRPC port. Nothing here is on the decision path: handlers reach
//! shards only through their inboxes.

use super::routes::router;
use super::state::AdminState;
use anyhow::Context as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::watch;

/// How long [`AdminPort::shutdown`] lets requests in progress finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A running admin port. Dropping it stops it like [`AdminPort::shutdown`].
#[derive(Debug)]
pub struct AdminPort {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminPort {
    /// The address it listens on (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets requests in progress finish (at most [`SHUTDOWN_GRACE`]),
    /// joins the thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("admin port thread panicked");
            }
        }
    }
}

impl Drop for AdminPort {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Serves the admin API on `listener` (bound by the caller) from its own thread.
pub fn start(listener: std::net::TcpListener, state: Arc<AdminState>) -> anyhow::Result<AdminPort> {
    let local_addr = listener.local_addr().context("admin listener address")?;
    listener
        .set_nonblocking(true)
        .context("admin listener non-blocking")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("tollgate-admin")
        .build()
        .context("building the admin tokio runtime")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<anyhow::Result<()>>(1);
    let thread = std::thread::Builder::new()
        .name("tollgate-admin".into())
        .spawn(move || {
            let listener = {
                let _guard = rt.enter();
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::Error::new(e).context("admin listener")));
                        return;
                    }
                }
            };
            let _ = ready_tx.send(Ok(()));
            let (mut stop_serve, mut stop_grace) = (stop_rx.clone(), stop_rx);
            rt.block_on(async move {
                let serve =
                    axum::serve(listener, router(state)).with_graceful_shutdown(async move {
                        // A dropped sender also means stop.
                        let _ = stop_serve.wait_for(|s| *s).await;
                    });
                tokio::select! {
                    r = serve => {
                        if let Err(e) = r {
                            tracing::error!(error = %e, "admin port failed");
                        }
                    }
                    _ = async {
                        let _ = stop_grace.wait_for(|s| *s).await;
                        tokio::time::sleep(SHUTDOWN_GRACE).await;
                    } => {
                        tracing::debug!("admin port grace elapsed; dropping open connections");
                    }
                }
            });
        })
        .context("spawning the admin thread")?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(e);
        }
        Err(_) => {
            let _ = thread.join();
            anyhow::bail!("admin thread exited during start-up");
        }
    }
    Ok(AdminPort {
        local_addr,
        stop: stop_tx,
        thread: Some(thread),
    })
}
