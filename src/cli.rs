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

use crate::config::DbSpec;
use crate::daemon;
use crate::error::{Error, Result};
use crate::lease::{self, FencedStorage, Fencer};
use crate::ltx;
use crate::ops;
use crate::replicate::DbConfig;
use crate::restore::{self, RestoreOptions, Target};
use crate::storage::{self, S3Options, Storage};

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
    Sync(Box<SyncArgs>),
    Restore(RestoreArgs),
    Snapshot(SnapshotArgs),
    List(ListArgs),
    Verify(VerifyArgs),
    Compact(CompactArgs),
}

/// Replicate SQLite databases continuously to S3-compatible storage (same as `walsync-sync`).
#[derive(FromArgs, Debug, Default)]
#[argh(subcommand, name = "sync")]
pub struct SyncArgs {
    /// database paths or glob patterns, expanded by walsync itself (quote
    /// them: '/data/*.db'); a pattern's directory keeps being watched so
    /// databases created later are replicated too
    #[argh(positional)]
    pub databases: Vec<String>,

    /// TOML file with databases, per-database overrides and any of these
    /// settings (flags given here win); see scripts/walsync.example.toml
    #[argh(option)]
    pub config: Option<String>,

    /// bucket name, `s3://bucket/prefix` or `file:///dir`
    #[argh(option)]
    pub bucket: Option<String>,

    /// key prefix inside the bucket (same as `s3://bucket/prefix`)
    #[argh(option)]
    pub prefix: Option<String>,

    /// S3 endpoint URL (default: $AWS_ENDPOINT_URL_S3, then $AWS_ENDPOINT_URL, else AWS)
    #[argh(option)]
    pub endpoint: Option<String>,

    /// S3 region (default: $AWS_REGION, then $AWS_DEFAULT_REGION, then us-east-1)
    #[argh(option)]
    pub region: Option<String>,

    /// use path-style addressing (the default with a custom endpoint)
    #[argh(switch)]
    pub path_style: bool,

    /// number of uploader threads shared by all databases (default 4)
    #[argh(option)]
    pub uploaders: Option<usize>,

    /// take a full snapshot of every database this often, e.g. 24h, 30m; 0 = only when needed (default 24h)
    #[argh(option)]
    pub snapshot_interval: Option<String>,

    /// walsync runs a PASSIVE checkpoint after shipping once the WAL holds this many frames (default 1000)
    #[argh(option)]
    pub checkpoint_pages: Option<u64>,

    /// walsync runs a TRUNCATE checkpoint (a brief writer stall) once the WAL file is this many pages long (default 16384)
    #[argh(option)]
    pub truncate_pages: Option<u64>,

    /// while uploads are stuck, stop holding a database's WAL back once it is
    /// this many MiB (its next txid is then a snapshot); 0 = never (default 1024)
    #[argh(option)]
    pub max_wal_mib: Option<u64>,

    /// minimum time between two uploads of one database, e.g. 1s; commits in between are grouped (default 0: ship each commit at once)
    #[argh(option)]
    pub min_put_interval: Option<String>,

    /// memory for queued uploads in MiB, shared by all databases; beyond it the WAL is the buffer (default 64)
    #[argh(option)]
    pub memory_mib: Option<u64>,

    /// on SIGTERM/SIGINT, how long to wait for committed data to ship, e.g. 30s (default 30s)
    #[argh(option)]
    pub shutdown_timeout: Option<String>,

    /// serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9188 (default: off)
    #[argh(option)]
    pub metrics_addr: Option<String>,

    /// GET this URL (healthchecks.io / Uptime Kuma push) while every database is caught up (default: off; treated as a secret)
    #[argh(option)]
    pub heartbeat_url: Option<String>,

    /// at most one heartbeat per interval, e.g. 1m (default 5m)
    #[argh(option)]
    pub heartbeat_interval: Option<String>,

    /// withhold the heartbeat while any database lags more than this, e.g. 1m (default 1m)
    #[argh(option)]
    pub heartbeat_max_lag: Option<String>,

    /// keep every state of the last DURATION restorable, exactly; older objects no restore in the window needs are deleted; 0 = keep everything (default 24h)
    #[argh(option)]
    pub retention: Option<String>,

    /// an object is deleted only after it has been outside the retention window this long, so restores in flight finish (default 5m)
    #[argh(option)]
    pub retention_grace: Option<String>,

