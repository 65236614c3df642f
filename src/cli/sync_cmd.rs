//! `walsync sync` / `walsync-sync`: the daemon's flags, their defaults, and
//! starting it.
//!
//! Why a file of its own: the daemon has most of the flags; turning them
//! into settings (and refusing bad ones in one line) is its own job.

use super::*;
use crate::daemon::missing::IfMissing;

storage_command! {
    /// Replicate SQLite databases continuously (same as `walsync-sync`).
    #[derive(FromArgs, Debug, Default)]
    #[argh(
        subcommand,
        name = "sync",
        usage = "[<db or 'glob'>...] [--config <f>] [--bucket <b>] [options]",
        note = "--snapshot-interval D  full snapshot this often; 0 = if needed (default 24h)",
        note = "--checkpoint-pages N   PASSIVE checkpoint at N WAL frames (default 1000)",
        note = "--min-put-interval D   least time between uploads of a DB (default 1s)",
        note = "--shutdown-timeout D   on SIGTERM, wait this long for uploads (default 30s)",
        note = "--heartbeat-interval D at most one heartbeat per D (default 5m)",
        note = "--heartbeat-max-lag D  no heartbeat while a database lags more (default 1m)",
        note = "--max-requests-per-sec N  S3 requests per second, all DBs (default 0: no cap)",
        note = "--encryption-key-file F (0600), --decryption-key-file F (old key; repeatable)",
        note = "--lease-ttl D          writer lease lifetime (default 60s); --no-fencing: none",
        note = "--exec CMD             run CMD once replicating; exit with its status (or 1)",
        note = "--close-idle-after D   close idle DBs' files after D; 0 = never (default 10s)",
        note = "--restore-if-missing   restore absent DBs first (--require-replica: or fail)",
        note = "Environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL), AWS_REGION (or AWS_DEFAULT_REGION),
AWS_CA_BUNDLE, WALSYNC_ENCRYPTION_KEY, NOTIFY_SOCKET, RUST_LOG."
    )]
    pub struct SyncArgs {
        /// database paths or glob patterns, expanded by walsync itself (quote
        /// them: '/data/*.db'); a pattern's directory keeps being watched so
        /// databases created later are replicated too
        #[argh(positional, hidden_help)]
        pub databases: Vec<String>,

        /// TOML file of databases and settings; flags win
        #[argh(option)]
        pub config: Option<String>,

        /// bucket name, s3://bucket/prefix or file:///dir
        #[argh(option)]
        pub bucket: Option<String>,

        /// key prefix inside the bucket (same as s3://bucket/prefix)
        #[argh(option)]
        pub prefix: Option<String>,

        ..s3_flags(
            "S3 endpoint URL (default: $AWS_ENDPOINT_URL_S3, else AWS)",
            "path-style addressing (automatic with a custom endpoint)"
        ),

        /// upload threads (default 4, one per 500 databases up to 24)
        #[argh(option)]
        pub uploaders: Option<usize>,

        /// full snapshot of every database this often, e.g. 24h, 30m; 0 = only when needed (default 24h)
        #[argh(option, hidden_help)]
        pub snapshot_interval: Option<String>,

        /// walsync runs a PASSIVE checkpoint after shipping once the WAL holds this many frames (default 1000)
        #[argh(option, hidden_help)]
        pub checkpoint_pages: Option<u64>,

        /// TRUNCATE checkpoint at a WAL this many pages (default 16384)
        #[argh(option)]
        pub truncate_pages: Option<u64>,

        /// WAL MiB held back in an S3 outage; 0 = any (default 1024)
        #[argh(option)]
        pub max_wal_mib: Option<u64>,

        /// minimum time between two uploads of one database; 0 = every commit at once (default 1s)
        #[argh(option, hidden_help)]
        pub min_put_interval: Option<String>,

        /// close an idle database's files after this long without a write; 0 = never (default 10s)
        #[argh(option, hidden_help)]
        pub close_idle_after: Option<String>,

        /// memory for queued uploads in MiB, all DBs (default 64)
        #[argh(option)]
        pub memory_mib: Option<u64>,

        /// on SIGTERM/SIGINT, how long to wait for committed data to ship (default 30s)
        #[argh(option, hidden_help)]
        pub shutdown_timeout: Option<String>,

        /// serve Prometheus /metrics at IP:PORT (default: off)
        #[argh(option)]
        pub metrics_addr: Option<String>,

        /// GET URL while every database is caught up (default: off)
        #[argh(option)]
        pub heartbeat_url: Option<String>,

        /// for `walsync status`; none = off (default: see its --help)
        #[argh(option)]
        pub status_socket: Option<String>,

        /// at most one heartbeat per interval (default 5m)
        #[argh(option, hidden_help)]
        pub heartbeat_interval: Option<String>,

        /// withhold the heartbeat while any database lags more than this (default 1m)
        #[argh(option, hidden_help)]
        pub heartbeat_max_lag: Option<String>,

        /// every state this far back stays restorable (default 24h)
        #[argh(option)]
        pub retention: Option<String>,

        /// delete objects out of retention this late (default 5m)
        #[argh(option)]
        pub retention_grace: Option<String>,

        /// level 1,2,3 intervals; 0/off = none (default 30s,5m,1h)
        #[argh(option)]
        pub compaction: Option<String>,

        /// cap on S3 requests per second, shared by all databases (default 0: no cap)
        #[argh(option, hidden_help)]
        pub max_requests_per_sec: Option<u32>,

        ..key_flags[hidden_help],

        /// writer lease lifetime in the bucket (default 60s)
        #[argh(option, hidden_help)]
        pub lease_ttl: Option<String>,

        /// no writer lease (only if nothing else writes these names)
        #[argh(switch, hidden_help)]
        pub no_fencing: bool,

        /// run this command (split into words as a shell would, no shell)
        /// once replication runs; walsync exits when it exits, with its status
        #[argh(option, hidden_help)]
        pub exec: Option<String>,

        /// before replicating, restore each database given as a plain path
        /// that does not exist from its replica (newest state)
        #[argh(switch, hidden_help)]
        pub restore_if_missing: bool,

        /// with --restore-if-missing: a missing database without a replica
        /// is an error (instead of starting empty)
        #[argh(switch, hidden_help)]
        pub require_replica: bool,

        /// print the version and the git commit, then exit
        #[argh(switch, short = 'V')]
        pub version: bool,
    }
}

