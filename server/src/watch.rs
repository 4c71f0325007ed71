//! `serve --watch`: reload the policies when the config file changes.
//!
//! The watch is on the file's directory, not the file: editors save by writing a new file
//! and renaming it over the old one, and Kubernetes updates a mounted ConfigMap by swapping a
//! symlink, so a watch on the file itself would follow the old inode and go quiet. Any event
//! in the directory makes the watcher wait for the burst to settle ([`SETTLE`]), read the
//! file, and reload when its bytes differ from the last ones it loaded (so unrelated files in
//! the directory, or a save that changed nothing, cost one read).

use crate::reload::Reloader;
use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Quiet time after the last event before the file is read: an editor's save is several
/// events (create, write, rename) within a few milliseconds.
const SETTLE: Duration = Duration::from_millis(200);

/// Keeps the watch alive; dropping it stops watching.
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
}

/// Starts watching `reloader`'s file. Errors when there is no file or the directory cannot
/// be watched (e.g. the inotify watch limit).
pub fn watch(reloader: Arc<Reloader>) -> Result<FileWatch> {
    let file = reloader
        .path()
        .context("--watch needs --config FILE (the embedded default policy cannot change)")?
        .to_path_buf();
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (events, changed) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Errors too: they make the loop re-read the file, the safe reaction.
        let _ = events.send(event.map(|_| ()));
    })
    .context("starting the file watcher")?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    tracing::info!(file = %file.display(), "watching the config file: a change reloads the policies");
    let mut last = std::fs::read(&file).ok();
    std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || {
            while changed.recv().is_ok() {
                // Let the burst of one save settle.
                while changed.recv_timeout(SETTLE).is_ok() {}
                let now = std::fs::read(&file).ok();
                if now.is_none() || now == last {
                    continue; // gone mid-rename, or unchanged: wait for the next event
                }
                last = now;
                let _ = reloader.reload_and_log("file change");
            }
        })
        .context("starting the config-watch thread")?;
    Ok(FileWatch { _watcher: watcher })
}
