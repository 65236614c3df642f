//! `walsync-sync`: exactly `walsync sync`, for a systemd `ExecStart=` line.

use walsync::cli::{self, SyncArgs};

fn main() {
    cli::init_logging();
    let args: SyncArgs = cli::parse_args("walsync-sync");
    cli::exit(cli::run_sync(args));
}
