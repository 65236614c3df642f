//! Command-line interface shared by the `walsync` and `walsync-sync` binaries.
//!
//! Why one module: `walsync-sync ARGS` must behave exactly like
//! `walsync sync ARGS` (a systemd `ExecStart=` line names one binary and has no
//! shell), so both binaries parse the same [`SyncArgs`] and call the same
//! function. Every command ends through [`exit`], which prints an error as one
//! line on stderr and exits non-zero.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use argh::FromArgs;

use crate::capture::DbConfig;
use crate::daemon;
use crate::daemon::config::DbSpec;
use crate::defaults;
use crate::error::{Error, Result};
use crate::lease::{FencedStorage, Fencer};
use crate::ltx;
use crate::ops;
use crate::restore::{self, RestoreOptions, Target};
use crate::storage::{self, Storage};

/// `println!` for a command's results on stdout, without the panic when
/// stdout is closed (`walsync list | head -1`, `walsync verify … | grep -q`):
/// the reader had what it wanted, and the command's work is done.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` the same way (see `outln!`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

/// walsync: continuous replication of SQLite databases to S3-compatible storage.
#[derive(FromArgs, Debug)]
#[argh(
    usage = "<command> [<args>]",
    note = "`walsync <command> --help` shows a command's flags; operations guide:
scripts/README.md in the source (systemd, config file, metrics, encryption).",
    note = "Environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL), AWS_REGION (or AWS_DEFAULT_REGION),
AWS_CA_BUNDLE, WALSYNC_ENCRYPTION_KEY, RUST_LOG (default walsync=info)."
)]
pub struct Walsync {
    /// print the version and the git commit, then exit
    #[argh(switch, short = 'V')]
    pub version: bool,

    #[argh(subcommand)]
    pub command: Option<Command>,
}

/// The git commit this binary was built from (`src/build.rs`): 12 hex
/// digits, or `unknown` when built outside a git checkout.
pub const GIT_COMMIT: &str = env!("WALSYNC_GIT_COMMIT");

/// What `--version` prints: `walsync 0.1.0 (git commit 0123456789ab)`.
pub fn version_line(program: &str) -> String {
    format!(
        "{program} {} (git commit {GIT_COMMIT})",
        env!("CARGO_PKG_VERSION")
    )
}

/// The running binary's file name (`walsync`, `walsync-sync`).
pub fn program_name() -> String {
    std::env::args()
        .next()
        .as_deref()
        .and_then(|a| Path::new(a).file_name()?.to_str().map(str::to_string))
        .unwrap_or_else(|| "walsync".to_string())
}

/// The `walsync` subcommands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Sync(Box<SyncArgs>),
    Restore(RestoreArgs),
    Snapshot(SnapshotArgs),
    List(ListArgs),
    Verify(VerifyArgs),
    Compact(CompactArgs),
    Status(StatusArgs),
}

/// `bucket` (a name, `s3://bucket/prefix` or `file:///dir`) with `prefix` appended.
pub fn prefixed_spec(bucket: &str, prefix: Option<&str>) -> String {
    match prefix {
        None => bucket.to_string(),
        Some(p) if bucket.contains("://") => {
            format!("{}/{}", bucket.trim_end_matches('/'), p.trim_matches('/'))
        }
        Some(p) => format!("s3://{}/{}", bucket, p.trim_matches('/')),
    }
}

/// The storage spec for a database whose own `prefix` replaces the global
/// one: the bucket (without any prefix in `s3://bucket/prefix`) plus `prefix`.
pub fn bucket_with_prefix(bucket: &str, prefix: &str) -> String {
    if let Some(rest) = bucket.strip_prefix("s3://") {
        let name = rest.split('/').next().unwrap_or(rest);
        return format!("s3://{name}/{}", prefix.trim_matches('/'));
    }
    // A bucket name gets the prefix; a directory (`file:///dir`) has no
    // prefix of its own, so the database's prefix nests under it.
    prefixed_spec(bucket, Some(prefix))
}

/// Run a parsed `walsync` command line.
/// Returns the exit status (`walsync sync --exec`: the child's; else 0).
pub fn run(args: Walsync) -> Result<i32> {
    if args.version {
        outln!("{}", version_line(&program_name()));
        return Ok(0);
    }
    match args.command {
        None => Err(Error::Config(
            "no command given (`walsync --help` lists them)".into(),
        )),
        Some(Command::Sync(a)) => run_sync(*a),
        Some(Command::Restore(a)) => run_restore(a).map(|()| 0),
        Some(Command::Snapshot(a)) => run_snapshot(a).map(|()| 0),
        Some(Command::List(a)) => run_list(a).map(|()| 0),
        Some(Command::Verify(a)) => run_verify(a).map(|()| 0),
        Some(Command::Compact(a)) => run_compact(a).map(|()| 0),
        Some(Command::Status(a)) => run_status(a).map(|()| 0),
    }
}