impl SyncArgs {
    /// Fill every setting not given as a flag from the `--config` file, and
    /// add the file's databases. Returns the databases with their overrides.
    pub fn apply_config(&mut self) -> Result<Vec<DbSpec>> {
        let mut specs: Vec<DbSpec> = Vec::new();
        if let Some(path) = self.config.clone() {
            let path = Path::new(&path);
            let file = crate::daemon::config::load(path)?;
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
                close_idle_after,
                memory_mib,
                shutdown_timeout,
                retention,
                retention_grace,
                compaction,
                max_requests_per_sec,
                metrics_addr,
                status_socket,
                heartbeat_url,
                heartbeat_interval,
                heartbeat_max_lag,
                exec
            );
            self.path_style = self.path_style || file.path_style == Some(true);
            self.restore_if_missing =
                self.restore_if_missing || file.restore_if_missing == Some(true);
            self.require_replica = self.require_replica || file.require_replica == Some(true);
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
        let uploaders = self.uploaders;
        if let Some(n) = uploaders.filter(|n| *n == 0 || *n > 256) {
            return Err(Error::Config(format!("--uploaders {n}: must be 1..=256")));
        }
        let checkpoint_pages = self.checkpoint_pages.unwrap_or(defaults::CHECKPOINT_PAGES);
        let truncate_pages = self.truncate_pages.unwrap_or(defaults::TRUNCATE_PAGES);
        if checkpoint_pages == 0 || truncate_pages < checkpoint_pages {
            return Err(Error::Config(format!(
                "--checkpoint-pages {checkpoint_pages} / --truncate-pages {truncate_pages}: need 0 < checkpoint-pages <= truncate-pages"
            )));
        }
        let memory_mib = self.memory_mib.unwrap_or(defaults::MEMORY_MIB);
        if memory_mib == 0 || memory_mib > 1 << 20 {
            return Err(Error::Config(format!(
                "--memory-mib {memory_mib}: must be 1..=1048576"
            )));
        }
        let snapshot = duration_or(
            "snapshot-interval",
            &self.snapshot_interval,
            defaults::SNAPSHOT_INTERVAL,
        )?;
        let mut db = DbConfig::new("");
        db.snapshot_interval = (!snapshot.is_zero()).then_some(snapshot);
        db.checkpoint_pages = checkpoint_pages;
        db.truncate_pages = truncate_pages;
        db.max_wal_bytes = self
            .max_wal_mib
            .unwrap_or(defaults::MAX_WAL_MIB)
            .saturating_mul(1 << 20);
        db.min_put_interval = duration_or(
            "min-put-interval",
            &self.min_put_interval,
            defaults::MIN_PUT_INTERVAL,
        )?;
        let close_idle = duration_or(
            "close-idle-after",
            &self.close_idle_after,
            defaults::CLOSE_IDLE_AFTER,
        )?;
        db.close_idle_after = (!close_idle.is_zero()).then_some(close_idle);
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
                let hb = crate::daemon::heartbeat::Config {
                    url: url.clone(),
                    interval: duration_or(
                        "heartbeat-interval",
                        &self.heartbeat_interval,
                        defaults::HEARTBEAT_INTERVAL,
                    )?,
                    max_lag: duration_or(
                        "heartbeat-max-lag",
                        &self.heartbeat_max_lag,
                        defaults::HEARTBEAT_MAX_LAG,
                    )?,
                };
                hb.validate()?;
                Some(hb)
            }
        };
        let retention = duration_or("retention", &self.retention, defaults::RETENTION)?;
        db.retention = (!retention.is_zero()).then_some(retention);
        let intervals = match &self.compaction {
            Some(v) => parse_compaction(v)?,
            None => defaults::COMPACTION_INTERVALS.map(Some),
        };
        let compaction = crate::compact::Policy {
            intervals,
            grace: duration_or(
                "retention-grace",
                &self.retention_grace,
                defaults::RETENTION_GRACE,
            )?,
            tmp_dir: std::env::temp_dir(),
            recent: None,
            // Tests shorten it; not a setting users need.
            presence_check: std::env::var("WALSYNC_PRESENCE_CHECK_SECS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(crate::compact::PRESENCE_CHECK, Duration::from_secs),
        };
        let if_missing = match (self.restore_if_missing, self.require_replica) {
            (false, false) => IfMissing::Refuse,
            (true, false) => IfMissing::Restore,
            (true, true) => IfMissing::RestoreRequired,
            (false, true) => {
                return Err(Error::Config(
                    "--require-replica needs --restore-if-missing".into(),
                ))
            }
        };
        let exec = self.exec.as_deref().map(daemon::exec::split).transpose()?;
        Ok(daemon::Options {
            databases,
            db,
            uploaders,
            memory_budget: memory_mib << 20,
            shutdown_timeout: duration_or(
                "shutdown-timeout",
                &self.shutdown_timeout,
                defaults::SHUTDOWN_TIMEOUT,
            )?,
            metrics_addr,
            status_socket: crate::daemon::status::Setting::parse(self.status_socket.as_deref()),
            heartbeat,
            compaction,
            max_requests_per_sec: self
                .max_requests_per_sec
                .unwrap_or(defaults::MAX_REQUESTS_PER_SEC),
            fencer: None,
            lease_store: None,
            exec,
            if_missing,
        })
    }

    /// The storage flags; the bucket (from a flag or the config file) with
    /// `--prefix` appended is the spec.
    pub fn storage(&self) -> Result<StorageFlags> {
        Ok(StorageFlags::new(
            self.storage_spec()?,
            self.endpoint.clone(),
            self.region.clone(),
            self.path_style,
            self.encryption_key_file.clone(),
            self.decryption_key_file.clone(),
        ))
    }
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

/// Run `walsync sync` / `walsync-sync`; returns the exit status (with
/// `--exec`, the child's).
pub fn run_sync(mut args: SyncArgs) -> Result<i32> {
    if args.version {
        outln!("{}", version_line(&program_name()));
        return Ok(0);
    }
    crate::daemon::tunables::reexec_with_tcache_off();
    let specs = args.apply_config()?;
    let mut opts = args.options(specs)?;
    let ttl = duration_or("lease-ttl", &args.lease_ttl, defaults::LEASE_TTL)?;
    if ttl < Duration::from_secs(1) {
        return Err(Error::Config(format!(
            "--lease-ttl {}: must be at least 1s",
            args.lease_ttl.as_deref().unwrap_or_default()
        )));
    }
    let bucket = args.bucket()?.to_string();
    let flags = args.storage()?;
    let (raw, default) = flags.open(true)?;
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
                let flags = StorageFlags {
                    spec: match prefix {
                        Some(p) => bucket_with_prefix(&bucket, p),
                        None => flags.spec.clone(),
                    },
                    key_file: key_file.or_else(|| flags.key_file.clone()),
                    ..flags.clone()
                };
                let (raw, data) = flags.open(true)?;
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
