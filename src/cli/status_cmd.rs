//! `walsync status`: ask a running daemon what each database is doing, over
//! its local status socket ([`crate::daemon::status`]), and print a table or
//! the daemon's JSON document.
//!
//! Why a client of its own rather than reading metrics: it needs no
//! Prometheus and no open port, and it shows paths and error texts.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::*;
use crate::daemon::status::{self, DbStatus};

/// Longest answer read (bytes): ~300 bytes a database, 10,000 databases
/// fit many times over.
const MAX_ANSWER: u64 = 64 << 20;
/// How long the daemon has to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Ask a running walsync daemon what each database is doing.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "status",
    usage = "[--status-socket <path>] [--json]",
    note = "One line per database: NAME, PATH, STATE (starting, replicating, failed),
TXID (highest txid stored), LAG (age of the oldest commit not yet stored,
0.0s when caught up), WAL (bytes of the -wal file), LAST SNAPSHOT, LAST ERROR
(how long ago, and its text; kept after recovery). `--json`: an array of
objects (keys in scripts/README.md, section Live status).",
    note = "Socket: the daemon's --status-socket. Default, for daemon and client:
$RUNTIME_DIRECTORY/status.sock (systemd RuntimeDirectory=), else
$XDG_RUNTIME_DIR/walsync/status.sock, else /tmp/walsync-UID/status.sock;
`walsync status` takes the first of these that exists, then
/run/walsync/status.sock (the shipped unit's). Exits 1 when no daemon answers.",
    note = "Environment: RUNTIME_DIRECTORY, XDG_RUNTIME_DIR."
)]
pub struct StatusArgs {
    /// the daemon's status socket (default: see below)
    #[argh(option)]
    pub status_socket: Option<String>,

    /// print the daemon's JSON document instead of a table
    #[argh(switch)]
    pub json: bool,
}

/// Run `walsync status`.
pub fn run_status(a: StatusArgs) -> Result<()> {
    let path = match a.status_socket.as_deref() {
        Some("none") => {
            return Err(Error::Config(
                "--status-socket none: walsync status needs a socket path".into(),
            ))
        }
        Some(p) => PathBuf::from(p),
        None => default_socket(),
    };
    let answer = ask(&path)?;
    let dbs = parse(&path, &answer)?;
    if a.json {
        outln!("{}", answer.trim_end());
    } else {
        out!("{}", format_status(&dbs, crate::util::now_ms()));
    }
    Ok(())
}

/// The first of [`status::client_paths`] that exists, else the first.
fn default_socket() -> PathBuf {
    let paths = status::client_paths();
    paths
        .iter()
        .find(|p| std::fs::symlink_metadata(p).is_ok())
        .or(paths.first())
        .cloned()
        .unwrap_or_else(status::default_path)
}

/// Send the request and read the whole answer.
fn ask(path: &Path) -> Result<String> {
    let no_daemon = |e: std::io::Error| {
        let why = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            std::io::ErrorKind::NotFound => "no socket there".to_string(),
            std::io::ErrorKind::PermissionDenied => {
                "permission denied (run as the daemon's user)".to_string()
            }
            _ => e.to_string(),
        };
        Error::Config(format!("no walsync daemon at {}: {why}", path.display()))
    };
    let mut s = UnixStream::connect(path).map_err(no_daemon)?;
    let failed =
        |e: std::io::Error| Error::Config(format!("walsync daemon at {}: {e}", path.display()));
    s.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(failed)?;
    s.set_write_timeout(Some(ANSWER_TIMEOUT)).map_err(failed)?;
    s.write_all(b"status\n").map_err(failed)?;
    let mut answer = String::new();
    s.take(MAX_ANSWER)
        .read_to_string(&mut answer)
        .map_err(failed)?;
    Ok(answer)
}

/// The daemon's answer as databases, or its error as one line.
fn parse(path: &Path, answer: &str) -> Result<Vec<DbStatus>> {
    let at = path.display();
    if answer.trim().is_empty() {
        return Err(Error::Config(format!(
            "walsync daemon at {at} closed the connection without an answer (busy? try again)"
        )));
    }
    match serde_json::from_str::<Vec<DbStatus>>(answer) {
        Ok(dbs) => Ok(dbs),
        Err(e) => {
            let error = serde_json::from_str::<serde_json::Value>(answer)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_string));
            Err(Error::Config(match error {
                Some(msg) => format!("walsync daemon at {at}: {msg}"),
                None => format!("walsync daemon at {at}: unreadable answer: {e}"),
            }))
        }
    }
}

