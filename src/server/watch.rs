//! The one file-watch loop: secret files (`*_file` keys) and the `[tls]` certificate are
//! re-read when they change and on `SIGHUP`, each by its own [`Reload`].
//!
//! Kubernetes updates a mounted Secret in place by swapping a `..data` symlink, and
//! cert-manager replaces certificate files the same way, so a file is known by the target of
//! its symlink chain, its size and its modification time ([`stamp`]), looked at every
//! [`POLL`]. What failed to reload and asks to be retried is tried again every [`RETRY`]
//! while its files stay the same (a file another one depends on may be fixed meanwhile).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// How often the watched files are looked at.
pub(crate) const POLL: Duration = Duration::from_secs(2);

/// How often a reload that failed is tried again while its files do not change.
const RETRY: Duration = Duration::from_secs(10);

/// What identifies a file's content without reading it.
pub(crate) type Stamp = Option<(PathBuf, u64, SystemTime)>;

/// The target of any symlink chain, the size and the modification time of `path`.
pub(crate) fn stamp(path: &Path) -> Stamp {
    let target = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&target).ok()?;
    Some((target, meta.len(), meta.modified().ok()?))
}

/// Something read from files that can change under a running process.
#[async_trait]
pub(crate) trait Reload: Send + Sync {
    /// Each watched file, by the name its reload and logs know it by (a config key).
    fn files(&self) -> &[(&'static str, PathBuf)];

    /// Applies the files named in `changed`, for the reason `why`; returns those to try again
    /// (every [`RETRY`]) because they could not be applied.
    async fn reload(&self, changed: &[&'static str], why: &str) -> Vec<&'static str>;

    /// The reason logged for a reload after a file changed.
    fn changed_reason(&self) -> &'static str {
        "a watched file changed"
    }

    /// The reason logged for a retry of a reload that failed.
    fn retry_reason(&self) -> &'static str {
        "retrying a reload that failed"
    }
}

/// Watches every [`Reload`]'s files and reloads what changed.
pub(crate) struct FileWatch {
    pub(crate) watched: Vec<Box<dyn Reload>>,
}

/// One [`Reload`]'s state in the loop.
struct Watched<'a> {
    reload: &'a dyn Reload,
    seen: Vec<Stamp>,
    pending: Vec<&'static str>,
    retry_at: tokio::time::Instant,
}

impl Watched<'_> {
    fn stamps(&self) -> Vec<Stamp> {
        self.reload.files().iter().map(|(_, f)| stamp(f)).collect()
    }

    /// Every file, whatever changed (`SIGHUP`).
    async fn reload_all(&mut self) {
        self.seen = self.stamps();
        let all: Vec<&'static str> = self.reload.files().iter().map(|(k, _)| *k).collect();
        self.pending = self.reload.reload(&all, "SIGHUP").await;
        self.retry_at = tokio::time::Instant::now() + RETRY;
    }

    /// The files that changed since the last look, and those due for a retry.
    async fn poll(&mut self) {
        let now = self.stamps();
        let mut changed: Vec<&'static str> = self
            .reload
            .files()
            .iter()
            .zip(now.iter().zip(&self.seen))
            .filter(|(_, (a, b))| a != b)
            .map(|((k, _), _)| *k)
            .collect();
        self.seen = now;
        let mut why = self.reload.changed_reason();
        if tokio::time::Instant::now() >= self.retry_at {
            for p in &self.pending {
                if !changed.contains(p) {
                    changed.push(p);
                    why = self.reload.retry_reason();
                }
            }
        }
        if !changed.is_empty() {
            let failed = self.reload.reload(&changed, why).await;
            self.pending.retain(|p| !changed.contains(p));
            self.pending.extend(failed);
            self.retry_at = tokio::time::Instant::now() + RETRY;
        }
    }
}

#[async_trait]
impl BackgroundService for FileWatch {
    /// One loop per [`Reload`], run side by side: a slow reload (a store that takes its time to
    /// connect) does not hold up another's.
    async fn start(&self, shutdown: ShutdownWatch) {
        futures_util::future::join_all(
            self.watched
                .iter()
                .map(|r| watch(r.as_ref(), shutdown.clone())),
        )
        .await;
    }
}

/// Reloads `reload`'s files when they change and on `SIGHUP`, until shutdown.
async fn watch(reload: &dyn Reload, mut shutdown: ShutdownWatch) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; changed files are still reloaded");
            None
        }
    };
    let mut w = Watched {
        reload,
        seen: Vec::new(),
        pending: Vec::new(),
        retry_at: tokio::time::Instant::now(),
    };
    w.seen = w.stamps();
    loop {
        let hangup = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = hangup => w.reload_all().await,
            _ = tokio::time::sleep(POLL) => w.poll().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records what it was asked to reload; fails `fail` until told otherwise.
    struct Recorder {
        files: Vec<(&'static str, PathBuf)>,
        asked: Mutex<Vec<(Vec<&'static str>, String)>>,
        fail: Mutex<Vec<&'static str>>,
    }

    #[async_trait]
    impl Reload for Recorder {
        fn files(&self) -> &[(&'static str, PathBuf)] {
            &self.files
        }
        async fn reload(&self, changed: &[&'static str], why: &str) -> Vec<&'static str> {
            self.asked
                .lock()
                .unwrap()
                .push((changed.to_vec(), why.into()));
            let fail = self.fail.lock().unwrap();
            changed
                .iter()
                .copied()
                .filter(|c| fail.contains(c))
                .collect()
        }
    }

    /// A changed file is reloaded alone; an unchanged one is not; one that failed is tried
    /// again once its retry time has come, though its file did not change; SIGHUP reloads all.
    #[tokio::test(start_paused = true)]
    async fn changed_files_reload_and_failures_retry() {
        let dir = std::env::temp_dir().join(format!("tollgate-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "1").unwrap();
        let r = Recorder {
            files: vec![("a_file", a.clone()), ("b_file", b.clone())],
            asked: Mutex::default(),
            fail: Mutex::new(vec!["b_file"]),
        };
        let mut w = Watched {
            reload: &r,
            seen: Vec::new(),
            pending: Vec::new(),
            retry_at: tokio::time::Instant::now(),
        };
        w.seen = w.stamps();
        w.poll().await;
        assert!(r.asked.lock().unwrap().is_empty(), "nothing changed");

        std::fs::write(&b, "22").unwrap();
        w.poll().await;
        assert_eq!(r.asked.lock().unwrap().last().unwrap().0, vec!["b_file"]);
        assert_eq!(w.pending, vec!["b_file"]);

        // Before the retry time: nothing; after it, the failed one again.
        w.poll().await;
        assert_eq!(r.asked.lock().unwrap().len(), 1);
        tokio::time::advance(RETRY).await;
        r.fail.lock().unwrap().clear();
        w.poll().await;
        let last = r.asked.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last.0, vec!["b_file"]);
        assert_eq!(last.1, "retrying a reload that failed");
        assert!(w.pending.is_empty());

        w.reload_all().await;
        let last = r.asked.lock().unwrap().last().cloned().unwrap();
        assert_eq!(
            (last.0, last.1.as_str()),
            (vec!["a_file", "b_file"], "SIGHUP")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