    /// intervals of compaction levels 1,2,3, e.g. 30s,5m,1h; 0 turns a level off, `off` all (default 30s,5m,1h)
    #[argh(option)]
    pub compaction: Option<String>,

    /// cap on S3 requests per second, shared by all databases; 0 = no cap (default 0)
    #[argh(option)]
    pub max_requests_per_sec: Option<u32>,

    /// file holding the encryption key (32 raw bytes or 64 hex digits, mode 0600); default: $WALSYNC_ENCRYPTION_KEY (hex); see README "Encryption"
    #[argh(option)]
    pub encryption_key_file: Option<String>,

    /// file holding an older key that only decrypts (key rotation); repeatable
    #[argh(option)]
    pub decryption_key_file: Vec<String>,

    /// lifetime of a database's writer lease in the bucket; another walsync may take a database over only after it expired (default 60s)
    #[argh(option, default = "String::from(\"60s\")")]
    pub lease_ttl: String,

    /// no writer lease in the bucket: only when nothing else can ever replicate the same names to the same prefix
    #[argh(switch)]
    pub no_fencing: bool,
}

impl SyncArgs {
    fn duration(flag: &str, value: &str) -> Result<Duration> {
        crate::config::duration(&format!("--{flag}"), value)
    }

    /// Fill every setting not given as a flag from the `--config` file, and
    /// add the file's databases. Returns the databases with their overrides.
    pub fn apply_config(&mut self) -> Result<Vec<DbSpec>> {
        let mut specs: Vec<DbSpec> = Vec::new();
        if let Some(path) = self.config.clone() {
            let path = Path::new(&path);
            let file = crate::config::load(path)?;
            specs = file.databases(path)?;
            macro_rules! fill {
                ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = file.$f.clone(); } )* };
            }
            fill!(
                bucket,
                prefix,
                endpoint,
                region,
                uploaders,
                snapshot_interval,
                checkpoint_pages,
                truncate_pages,
                max_wal_mib,
                min_put_interval,
                memory_mib,
                shutdown_timeout,
                retention,
                retention_grace,
                compaction,
                max_requests_per_sec,
                metrics_addr,
                heartbeat_url,
                heartbeat_interval,
                heartbeat_max_lag
            );
            self.path_style = self.path_style || file.path_style == Some(true);
        }
        specs.extend(self.databases.iter().map(DbSpec::plain));
        Ok(specs)
    }

    /// The `--bucket` value (from a flag or the config file).
    pub fn bucket(&self) -> Result<&str> {
        self.bucket.as_deref().ok_or_else(|| {
            Error::Config("--bucket is required (or `bucket = ...` in the --config file)".into())
        })
    }

    /// The storage spec combining `--bucket` and `--prefix`.
    pub fn storage_spec(&self) -> Result<String> {
        Ok(prefixed_spec(self.bucket()?, self.prefix.as_deref()))
    }

    /// Validate the flags into daemon options (after [`SyncArgs::apply_config`]).
    pub fn options(&self, databases: Vec<DbSpec>) -> Result<daemon::Options> {
        if databases.is_empty() {
            return Err(Error::Config(
                "no database given (e.g. walsync-sync '/data/*.db' --bucket NAME, or [[database]] in --config)".into(),
            ));
        }
        let uploaders = self.uploaders.unwrap_or(4);
        if uploaders == 0 || uploaders > 256 {
            return Err(Error::Config(format!(
                "--uploaders {uploaders}: must be 1..=256"
            )));
        }
        let checkpoint_pages = self.checkpoint_pages.unwrap_or(1000);
        let truncate_pages = self.truncate_pages.unwrap_or(16384);
        if checkpoint_pages == 0 || truncate_pages < checkpoint_pages {
            return Err(Error::Config(format!(
                "--checkpoint-pages {checkpoint_pages} / --truncate-pages {truncate_pages}: need 0 < checkpoint-pages <= truncate-pages"
            )));
        }
        let memory_mib = self.memory_mib.unwrap_or(64);
        if memory_mib == 0 || memory_mib > 1 << 20 {
            return Err(Error::Config(format!(
                "--memory-mib {memory_mib}: must be 1..=1048576"
            )));
        }
        let snapshot = Self::duration(
            "snapshot-interval",
            self.snapshot_interval.as_deref().unwrap_or("24h"),
        )?;
        let mut db = DbConfig::new("");
        db.snapshot_interval = (!snapshot.is_zero()).then_some(snapshot);
        db.checkpoint_pages = checkpoint_pages;
        db.truncate_pages = truncate_pages;
        db.max_wal_bytes = self.max_wal_mib.unwrap_or(1024).saturating_mul(1 << 20);
        db.min_put_interval = Self::duration(
            "min-put-interval",
            self.min_put_interval.as_deref().unwrap_or("0s"),
        )?;
        let metrics_addr = match &self.metrics_addr {
            None => None,
            Some(a) => Some(a.parse::<std::net::SocketAddr>().map_err(|e| {
                Error::Config(format!(
                    "--metrics-addr {a:?}: {e} (use IP:PORT, e.g. 127.0.0.1:9188)"
                ))
            })?),
        };
        let heartbeat = match &self.heartbeat_url {
            None => None,
            Some(url) => {
                let hb = crate::heartbeat::Config {
                    url: url.clone(),
                    interval: Self::duration(
                        "heartbeat-interval",
                        self.heartbeat_interval.as_deref().unwrap_or("5m"),
                    )?,
                    max_lag: Self::duration(
                        "heartbeat-max-lag",
                        self.heartbeat_max_lag.as_deref().unwrap_or("1m"),
                    )?,
                };
                hb.validate()?;
                Some(hb)
            }
        };
        let retention = Self::duration("retention", self.retention.as_deref().unwrap_or("24h"))?;
        db.retention = (!retention.is_zero()).then_some(retention);
        let compaction = crate::compact::Policy {
            intervals: parse_compaction(self.compaction.as_deref().unwrap_or("30s,5m,1h"))?,
            grace: Self::duration(
                "retention-grace",
                self.retention_grace.as_deref().unwrap_or("5m"),
            )?,
            tmp_dir: std::env::temp_dir(),
            recent: None,
            // Tests shorten it; not a setting users need.
            presence_check: std::env::var("WALSYNC_PRESENCE_CHECK_SECS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(crate::compact::PRESENCE_CHECK, Duration::from_secs),
        };
        Ok(daemon::Options {
            databases,
            db,
            uploaders,
            memory_budget: memory_mib << 20,
            shutdown_timeout: Self::duration(
                "shutdown-timeout",
                self.shutdown_timeout.as_deref().unwrap_or("30s"),
            )?,
            metrics_addr,
            heartbeat,
            compaction,
            max_requests_per_sec: self.max_requests_per_sec.unwrap_or(0),
            fencer: None,
            lease_store: None,
        })
    }
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

/// `--compaction 30s,5m,1h`: three intervals (levels 1–3); `0` turns a
/// level off, `off` turns all off.
pub fn parse_compaction(value: &str) -> Result<[Option<Duration>; 3]> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("off") {
        return Ok([None; 3]);
    }
    let parts: Vec<&str> = v.split(',').map(str::trim).collect();
    let bad = |why: String| {
        Error::Config(format!(
            "--compaction {value:?}: {why} (expected three intervals for levels 1,2,3, e.g. 30s,5m,1h; 0 turns a level off, `off` all)"
        ))
    };
    if parts.len() != 3 {
        return Err(bad(format!("{} value(s)", parts.len())));
    }
    let mut out = [None; 3];
    for (slot, p) in out.iter_mut().zip(&parts) {
        if *p == "0" {
            continue;
        }
        let d = humantime::parse_duration(p).map_err(|e| bad(format!("{p:?}: {e}")))?;
        if d < Duration::from_millis(100) {
            return Err(bad(format!("{p:?} is shorter than 100ms")));
        }
        *slot = Some(d);
    }
    Ok(out)
}

