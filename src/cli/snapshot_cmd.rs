//! `walsync snapshot`: a consistent snapshot of a database now.

use super::*;

storage_command! {
    /// Snapshot a database now (refused while walsync-sync replicates it).
    #[derive(FromArgs, Debug)]
    #[argh(
        subcommand,
        name = "snapshot",
        usage = "<database path> --bucket <bucket> [options]",
        note = "Environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL), AWS_REGION (or AWS_DEFAULT_REGION),
AWS_CA_BUNDLE, WALSYNC_ENCRYPTION_KEY, RUST_LOG."
    )]
    pub struct SnapshotArgs {
        /// database path
        #[argh(positional)]
        pub database: String,

        /// name in the bucket, e.g. acme/data.db for a database walsync-sync
        /// found by a pattern (the path below its fixed part); else the file name
        #[argh(option)]
        pub name: Option<String>,

        ..location_flags,

        /// wait this long for the upload to be stored (default 10m)
        #[argh(option)]
        pub timeout: Option<String>,

        ..key_flags,
    }
}

/// Run `walsync snapshot`.
pub fn run_snapshot(a: SnapshotArgs) -> Result<()> {
    let timeout = duration_or("timeout", &a.timeout, defaults::SNAPSHOT_TIMEOUT)?;
    let (raw, data) = a.storage().open(false)?;
    // A snapshot allocates a txid: it needs the database's lease like a daemon.
    let (storage, fencer) = fence(raw, data, defaults::LEASE_TTL, true)?;
    let db_name = match &a.name {
        Some(n) => {
            crate::ltx::check_db_name(n)
                .map_err(|why| Error::Config(format!("--name {n:?}: {why}")))?;
            n.clone()
        }
        None => daemon::db_name(Path::new(&a.database))?,
    };
    if let Err(e) = fencer.acquire(&db_name, None) {
        // A daemon on this host: its lock names the process more precisely.
        crate::sqlite::lock::try_lock(Path::new(&a.database))?;
        return Err(e);
    }
    let result = ops::snapshot(Path::new(&a.database), &db_name, storage.clone(), timeout);
    fencer.release(&db_name);
    let (name, txid) = result?;
    outln!(
        "snapshot of {name} stored as txid {txid} in {}",
        storage.describe()
    );
    Ok(())
}
