//! `walsync snapshot`: a consistent snapshot of a database now.

use super::*;

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
    let (storage, fencer) = fence(raw, data, crate::defaults::LEASE_TTL, true)?;
    let db_name = daemon::db_name(Path::new(&a.database))?;
    if let Err(e) = fencer.acquire(&db_name, None) {
        // A daemon on this host: its lock names the process more precisely.
        crate::sqlite::lock::try_lock(Path::new(&a.database))?;
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