/// Compact a database's replica now and apply retention (what the daemon does on its own).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "compact")]
pub struct CompactArgs {
    /// database name in the bucket
    #[argh(positional)]
    pub name: String,

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

    /// retention window: objects no restore inside it needs are deleted; 0 = delete nothing (default 24h)
    #[argh(option, default = "String::from(\"24h\")")]
    pub retention: String,

    /// print what would be merged and deleted, and why, without changing anything
    #[argh(switch)]
    pub dry_run: bool,

    /// file holding the encryption key of an encrypted replica (merged objects are encrypted with it); default: $WALSYNC_ENCRYPTION_KEY (hex)
    #[argh(option)]
    pub encryption_key_file: Option<String>,

    /// file holding an older key that only decrypts (key rotation); repeatable
    #[argh(option)]
    pub decryption_key_file: Vec<String>,
}

/// Run `walsync compact`.
pub fn run_compact(a: CompactArgs) -> Result<()> {
    let retention = SyncArgs::duration("retention", &a.retention)?;
    let opts = s3_options(a.endpoint, a.region, a.path_style);
    let (_, storage) = open_store(
        &a.bucket,
        &opts,
        a.encryption_key_file.as_deref(),
        &a.decryption_key_file,
        false,
    )?;
    let mut out = std::io::stdout().lock();
    crate::compact::compact_by_hand(
        &*storage,
        &a.name,
        (!retention.is_zero()).then_some(retention),
        a.dry_run,
        ltx::now_ms(),
        &std::env::temp_dir(),
        &mut out,
    )?;
    Ok(())
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

    /// file holding the encryption key (32 raw bytes or 64 hex digits, mode 0600); default: $WALSYNC_ENCRYPTION_KEY (hex); see README "Encryption"
    #[argh(option)]
    pub encryption_key_file: Option<String>,

    /// file holding an older key that only decrypts (key rotation); repeatable
    #[argh(option)]
    pub decryption_key_file: Vec<String>,

    /// parallel downloads (default 8)
    #[argh(option, default = "crate::restore::DEFAULT_PARALLEL")]
    pub parallel: usize,
}

