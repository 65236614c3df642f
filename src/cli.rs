//! Command-line interface shared by the `walsync` and `walsync-sync` binaries.
//!
//! Why one module: `walsync-sync ARGS` must behave exactly like
//! `walsync sync ARGS` (a systemd `ExecStart=` line names one binary and has no
//! shell), so both binaries parse the same [`SyncArgs`] and call the same
//! function. Every command ends through [`exit`], which prints an error as one
//! line on stderr and exits non-zero.

use argh::FromArgs;

use crate::error::{Error, Result};

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
        Command::Restore(_) => Err(Error::Unimplemented("walsync restore")),
        Command::Snapshot(_) => Err(Error::Unimplemented("walsync snapshot")),
        Command::List(_) => Err(Error::Unimplemented("walsync list")),
        Command::Verify(_) => Err(Error::Unimplemented("walsync verify")),
    }
}

/// Run `walsync sync` / `walsync-sync`.
pub fn run_sync(_args: SyncArgs) -> Result<()> {
    Err(Error::Unimplemented("walsync sync"))
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
