//! `walsync-sync`: exactly `walsync sync`, for a systemd `ExecStart=` line.

use argh::FromArgs;
use walsync::cli::{self, SyncArgs};

fn main() {
    cli::init_logging();
    let argv: Vec<String> = std::env::args().collect();
    let name = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_else(|| "walsync-sync".to_string());
    let rest: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();
    match SyncArgs::from_args(&[name.as_str()], &rest) {
        Ok(args) => cli::exit(cli::run_sync(args)),
        Err(early) => {
            // --help prints to stdout and exits 0; a usage error prints to
            // stderr and exits 1, as argh::from_env does for `walsync`.
            if early.status.is_ok() {
                println!("{}", early.output);
                std::process::exit(0);
            }
            eprintln!("{}", early.output);
            std::process::exit(1);
        }
    }
}