/// Take a consistent snapshot of a database now (refused while a walsync-sync daemon replicates it).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "snapshot")]
pub struct SnapshotArgs {
    /// database path
    #[argh(positional)]
    pub database: String,

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

    /// how long to wait for the upload to be acknowledged, e.g. 5m (default 10m)
    #[argh(option, default = "String::from(\"10m\")")]
    pub timeout: String,

    /// file holding the encryption key (32 raw bytes or 64 hex digits, mode 0600); default: $WALSYNC_ENCRYPTION_KEY (hex); see README "Encryption"
    #[argh(option)]
    pub encryption_key_file: Option<String>,

    /// file holding an older key that only decrypts (key rotation); repeatable
    #[argh(option)]
    pub decryption_key_file: Vec<String>,
}

/// List the databases in a bucket, or the files of one database.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub struct ListArgs {
    /// database name: list its files per level instead of all databases
    #[argh(positional)]
    pub name: Option<String>,

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

    /// print JSON instead of a table
    #[argh(switch)]
    pub json: bool,

    /// file holding the encryption key (32 raw bytes or 64 hex digits, mode 0600); default: $WALSYNC_ENCRYPTION_KEY (hex); see README "Encryption"
    #[argh(option)]
    pub encryption_key_file: Option<String>,

    /// file holding an older key that only decrypts (key rotation); repeatable
    #[argh(option)]
    pub decryption_key_file: Vec<String>,
}

/// Verify the replica of a database: chain, every object's checksums, optionally a test restore.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "verify")]
pub struct VerifyArgs {
    /// database name in the bucket
    #[argh(positional)]
    pub name: Option<String>,

    /// verify every database in the bucket
    #[argh(switch)]
    pub all: bool,

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

    /// also restore the newest txid into a temporary directory and run PRAGMA integrity_check
    #[argh(switch)]
    pub restore: bool,

    /// file holding the encryption key (32 raw bytes or 64 hex digits, mode 0600); default: $WALSYNC_ENCRYPTION_KEY (hex); see README "Encryption"
    #[argh(option)]
    pub encryption_key_file: Option<String>,

    /// file holding an older key that only decrypts (key rotation); repeatable
    #[argh(option)]
    pub decryption_key_file: Vec<String>,

    /// parallel downloads (default 8)
    #[argh(option, default = "crate::restore::DEFAULT_PARALLEL")]
    pub parallel: usize,
}

/// Run a parsed `walsync` command line.
pub fn run(args: Walsync) -> Result<()> {
    match args.command {
        Command::Sync(a) => run_sync(*a),
        Command::Restore(a) => run_restore(a),
        Command::Snapshot(a) => run_snapshot(a),
        Command::List(a) => run_list(a),
        Command::Verify(a) => run_verify(a),
        Command::Compact(a) => run_compact(a),
    }
}

