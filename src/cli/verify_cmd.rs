//! `walsync verify`: a replica's chain and checksums, optionally a test
//! restore.

use super::*;

/// Verify the replica of a database: chain, every object's checksums, optionally a test restore.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "verify")]
pub struct VerifyArgs {
    /// database name in the bucket
    #[argh(positional)]
    pub name: Option<String>,

    /// verify every database in the bucket
    #[argh(switch)]
    pub all: bool,

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

    /// also restore the newest txid into a temporary directory and run PRAGMA integrity_check
    #[argh(switch)]
    pub restore: bool,

    /// file holding the encryption key (32 raw bytes or 64 hex digits, mode 0600); default: $WALSYNC_ENCRYPTION_KEY (hex); see README "Encryption"
    #[argh(option)]
    pub encryption_key_file: Option<String>,

    /// file holding an older key that only decrypts (key rotation); repeatable
    #[argh(option)]
    pub decryption_key_file: Vec<String>,

    /// parallel downloads (default 8)
    #[argh(option, default = "crate::defaults::RESTORE_PARALLEL")]
    pub parallel: usize,
}

/// Run `walsync verify`: one line per database, one line per problem;
/// an error (non-zero exit) when anything failed.
pub fn run_verify(a: VerifyArgs) -> Result<()> {
    if a.parallel == 0 {
        return Err(Error::Config("--parallel must be at least 1".into()));
    }
    let opts = s3_options(a.endpoint, a.region, a.path_style);
    let (_, storage) = open_store(
        &a.bucket,
        &opts,
        a.encryption_key_file.as_deref(),
        &a.decryption_key_file,
        false,
    )?;
    let names = match (&a.name, a.all) {
        (Some(_), true) => {
            return Err(Error::Config(
                "give a database name or --all, not both".into(),
            ))
        }
        (None, false) => {
            return Err(Error::Config(
                "give a database name, or --all for every database in the bucket".into(),
            ))
        }
        (Some(n), false) => vec![n.clone()],
        (None, true) => {
            let dbs = ops::list_databases(&*storage, 8)?;
            if dbs.is_empty() {
                return Err(Error::Restore(format!(
                    "no database in {}",
                    storage.describe()
                )));
            }
            dbs.into_iter().map(|d| d.name).collect()
        }
    };
    let vopts = ops::VerifyOptions {
        restore: a.restore,
        parallel: a.parallel,
    };
    let mut failed = 0usize;
    let mut problems = 0usize;
    for name in &names {
        let report = ops::verify_db(&*storage, name, &vopts);
        for p in &report.problems {
            println!("problem: {p}");
        }
        println!("{}", report.line());
        if !report.ok() {
            failed += 1;
            problems += report.problems.len();
        }
    }
    if failed > 0 {
        return Err(Error::Restore(format!(
            "verify failed: {problems} problem(s) in {failed} of {} database(s)",
            names.len()
        )));
    }
    Ok(())
}