/// How long ago `ms` was, coarsely (`4s`, `12m`, `3h`, `2d`).
fn ago(ms: i64, now_ms: i64) -> String {
    let s = (now_ms - ms).max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// The table `walsync status` prints (`now_ms`: for the errors' ages).
pub fn format_status(dbs: &[DbStatus], now_ms: i64) -> String {
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = dbs
        .iter()
        .map(|d| {
            let error = match (&d.last_error, d.last_error_ms) {
                (Some(e), Some(ms)) => format!("{} ago: {}", ago(ms, now_ms), one_line(e)),
                (Some(e), None) => one_line(e),
                _ => String::new(),
            };
            vec![
                d.name.clone(),
                d.path.clone(),
                match d.files_closed {
                    true => format!("{} (files closed)", d.state),
                    false => d.state.clone(),
                },
                d.shipped_txid.map_or_else(dash, |t| t.to_string()),
                d.lag_ms
                    .map_or_else(dash, |ms| format!("{:.1}s", ms as f64 / 1000.0)),
                d.wal_bytes.to_string(),
                d.last_snapshot_ms
                    .and_then(|ms| ltx::display_timestamp_ms(ms).ok())
                    .unwrap_or_else(dash),
                error,
            ]
        })
        .collect();
    ops::table(
        &[
            "NAME",
            "PATH",
            "STATE",
            "TXID",
            "LAG",
            "WAL",
            "LAST SNAPSHOT",
            "LAST ERROR",
        ],
        &rows,
        &[false, false, false, true, true, true, false, false],
    )
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(name: &str) -> DbStatus {
        DbStatus {
            name: name.into(),
            path: format!("/data/{name}"),
            state: "replicating".into(),
            files_closed: false,
            shipped_txid: Some(42),
            lag_ms: Some(260),
            wal_bytes: 4152,
            last_snapshot: None,
            last_snapshot_ms: Some(1_700_000_000_000),
            last_error: None,
            last_error_time: None,
            last_error_ms: None,
        }
    }

    #[test]
    fn table_lines_up_and_shows_errors() {
        let mut failed = db("broken.db");
        failed.state = "failed".into();
        failed.shipped_txid = None;
        failed.lag_ms = None;
        failed.last_snapshot_ms = None;
        failed.last_error = Some("not in WAL mode\n(journal_mode=delete)".into());
        failed.last_error_ms = Some(1_700_000_000_000);
        let now = 1_700_000_000_000 + 125_000;
        let mut idle = db("idle.db");
        idle.files_closed = true;
        let out = format_status(&[idle], now);
        assert!(
            out.contains("  replicating (files closed)    42  0.3s"),
            "{out}"
        );
        let out = format_status(&[db("a.db"), failed], now);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("NAME       PATH"), "{out}");
        assert!(
            lines[1].contains("  replicating    42  0.3s  4152  2023-11-14T22:13:20.000Z"),
            "{out}"
        );
        assert!(
            lines[2].ends_with("failed          -     -  4152  -                         2m ago: not in WAL mode (journal_mode=delete)"),
            "{out}"
        );
        // Every column starts at the same offset on every line.
        let at = |l: &str, col: &str| l.find(col).unwrap();
        assert_eq!(at(lines[0], "PATH"), at(lines[1], "/data/a.db"));
        assert_eq!(at(lines[0], "PATH"), at(lines[2], "/data/broken.db"));
    }

    #[test]
    fn answers_are_parsed_or_named() {
        let p = Path::new("/run/x.sock");
        let dbs = parse(p, &serde_json::to_string(&[db("a.db")]).unwrap()).unwrap();
        assert_eq!(dbs, [db("a.db")]);
        let e = parse(p, "{\"error\":\"request too long\"}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "walsync daemon at /run/x.sock: request too long"
        );
        let e = parse(p, "").unwrap_err().to_string();
        assert!(e.contains("without an answer"), "{e}");
        assert_eq!(ago(0, 59_999), "59s");
        assert_eq!(ago(0, 3 * 86_400_000), "3d");
    }
}
