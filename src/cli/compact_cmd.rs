//! `walsync compact`: compaction and retention of one replica, by hand.

use super::*;

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
        crate::util::now_ms(),
        &std::env::temp_dir(),
        &mut out,
    )?;
    Ok(())
}
