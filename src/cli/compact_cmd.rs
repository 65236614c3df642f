//! `walsync compact`: compaction and retention of one replica, by hand.

use super::*;

storage_command! {
    /// Compact a replica and apply retention now (as the daemon does on its own).
    #[derive(FromArgs, Debug)]
    #[argh(
        subcommand,
        name = "compact",
        usage = "<name> --bucket <bucket> [--dry-run] [options]",
        note = "Environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL), AWS_REGION (or AWS_DEFAULT_REGION),
AWS_CA_BUNDLE, WALSYNC_ENCRYPTION_KEY, RUST_LOG."
    )]
    pub struct CompactArgs {
        /// database name in the bucket
        #[argh(positional)]
        pub name: String,

        ..location_flags,

        /// keep every state this far back; 0 = all (default 24h)
        #[argh(option)]
        pub retention: Option<String>,

        /// print what would change, and why; change nothing
        #[argh(switch)]
        pub dry_run: bool,

        ..key_flags("key file (mode 0600), also for merged objects (else env)"),
    }
}

/// Run `walsync compact`.
pub fn run_compact(a: CompactArgs) -> Result<()> {
    let retention = duration_or("retention", &a.retention, defaults::RETENTION)?;
    let storage = a.storage().open_data()?;
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
