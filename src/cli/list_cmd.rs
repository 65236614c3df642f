//! `walsync list`: the databases in a bucket, or one database's objects.

use super::*;

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
