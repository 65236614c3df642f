//! `walsync status`, the daemon's side: a local Unix socket that answers
//! with one JSON document, the state of every database.
//!
//! Why a socket of its own when there are metrics: an operator on the host
//! asks "what is this daemon doing right now" without a Prometheus server,
//! without opening a TCP port, and gets names, paths and error texts that
//! metrics cannot carry. The answer is read from the same [`Registry`] the
//! metrics, the heartbeat and readiness read (lag is
//! [`crate::capture::DbStats::lag`], the heartbeat's definition), so the
//! three never disagree.
//!
//! - Transport: a blocking `UnixListener` on a thread of its own; each
//!   client is served on a short-lived thread (at most [`MAX_CLIENTS`] at
//!   once), with a time limit on reading the request and on writing the
//!   answer, so a client that connects and sends nothing, or never reads,
//!   cannot hold up other clients or the daemon.
//! - Protocol: the client sends one line, `status` (at most
//!   [`MAX_REQUEST`] bytes), the daemon writes the JSON document (an array
//!   of [`DbStatus`]) and a newline, and closes. Anything else gets
//!   `{"error": "..."}`.
//! - Permissions: the socket is 0600 from the moment it can be reached,
//!   whatever the umask: it is bound inside a fresh private (0700)
//!   directory, set to 0600 there, and only then linked to its path.
//! - Ownership of the path: a socket a live daemon answers on is never
//!   taken over (two daemons on one status socket is a configuration error:
//!   refused when the path was configured; with the default path the second
//!   daemon replicates without a status socket and says so); a stale socket
//!   nobody answers on (a killed daemon's) is replaced. The socket file is
//!   removed on a clean exit, if it is still this daemon's.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::daemon::metrics::{DbState, Known, Registry};
use crate::error::{Error, Result};

/// Longest request line accepted (bytes, newline included).
pub const MAX_REQUEST: usize = 256;
/// A client has this long to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A client has this long to take the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients served at once; more are disconnected at once.
pub const MAX_CLIENTS: usize = 16;
/// File name of the socket in the default directories.
const SOCKET_NAME: &str = "status.sock";

/// Where the daemon serves its status (`--status-socket`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Setting {
    /// `--status-socket none`: no status socket.
    Off,
    /// Not configured: [`default_path`]; a problem there is a warning.
    Default,
    /// Configured: a problem there stops the daemon.
    At(PathBuf),
}

impl Setting {
    /// The `--status-socket` value (`None`: not given).
    pub fn parse(value: Option<&str>) -> Setting {
        match value.map(str::trim) {
            None | Some("") => Setting::Default,
            Some("none") => Setting::Off,
            Some(p) => Setting::At(PathBuf::from(p)),
        }
    }
}

/// One database in the status document. The JSON keys are this struct's
/// field names; times are RFC 3339 UTC and milliseconds since the epoch,
/// sizes bytes. Fields are only ever added.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DbStatus {
    /// Name in the bucket.
    pub name: String,
    /// Path as configured or found.
    pub path: String,
    /// `starting`, `replicating` or `failed` (cannot be opened; retried).
    pub state: String,
    /// Replicating, with its files closed while idle (`--close-idle-after`;
    /// the next write reopens them). Absent from older daemons' answers.
    #[serde(default)]
    pub files_closed: bool,
    /// Highest txid storage acknowledged (every txid up to it is stored);
    /// `null` unless replicating.
    pub shipped_txid: Option<u64>,
    /// Replication lag in ms: the age of the oldest committed transaction
    /// storage has not acknowledged yet; 0 when caught up; `null` unless
    /// replicating.
    pub lag_ms: Option<u64>,
    /// Size of the `-wal` file.
    pub wal_bytes: u64,
    /// The newest snapshot: cut by this daemon, else the newest in storage
    /// when it started; `null` when none is known.
    pub last_snapshot: Option<String>,
    /// `last_snapshot` in ms since the epoch.
    pub last_snapshot_ms: Option<i64>,
    /// The newest error met with this database (opening it, a pass, a
    /// storage request), kept after recovery; `null` if none.
    pub last_error: Option<String>,
    /// When `last_error` happened (RFC 3339).
    pub last_error_time: Option<String>,
    /// `last_error_time` in ms since the epoch.
    pub last_error_ms: Option<i64>,
}

/// The status of every database, by name.
pub fn collect(registry: &Registry) -> Vec<DbStatus> {
    registry.databases().into_iter().map(db_status).collect()
}

