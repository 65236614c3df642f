//! `walsync list`: the databases in a bucket, or one database's objects.

use super::*;

storage_command! {
    /// List the databases in a bucket, or the files of one database.
    #[derive(FromArgs, Debug)]
    #[argh(
        subcommand,
        name = "list",
        usage = "[<name>] --bucket <bucket> [--json] [options]",
        note = "Environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL), AWS_REGION (or AWS_DEFAULT_REGION),
AWS_CA_BUNDLE, WALSYNC_ENCRYPTION_KEY, RUST_LOG."
    )]
    pub struct ListArgs {
        /// database name: list its files per level and its restorable range
        #[argh(positional)]
        pub name: Option<String>,

        ..location_flags,

        /// print JSON instead of a table
        #[argh(switch)]
        pub json: bool,

        ..key_flags,
    }
}

/// Run `walsync list`.
pub fn run_list(a: ListArgs) -> Result<()> {
    let storage = a.storage().open_data()?;
    let text = match &a.name {
        Some(name) => {
            let files = ops::list_files(&*storage, name)?;
            if files.is_empty() {
                return Err(Error::Restore(format!(
                    "{name}: no replica in {}",
                    storage.describe()
                )));
            }
            let range = ops::restorable_range(&*storage, name, &files)?;
            ops::format_files(name.trim_matches('/'), &files, range.as_ref(), a.json)
        }
        None => ops::format_databases(&ops::list_databases(&*storage, 8)?, a.json),
    };
    out!("{text}");
    Ok(())
}