/// Run `walsync sync` / `walsync-sync`.
pub fn run_sync(mut args: SyncArgs) -> Result<()> {
    let specs = args.apply_config()?;
    let mut opts = args.options(specs)?;
    let ttl = SyncArgs::duration("lease-ttl", &args.lease_ttl)?;
    if ttl < Duration::from_secs(1) {
        return Err(Error::Config(format!(
            "--lease-ttl {}: must be at least 1s",
            args.lease_ttl
        )));
    }
    let bucket = args.bucket()?.to_string();
    let s3 = s3_options(args.endpoint.clone(), args.region.clone(), args.path_style);
    let (raw, default) = open_store(
        &args.storage_spec()?,
        &s3,
        args.encryption_key_file.as_deref(),
        &args.decryption_key_file,
        true,
    )?;
    // Databases with a prefix or a key of their own get a storage of their
    // own, routed by name; one uploader pool serves them all.
    let mut own: Vec<Option<daemon::OwnStorage>> = Vec::with_capacity(opts.databases.len());
    for spec in &opts.databases {
        let key_file = spec
            .encryption_key_file
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        own.push(match (&spec.prefix, key_file) {
            (None, None) => None,
            (prefix, key_file) => {
                let spec_url = match prefix {
                    Some(p) => bucket_with_prefix(&bucket, p),
                    None => args.storage_spec()?,
                };
                let key_file = key_file.or_else(|| args.encryption_key_file.clone());
                let (raw, data) = open_store(
                    &spec_url,
                    &s3,
                    key_file.as_deref(),
                    &args.decryption_key_file,
                    true,
                )?;
                Some(daemon::OwnStorage { data, raw })
            }
        });
    }
    if args.no_fencing {
        log::warn!("writer fencing is off (--no-fencing)");
    } else {
        let leases = Arc::new(storage::RoutedStorage::new(raw));
        opts.fencer = Some(Arc::new(Fencer::unprobed(leases.clone(), ttl)));
        opts.lease_store = Some(leases);
    }
    daemon::run(opts, default, own)
}

