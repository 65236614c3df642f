//! `walsync compact`: compaction and retention of one replica, by hand.

use super::*;

storage_command! {
    /// Compact a database's replica now and apply retention (what the daemon does on its own).
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "compact")]
    pub struct CompactArgs {
        /// database name in the bucket
        #[argh(positional)]
        pub name: String,

        ..location_flags,

        /// retention window: objects no restore inside it needs are deleted; 0 = delete nothing (default 24h)
        #[argh(option)]
        pub retention: Option<String>,

        /// print what would be merged and deleted, and why, without changing anything
        #[argh(switch)]
        pub dry_run: bool,

        ..key_flags("file holding the encryption key of an encrypted replica (merged objects are encrypted with it); default: $WALSYNC_ENCRYPTION_KEY (hex)"),
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