fn db_status(k: Known) -> DbStatus {
    let mut errors = vec![k.open_error, k.storage_error];
    let mut files_closed = false;
    let (state, shipped, lag, snapshot_ms) = match &k.state {
        DbState::Opening => ("starting", None, None, None),
        DbState::Failed(_) => ("failed", None, None, None),
        DbState::Running(s) => {
            errors.push(s.last_error.get());
            let cut = s.last_snapshot_ms.load(Ordering::Relaxed);
            let stored = s.stored_snapshot_ms.load(Ordering::Relaxed);
            let snap = i64::try_from(cut.max(stored)).ok().filter(|ms| *ms > 0);
            let lag = u64::try_from(s.lag().as_millis()).unwrap_or(u64::MAX);
            let shipped = s.durable_txid.load(Ordering::Relaxed);
            files_closed = s.parked.load(Ordering::Relaxed);
            ("replicating", Some(shipped), Some(lag), snap)
        }
    };
    let error = errors.into_iter().flatten().max_by_key(|(_, ms)| *ms);
    let time = |ms: Option<i64>| ms.and_then(|ms| crate::ltx::format_timestamp_ms(ms).ok());
    DbStatus {
        wal_bytes: crate::daemon::metrics::wal_bytes(&k.path),
        name: k.name,
        path: k.path.display().to_string(),
        state: state.into(),
        files_closed,
        shipped_txid: shipped,
        lag_ms: lag,
        last_snapshot: time(snapshot_ms),
        last_snapshot_ms: snapshot_ms,
        last_error_time: time(error.as_ref().map(|e| e.1)),
        last_error_ms: error.as_ref().map(|e| e.1),
        last_error: error.map(|e| e.0),
    }
}

/// The status document: a JSON array of [`DbStatus`].
pub fn document(registry: &Registry) -> String {
    serde_json::to_string(&collect(registry)).unwrap_or_else(|e| error_document(&e.to_string()))
}

fn error_document(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

/// The directories a daemon puts its socket in by default, most specific
/// first: `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`),
/// `$XDG_RUNTIME_DIR/walsync`, `/tmp/walsync-<uid>`. The flag is `true` for
/// directories walsync creates and owns (0700, this user's).
fn default_dirs() -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(v) = env("RUNTIME_DIRECTORY") {
        // systemd joins several RuntimeDirectory= entries with ':'.
        let first = v.to_string_lossy().split(':').next().map(PathBuf::from);
        out.extend(first.filter(|p| p.is_absolute()).map(|p| (p, false)));
    }
    if let Some(v) = env("XDG_RUNTIME_DIR").map(PathBuf::from) {
        if v.is_absolute() {
            out.push((v.join("walsync"), true));
        }
    }
    let uid = rustix::process::getuid().as_raw();
    out.push((PathBuf::from(format!("/tmp/walsync-{uid}")), true));
    out
}

/// Where a daemon serves its status when `--status-socket` is not given:
/// `$RUNTIME_DIRECTORY/status.sock`, else
/// `$XDG_RUNTIME_DIR/walsync/status.sock`, else
/// `/tmp/walsync-<uid>/status.sock`.
pub fn default_path() -> PathBuf {
    default_dirs()
        .first()
        .map_or_else(|| PathBuf::from(SOCKET_NAME), |(d, _)| d.join(SOCKET_NAME))
}

/// Where `walsync status` looks without `--status-socket`: the daemon's
/// defaults for this environment, then `/run/walsync/status.sock` (the
/// shipped systemd unit's, for an operator's shell). The first that exists
/// is used.
pub fn client_paths() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = default_dirs()
        .into_iter()
        .map(|(d, _)| d.join(SOCKET_NAME))
        .collect();
    let unit = PathBuf::from("/run/walsync").join(SOCKET_NAME);
    if !out.contains(&unit) {
        out.push(unit);
    }
    out
}

/// Make `dir` a directory only this user can use: created 0700 if missing;
/// refused if it is a symlink or belongs to another uid; tightened to 0700
/// if it is this user's and open to others.
fn own_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let uid = rustix::process::getuid().as_raw();
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = std::fs::symlink_metadata(dir)?;
    if !m.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    if m.uid() != uid {
        return Err(std::io::Error::other(format!(
            "owned by uid {}, not by this user (uid {uid}): not used",
            m.uid()
        )));
    }
    if m.mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The status socket, while the daemon serves it. Dropping it (a clean
/// exit) removes the socket file if it is still the one this daemon bound.
pub struct Served {
    path: PathBuf,
    id: (u64, u64),
}

impl Drop for Served {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!(
                    "status socket {}: cannot remove it: {e}",
                    self.path.display()
                );
            }
        }
    }
}

/// Serve `registry` as `setting` says. A configured path that cannot be
/// served stops the daemon (one line naming the flag and the path); the
/// default path that cannot be served is logged, and the daemon runs
/// without a status socket.
pub fn serve(setting: &Setting, registry: Arc<Registry>) -> Result<Option<Served>> {
    match setting {
        Setting::Off => Ok(None),
        Setting::At(path) => bind(path)
            .map(|(l, s)| Some(spawn(l, s, registry)))
            .map_err(|e| Error::Config(format!("--status-socket {}: {e}", path.display()))),
        Setting::Default => {
            let path = default_path();
            let owned = default_dirs().first().is_some_and(|(_, own)| *own);
            let bound = match path.parent() {
                Some(dir) if owned => own_dir(dir).map_err(|e| format!("{}: {e}", dir.display())),
                _ => Ok(()),
            }
            .and_then(|()| bind(&path));
            match bound {
                Ok((l, s)) => Ok(Some(spawn(l, s, registry))),
                Err(e) => {
                    log::warn!(
                        "status socket {}: {e}; running without one (set --status-socket PATH, or none)",
                        path.display()
                    );
                    Ok(None)
                }
            }
        }
    }
}