/// The store named by `spec` twice: as is (`raw`: lease objects) and as the
/// pipeline sees it (`data`: encrypting when a key is configured).
pub fn open_store(
    spec: &str,
    s3: &S3Options,
    key_file: Option<&str>,
    decryption_files: &[String],
    daemon: bool,
) -> Result<(Arc<dyn Storage>, Arc<dyn Storage>)> {
    // The daemon says which key is in force; one-shot commands keep stderr
    // to their one line.
    let level = if daemon {
        log::Level::Info
    } else {
        log::Level::Debug
    };
    let raw: Arc<dyn Storage> = Arc::from(storage::open(spec, s3)?);
    let env = std::env::var(storage::crypt::KEY_ENV).ok();
    let data: Arc<dyn Storage> =
        match storage::Keyring::from_options(key_file, decryption_files, env)? {
            Some(keys) => {
                log::log!(
                    level,
                    "client-side encryption on: key id {} (new objects)",
                    keys.current_id()
                );
                Arc::new(storage::CryptStorage::new(raw.clone(), keys))
            }
            None => raw.clone(),
        };
    Ok((raw, data))
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
    let (_, storage) = open_store(
        &a.bucket,
        &opts,
        a.encryption_key_file.as_deref(),
        &a.decryption_key_file,
        false,
    )?;
    // The newest state or a txid: a few listing pages per level; else (or
    // when that finds no chain) the full listing, which explains failures.
    // An object listed a moment ago can be gone when its header is read
    // (retention, `walsync compact`): plan again, a bounded number of times.
    let plan_once = || -> Result<Option<restore::Plan>> {
        if let Some(plan) = restore::plan_by_level(&*storage, &a.name, target)? {
            return Ok(Some(plan));
        }
        let replica = restore::list_replica(&*storage, &a.name)?;
        if replica.is_empty() && a.if_replica_exists {
            return Ok(None);
        }
        replica.plan(&*storage, target).map(Some)
    };
    let mut attempt = 0;
    let plan = loop {
        match plan_once() {
            Ok(Some(plan)) => break plan,
            Ok(None) => {
                log::info!(
                    "{}: no replica in {}, nothing restored (--if-replica-exists)",
                    a.name,
                    storage.describe()
                );
                return Ok(());
            }
            Err(e)
                if e.storage_kind() == Some(crate::StorageErrorKind::NotFound) && attempt < 3 =>
            {
                attempt += 1;
                log::warn!("{}: {e}; planning again", a.name);
            }
            Err(e) => return Err(e),
        }
    };
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

/// Run `walsync list`.
pub fn run_list(a: ListArgs) -> Result<()> {
    let opts = s3_options(a.endpoint, a.region, a.path_style);
    let (_, storage) = open_store(
        &a.bucket,
        &opts,
        a.encryption_key_file.as_deref(),
        &a.decryption_key_file,
        false,
    )?;
    let text = match &a.name {
        Some(name) => {
            let files = ops::list_files(&*storage, name)?;
            if files.is_empty() {
                return Err(Error::Restore(format!(
                    "{name}: no replica in {}",
                    storage.describe()
                )));
            }
            ops::format_files(name.trim_matches('/'), &files, a.json)
        }
        None => ops::format_databases(&ops::list_databases(&*storage, 8)?, a.json),
    };
    print!("{text}");
    Ok(())
}

/// Run `walsync verify`: one line per database, one line per problem;
/// an error (non-zero exit) when anything failed.
pub fn run_verify(a: VerifyArgs) -> Result<()> {
    if a.parallel == 0 {
        return Err(Error::Config("--parallel must be at least 1".into()));
    }
    let opts = s3_options(a.endpoint, a.region, a.path_style);
    let (_, storage) = open_store(
        &a.bucket,
        &opts,
        a.encryption_key_file.as_deref(),
        &a.decryption_key_file,
        false,
    )?;
    let names = match (&a.name, a.all) {
        (Some(_), true) => {
            return Err(Error::Config(
                "give a database name or --all, not both".into(),
            ))
        }
        (None, false) => {
            return Err(Error::Config(
                "give a database name, or --all for every database in the bucket".into(),
            ))
        }
        (Some(n), false) => vec![n.clone()],
        (None, true) => {
            let dbs = ops::list_databases(&*storage, 8)?;
            if dbs.is_empty() {
                return Err(Error::Restore(format!(
                    "no database in {}",
                    storage.describe()
                )));
            }
            dbs.into_iter().map(|d| d.name).collect()
        }
    };
    let vopts = ops::VerifyOptions {
        restore: a.restore,
        parallel: a.parallel,
    };
    let mut failed = 0usize;
    let mut problems = 0usize;
    for name in &names {
        let report = ops::verify_db(&*storage, name, &vopts);
        for p in &report.problems {
            println!("problem: {p}");
        }
        println!("{}", report.line());
        if !report.ok() {
            failed += 1;
            problems += report.problems.len();
        }
    }
    if failed > 0 {
        return Err(Error::Restore(format!(
            "verify failed: {problems} problem(s) in {failed} of {} database(s)",
            names.len()
        )));
    }
    Ok(())
}

/// Run `walsync snapshot`.
pub fn run_snapshot(a: SnapshotArgs) -> Result<()> {
    let timeout = SyncArgs::duration("timeout", &a.timeout)?;
    let opts = s3_options(a.endpoint, a.region, a.path_style);
    let (raw, data) = open_store(
        &a.bucket,
        &opts,
        a.encryption_key_file.as_deref(),
        &a.decryption_key_file,
        false,
    )?;
    // A snapshot allocates a txid: it needs the database's lease like a daemon.
    let (storage, fencer) = fence(raw, data, lease::DEFAULT_TTL, true)?;
    let db_name = daemon::db_name(Path::new(&a.database))?;
    if let Err(e) = fencer.acquire(&db_name, None) {
        // A daemon on this host: its lock names the process more precisely.
        crate::lock::try_lock(Path::new(&a.database))?;
        return Err(e);
    }
    let result = ops::snapshot(Path::new(&a.database), storage.clone(), timeout);
    fencer.release(&db_name);
    let (name, txid) = result?;
    println!(
        "snapshot of {name} stored as txid {txid} in {}",
        storage.describe()
    );
    Ok(())
}

/// Set up logging (`RUST_LOG=walsync=debug`; default `walsync=info`).
pub fn init_logging() {
    let env = env_logger::Env::default().default_filter_or("walsync=info");
    // ureq logs each request's full URL at debug level; for the heartbeat
    // that URL is a secret (its token), so ureq is capped at info whatever
    // RUST_LOG says (a later directive for the same module wins).
    // A second call (tests) is harmless; ignore its error.
    let _ = env_logger::Builder::from_env(env)
        .filter_module("ureq", log::LevelFilter::Info)
        .filter_module("ureq_proto", log::LevelFilter::Info)
        .try_init();
}

/// Print `result`'s error as one line and exit with a non-zero status.
pub fn exit(result: Result<()>) -> ! {
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("walsync: error: {e}");
            std::process::exit(1)
        }
    }
}
