//! `walsync list`: the databases in a bucket, or one database's objects.

use super::*;

storage_command! {
    /// List the databases in a bucket, or the files of one database.
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "list")]
    pub struct ListArgs {
        /// database name: list its files per level instead of all databases
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
            ops::format_files(name.trim_matches('/'), &files, a.json)
        }
        None => ops::format_databases(&ops::list_databases(&*storage, 8)?, a.json),
    };
    print!("{text}");
    Ok(())
}