/// Bind a listener at `path` with mode 0600 from the start (see the module
/// doc), unless a live daemon answers there.
fn bind(path: &Path) -> std::result::Result<(UnixListener, Served), String> {
    std::os::unix::net::SocketAddr::from_pathname(path).map_err(|e| e.to_string())?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.to_string()),
        Ok(m) if !m.file_type().is_socket() => {
            return Err("exists and is not a socket (not touched)".into())
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => {
                return Err("another walsync daemon answers there (give each daemon its own --status-socket, or none)".into())
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                log::info!(
                    "status socket {}: nobody answers (left by a daemon that was killed): replacing it",
                    path.display()
                );
                std::fs::remove_file(path).map_err(|e| format!("cannot remove the stale socket: {e}"))?;
            }
            Err(e) => return Err(format!("cannot check it: {e}")),
        },
    }
    // Bound in a private directory and set to 0600 there: nobody else can
    // reach it before it has its final mode, whatever the umask. Then a hard
    // link puts it at its path, refused if something appeared there meanwhile.
    let private = tempfile::Builder::new()
        .prefix(".walsync-status-")
        .tempdir_in(parent)
        .map_err(|e| format!("{}: {e}", parent.display()))?;
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", private.path().display()))?;
    let inner = private.path().join("s");
    let listener = UnixListener::bind(&inner).map_err(|e| format!("cannot bind: {e}"))?;
    std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot set its mode: {e}"))?;
    std::fs::hard_link(&inner, path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => "another daemon created it just now".to_string(),
        _ => format!("cannot create it: {e}"),
    })?;
    let m = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    // `private` and the inner name go; the socket stays at `path`.
    drop(private);
    Ok((
        listener,
        Served {
            path: path.to_path_buf(),
            id: (m.dev(), m.ino()),
        },
    ))
}

/// Start the accept thread; returns `served` for the caller to hold.
fn spawn(listener: UnixListener, served: Served, registry: Arc<Registry>) -> Served {
    let active = Arc::new(AtomicUsize::new(0));
    let shown = served.path.display().to_string();
    let spawned = std::thread::Builder::new()
        .name("status".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => client(s, &registry, &active),
                    Err(e) => {
                        // Out of descriptors and the like: do not spin.
                        log::debug!("status socket: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        });
    match spawned {
        Ok(_) => log::info!("status at {shown} (walsync status)"),
        Err(e) => log::warn!("status socket {shown}: cannot start its thread: {e}"),
    }
    served
}

/// Serve one client on a thread of its own (or drop it when
/// [`MAX_CLIENTS`] are being served).
fn client(stream: UnixStream, registry: &Arc<Registry>, active: &Arc<AtomicUsize>) {
    if active.fetch_add(1, Ordering::Relaxed) >= MAX_CLIENTS {
        active.fetch_sub(1, Ordering::Relaxed);
        log::debug!("status socket: {MAX_CLIENTS} clients already, one turned away");
        return;
    }
    let registry = registry.clone();
    let done = active.clone();
    let spawned = std::thread::Builder::new()
        .name("status-client".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            if let Err(e) = answer(stream, &registry) {
                let e = match e.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                        "no request in time: disconnected".to_string()
                    }
                    _ => e.to_string(),
                };
                log::debug!("status socket: client: {e}");
            }
            done.fetch_sub(1, Ordering::Relaxed);
        });
    if let Err(e) = spawned {
        active.fetch_sub(1, Ordering::Relaxed);
        log::debug!("status socket: cannot start a client thread: {e}");
    }
}

/// Read one request line within [`REQUEST_TIMEOUT`] and answer it.
fn answer(mut stream: UnixStream, registry: &Registry) -> std::io::Result<()> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 64];
    let request = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no request in time",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|b| *b == b'\n') {
            buf.truncate(end);
            break Ok(buf);
        }
        if buf.len() >= MAX_REQUEST {
            break Err("request too long");
        }
        if n == 0 {
            break Ok(buf); // EOF ends the line too
        }
    };
    let reply = match request {
        Ok(line) => match String::from_utf8_lossy(&line).trim() {
            "status" | "status json" => document(registry),
            other => error_document(&format!(
                "unknown request {:?} (expected \"status\")",
                other.chars().take(40).collect::<String>()
            )),
        },
        Err(why) => error_document(why),
    };
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    stream.write_all(reply.as_bytes())?;
    stream.write_all(b"\n")?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Closing with request bytes still unread (a request too long) would
    // reset the connection before the client read the answer: take a few
    // first, bounded in bytes and time.
    let until = Instant::now() + Duration::from_millis(200);
    let mut left = 4096usize;
    let mut sink = [0u8; 1024];
    while left > 0 {
        let wait = until.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(wait))?;
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
