//! `walsync verify`: a replica's chain and checksums, optionally a test
//! restore.

use super::*;

storage_command! {
    /// Verify a replica: its chain, every object's checksums, a test restore.
    #[derive(FromArgs, Debug)]
    #[argh(
        subcommand,
        name = "verify",
        usage = "[<name> | --all] --bucket <bucket> [--restore] [options]",
        note = "Environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL), AWS_REGION (or AWS_DEFAULT_REGION),
AWS_CA_BUNDLE, WALSYNC_ENCRYPTION_KEY, RUST_LOG."
    )]
    pub struct VerifyArgs {
        /// database name in the bucket
        #[argh(positional)]
        pub name: Option<String>,

        /// verify every database in the bucket
        #[argh(switch)]
        pub all: bool,

        ..location_flags,

        /// also restore the newest txid and run PRAGMA integrity_check
        #[argh(switch)]
        pub restore: bool,

        ..key_flags,

        /// parallel downloads (default 8)
        #[argh(option, default = "crate::defaults::RESTORE_PARALLEL")]
        pub parallel: usize,
    }
}

/// Run `walsync verify`: one line per database, one line per problem;
/// an error (non-zero exit) when anything failed.
pub fn run_verify(a: VerifyArgs) -> Result<()> {
    if a.parallel == 0 {
        return Err(Error::Config("--parallel must be at least 1".into()));
    }
    let storage = a.storage().open_data()?;
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
            outln!("problem: {p}");
        }
        outln!("{}", report.line());
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
