//! `walsync restore`: a database at its newest state, a txid or a time.

use super::*;

storage_command! {
    /// Restore a database from its replica.
    #[derive(FromArgs, Debug)]
    #[argh(
        subcommand,
        name = "restore",
        usage = "<name> -o <output> --bucket <bucket> [options]",
        note = "Environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL), AWS_REGION (or AWS_DEFAULT_REGION),
AWS_CA_BUNDLE, WALSYNC_ENCRYPTION_KEY, RUST_LOG."
    )]
    pub struct RestoreArgs {
        /// database name in the bucket (acme/data.db for a tree)
        #[argh(positional)]
        pub name: String,

        /// output path of the restored database
        #[argh(option, short = 'o')]
        pub output: String,

        ..location_flags,

        /// restore this txid (decimal, or hex with 0x), not the newest
        #[argh(option)]
        pub txid: Option<String>,

        /// restore the newest state at or before this RFC 3339 time
        #[argh(option)]
        pub timestamp: Option<String>,

        /// replace an existing output file
        #[argh(switch)]
        pub force: bool,

        /// do nothing (exit 0) when the output file exists
        #[argh(switch)]
        pub if_db_not_exists: bool,

        /// do nothing (exit 0) when there is no replica
        #[argh(switch)]
        pub if_replica_exists: bool,

        ..key_flags,

        /// parallel GETs, also of ranges (default 8); bounded memory:
        /// ~N x 18 MiB + 16 bytes per page of the largest object
        #[argh(option, default = "crate::defaults::RESTORE_PARALLEL")]
        pub parallel: usize,

        /// PRAGMA integrity_check (also indexes; slow), not quick_check
        #[argh(switch)]
        pub integrity_check: bool,

        /// then apply new transactions until SIGTERM (read replica)
        #[argh(switch)]
        pub follow: bool,

        /// with --follow: longest idle wait between polls (10s)
        #[argh(option)]
        pub follow_interval_max: Option<String>,

        /// with --follow: wait for a replica that does not exist yet
        #[argh(switch)]
        pub wait_for_replica: bool,
        /// print the plan (objects, bytes, requests, target); no writes
        #[argh(switch)]
        pub dry_run: bool,

        /// with --dry-run: print the plan as JSON
        #[argh(switch)]
        pub json: bool,
    }
}

/// Run `walsync restore`.
pub fn run_restore(a: RestoreArgs) -> Result<()> {
    if a.follow || a.wait_for_replica || a.follow_interval_max.is_some() {
        if a.dry_run {
            return Err(Error::Config(
                "--dry-run cannot be used with --follow".into(),
            ));
        }
        return run_follow(a);
    }
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
    if a.json && !a.dry_run {
        return Err(Error::Config("--json needs --dry-run".into()));
    }
    if !a.force && !a.dry_run && out.exists() {
        return Err(Error::Restore(format!(
            "{}: already exists (use --force to replace it)",
            out.display()
        )));
    }
    let storage = a.storage().open_data()?;
    // The newest state or a txid: a few listing pages per level; else (or
    // when that finds no chain) the full listing, which explains failures.
    let plan = match restore::plan_if_replica(&*storage, &a.name, target)? {
        Some(plan) => plan,
        None if a.if_replica_exists => {
            log::info!(
                "{}: no replica in {}, nothing restored (--if-replica-exists)",
                a.name,
                storage.describe()
            );
            return Ok(());
        }
        // No replica: the planner's own error says where it looked.
        None => crate::replica::list(&*storage, &a.name)?.plan(&*storage, target)?,
    };
    let ropts = RestoreOptions {
        parallel: a.parallel,
        force: a.force,
        progress: std::io::stderr().is_terminal(),
        check: sqlite_check(&a),
        ..RestoreOptions::default()
    };
    if a.dry_run {
        let time = plan.target_time_ms(&*storage)?;
        out!("{}", plan.describe(time, &ropts, a.json));
        if !a.force && out.exists() && !a.json {
            outln!("note: {} exists; the restore needs --force", out.display());
        }
        return Ok(());
    }
    let summary = restore::restore(&*storage, &plan, out, &ropts)?;
    outln!("{}", summary.line());
    Ok(())
}

/// `walsync restore --follow`: restore the newest state, then keep it
/// current until SIGTERM/SIGINT ([`crate::follow`]).
fn run_follow(a: RestoreArgs) -> Result<()> {
    let conflict = [
        (
            !a.follow,
            "--follow-interval-max and --wait-for-replica need --follow",
        ),
        (a.txid.is_some(), "--txid cannot be used with --follow"),
        (
            a.timestamp.is_some(),
            "--timestamp cannot be used with --follow",
        ),
        (
            a.if_db_not_exists,
            "--if-db-not-exists cannot be used with --follow",
        ),
        (
            a.if_replica_exists,
            "--if-replica-exists cannot be used with --follow",
        ),
        (a.parallel == 0, "--parallel must be at least 1"),
    ];
    if let Some((_, why)) = conflict.iter().find(|(bad, _)| *bad) {
        return Err(Error::Config((*why).into()));
    }
    let max = duration_or(
        "follow-interval-max",
        &a.follow_interval_max,
        crate::follow::DEFAULT_INTERVAL_MAX,
    )?;
    if max.is_zero() {
        return Err(Error::Config(
            "--follow-interval-max must be more than 0".into(),
        ));
    }
    let out = Path::new(&a.output);
    if !a.force && out.exists() {
        return Err(Error::Restore(format!(
            "{}: already exists (use --force to replace it)",
            out.display()
        )));
    }
    let storage = a.storage().open_data()?;
    let stop = crate::daemon::signal_channel()?;
    let plan = match restore::plan_if_replica(&*storage, &a.name, Target::Latest)? {
        Some(plan) => plan,
        None if a.wait_for_replica => {
            match crate::follow::wait_for_replica(&*storage, &a.name, max, &stop)? {
                Some(plan) => plan,
                None => return Ok(()),
            }
        }
        None => {
            return Err(Error::Restore(format!(
                "{}: no replica in {} (use --wait-for-replica to wait for one)",
                a.name,
                storage.describe()
            )))
        }
    };
    let ropts = RestoreOptions {
        parallel: a.parallel,
        force: a.force,
        progress: std::io::stderr().is_terminal(),
        check: sqlite_check(&a),
        ..RestoreOptions::default()
    };
    let summary = restore::restore(&*storage, &plan, out, &ropts)?;
    outln!("{}", summary.line());
    let done = crate::follow::follow(&*storage, &plan.db, out, summary.txid, max, &stop)?;
    outln!(
        "stopped following {} at txid {} ({} objects applied, {} polls)",
        done.db,
        done.txid,
        done.objects,
        done.polls
    );
    Ok(())
}

/// SQLite's check of the restored file: `--integrity-check` or the default.
fn sqlite_check(a: &RestoreArgs) -> restore::SqliteCheck {
    if a.integrity_check {
        restore::SqliteCheck::Integrity
    } else {
        restore::SqliteCheck::Quick
    }
}
