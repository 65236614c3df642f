//! Command-line interface shared by the `walsync` and `walsync-sync` binaries.
//!
//! Why one module: `walsync-sync ARGS` must behave exactly like
//! `walsync sync ARGS` (a systemd `ExecStart=` line names one binary and has no
//! shell), so both binaries parse the same [`SyncArgs`] and call the same
//! function. Every command ends through [`exit`], which prints an error as one
//! line on stderr and exits non-zero.

use std::io::IsTerminal;
use std::path::Path;

use argh::FromArgs;

use crate::error::{Error, Result};
use crate::ltx;
use crate::restore::{self, RestoreOptions, Target};
use crate::storage::{self, S3Options};

/// walsync: continuous replication of SQLite databases to S3-compatible storage.
#[derive(FromArgs, Debug)]
pub struct Walsync {
    #[argh(subcommand)]
    pub command: Command,
}

/// The `walsync` subcommands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Sync(SyncArgs),
    Restore(RestoreArgs),
    Snapshot(SnapshotArgs),
    List(ListArgs),
    Verify(VerifyArgs),
}

/// Replicate databases continuously (same as `walsync-sync`).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "sync")]
pub struct SyncArgs {
    /// database paths or glob patterns (expanded by walsync, e.g. '/data/*.db')
    #[argh(positional)]
    pub databases: Vec<String>,

    /// bucket name, `s3://bucket/prefix` or `file:///dir`
    #[argh(option)]
    pub bucket: String,

    /// S3 endpoint URL (default: $AWS_ENDPOINT_URL_S3, then $AWS_ENDPOINT_URL)
    #[argh(option)]
    pub endpoint: Option<String>,

    /// S3 region (default: $AWS_REGION, then $AWS_DEFAULT_REGION, then us-east-1)
    #[argh(option)]
    pub region: Option<String>,

    /// use path-style addressing (needed by most self-hosted servers)
    #[argh(switch)]
    pub path_style: bool,
}

/// Restore a database from its replica.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "restore")]
pub struct RestoreArgs {
    /// database name in the bucket (its file name, e.g. app.db)
    #[argh(positional)]
    pub name: String,

    /// output path of the restored database
    #[argh(option, short = 'o')]
    pub output: String,

    /// bucket name, `s3://bucket/prefix` or `file:///dir`
    #[argh(option)]
    pub bucket: String,

    /// S3 endpoint URL (default: $AWS_ENDPOINT_URL_S3, then $AWS_ENDPOINT_URL)
    #[argh(option)]
    pub endpoint: Option<String>,

    /// S3 region (default: $AWS_REGION, then $AWS_DEFAULT_REGION, then us-east-1)
    #[argh(option)]
    pub region: Option<String>,

    /// use path-style addressing (needed by most self-hosted servers)
    #[argh(switch)]
    pub path_style: bool,

    /// restore exactly this txid (decimal, or hex with 0x) instead of the newest
    #[argh(option)]
    pub txid: Option<String>,

    /// restore the newest state at or before this RFC 3339 time
    #[argh(option)]
    pub timestamp: Option<String>,

    /// replace an existing output file
    #[argh(switch)]
    pub force: bool,

    /// do nothing (exit 0) when the output file already exists
    #[argh(switch)]
    pub if_db_not_exists: bool,

    /// do nothing (exit 0) when the bucket holds no replica of the database
    #[argh(switch)]
    pub if_replica_exists: bool,

    /// parallel downloads (default 8)
    #[argh(option, default = "crate::restore::DEFAULT_PARALLEL")]
    pub parallel: usize,
}

/// Take a consistent snapshot of a database now.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "snapshot")]
pub struct SnapshotArgs {
    /// database path
    #[argh(positional)]
    pub database: String,

    /// bucket name, `s3://bucket/prefix` or `file:///dir`
    #[argh(option)]
    pub bucket: String,
}

/// List replicated databases.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub struct ListArgs {
    /// bucket name, `s3://bucket/prefix` or `file:///dir`
    #[argh(option)]
    pub bucket: String,
}

/// Verify the replica of a database.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "verify")]
pub struct VerifyArgs {
    /// database name in the bucket
    #[argh(positional)]
    pub name: Option<String>,

    /// bucket name, `s3://bucket/prefix` or `file:///dir`
    #[argh(option)]
    pub bucket: String,
}

/// Run a parsed `walsync` command line.
pub fn run(args: Walsync) -> Result<()> {
    match args.command {
        Command::Sync(a) => run_sync(a),
        Command::Restore(a) => run_restore(a),
        Command::Snapshot(_) => Err(Error::Unimplemented("walsync snapshot")),
        Command::List(_) => Err(Error::Unimplemented("walsync list")),
        Command::Verify(_) => Err(Error::Unimplemented("walsync verify")),
    }
}

/// Run `walsync sync` / `walsync-sync`.
pub fn run_sync(_args: SyncArgs) -> Result<()> {
    Err(Error::Unimplemented("walsync sync"))
}

/// S3 options from the shared `--endpoint`, `--region` and `--path-style` flags.
pub fn s3_options(endpoint: Option<String>, region: Option<String>, path_style: bool) -> S3Options {
    S3Options {
        endpoint,
        region,
        path_style: path_style.then_some(true),
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

/// Run `walsync restore`.
pub fn run_restore(a: RestoreArgs) -> Result<()> {
    let out = Path::new(&a.output);
    if a.if_db_not_exists && out.exists() {
        log::info!(
            "{}: exists, nothing restored (--if-db-not-exists)",
            out.display()
        );
        return Ok(());
    }
    let target = match (&a.txid, &a.timestamp) {
        (Some(_), Some(_)) => {
            return Err(Error::Config(
                "--txid and --timestamp cannot be used together".into(),
            ))
        }
        (Some(t), None) => Target::Txid(parse_txid(t)?),
        (None, Some(ts)) => Target::Timestamp(ltx::parse_timestamp(ts)?),
        (None, None) => Target::Latest,
    };
    if a.parallel == 0 {
        return Err(Error::Config("--parallel must be at least 1".into()));
    }
    if !a.force && out.exists() {
        return Err(Error::Restore(format!(
            "{}: already exists (use --force to replace it)",
            out.display()
        )));
    }
    let opts = s3_options(a.endpoint, a.region, a.path_style);
    let storage = storage::open(&a.bucket, &opts)?;
    let replica = restore::list_replica(&*storage, &a.name)?;
    if replica.is_empty() && a.if_replica_exists {
        log::info!(
            "{}: no replica in {}, nothing restored (--if-replica-exists)",
            a.name,
            storage.describe()
        );
        return Ok(());
    }
    let plan = replica.plan(&*storage, target)?;
    let ropts = RestoreOptions {
        parallel: a.parallel,
        force: a.force,
        progress: std::io::stderr().is_terminal(),
        ..RestoreOptions::default()
    };
    let summary = restore::restore(&*storage, &plan, out, &ropts)?;
    println!("{}", summary.line());
    Ok(())
}

/// Set up logging (`RUST_LOG=walsync=debug`; default `walsync=info`).
pub fn init_logging() {
    let env = env_logger::Env::default().default_filter_or("walsync=info");
    // A second call (tests) is harmless; ignore its error.
    let _ = env_logger::Builder::from_env(env).try_init();
}

/// Print `result`'s error as one line and exit with a non-zero status.
pub fn exit(result: Result<()>) -> ! {
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("walsync: error: {e}");
            std::process::exit(match e {
                Error::Unimplemented(_) => 2,
                _ => 1,
            })
        }
    }
}