/// Wraps `data` so every PUT of an LTX object checks this process's lease
/// in `raw`. The daemon probes for conditional writes after its start-up
/// checks ([`Fencer::start`]); `probe_now` does it here.
pub fn fence(
    raw: Arc<dyn Storage>,
    data: Arc<dyn Storage>,
    ttl: Duration,
    probe_now: bool,
) -> Result<(Arc<dyn Storage>, Arc<Fencer>)> {
    let fencer = Arc::new(Fencer::unprobed(raw.clone(), ttl));
    if probe_now {
        raw.check()?;
        fencer.start(false)?;
    }
    let storage: Arc<dyn Storage> = Arc::new(FencedStorage::new(data, fencer.clone()));
    Ok((storage, fencer))
}

/// A duration flag's value, or `default` when it was not given (`flag`
/// without its dashes names it in the error).
pub fn duration_or(flag: &str, value: &Option<String>, default: Duration) -> Result<Duration> {
    match value {
        Some(v) => crate::daemon::config::duration(&format!("--{flag}"), v),
        None => Ok(default),
    }
}

/// Parse a `--txid` value: decimal, or hexadecimal with a `0x` prefix (the
/// form object names use).
pub fn parse_txid(s: &str) -> Result<u64> {
    let s = s.trim();
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse::<u64>(),
    };
    match parsed {
        Ok(t) if t >= 1 => Ok(t),
        _ => Err(Error::Config(format!(
            "--txid {s:?}: expected a txid ≥ 1 (decimal, or hex with 0x)"
        ))),
    }
}

/// Set up logging (`RUST_LOG=walsync=debug`; default
/// [`defaults::LOG_FILTER`]).
pub fn init_logging() {
    let env = env_logger::Env::default().default_filter_or(defaults::LOG_FILTER);
    // ureq logs each request's full URL at debug level, and ureq_proto
    // dumps the raw bytes of every request at trace level: for the
    // heartbeat the URL is a secret (its token), for S3 the bytes hold the
    // signed `Authorization` header. So both are capped at info whatever
    // RUST_LOG says (a later directive for the same module wins).
    // A second call (tests) is harmless; ignore its error.
    let _ = env_logger::Builder::from_env(env)
        .filter_module("ureq", log::LevelFilter::Info)
        .filter_module("ureq_proto", log::LevelFilter::Info)
        .try_init();
}

/// The command line as `T`, named by the program's file name (or
/// `default_name`). `--help` prints to stdout and exits 0; a usage error
/// prints argh's message (several lines for missing flags) and a hint to
/// run `--help` to stderr, an argument that is not UTF-8 one line naming
/// it; both exit 1.
/// Unlike `argh::from_env`, a closed stdout (`walsync --help | head -1`)
/// is no panic: the reader had what it wanted.
pub fn parse_args<T: argh::FromArgs>(default_name: &str) -> T {
    use std::io::Write;
    let mut argv = Vec::new();
    for a in std::env::args_os() {
        match a.into_string() {
            Ok(s) => argv.push(s),
            Err(bad) => {
                eprintln!("argument is not UTF-8: {}", bad.to_string_lossy());
                std::process::exit(1);
            }
        }
    }
    let name = argv
        .first()
        .and_then(|a| a.rsplit('/').next())
        .filter(|n| !n.is_empty())
        .unwrap_or(default_name)
        .to_string();
    let rest: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();
    match T::from_args(&[name.as_str()], &rest) {
        Ok(args) => args,
        Err(early) => {
            let code = match early.status {
                Ok(()) => {
                    let _ = writeln!(std::io::stdout(), "{}", early.output);
                    0
                }
                Err(()) => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "{}\nRun {name} --help for more information.",
                        early.output
                    );
                    1
                }
            };
            std::process::exit(code)
        }
    }
}

/// Exit with `result`'s status, or print its error as one line and exit
/// with status 1.
pub fn exit(result: Result<i32>) -> ! {
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("walsync: error: {e}");
            std::process::exit(1)
        }
    }
}

mod compact_cmd;
mod list_cmd;
mod restore_cmd;
mod snapshot_cmd;
mod status_cmd;
mod storage_flags;
mod sync_cmd;
#[cfg(test)]
mod tests;
mod verify_cmd;

pub use compact_cmd::*;
pub use list_cmd::*;
pub use restore_cmd::*;
pub use snapshot_cmd::*;
pub use status_cmd::*;
pub(crate) use storage_flags::storage_command;
pub use storage_flags::StorageFlags;
pub use sync_cmd::*;
pub use verify_cmd::*;
