//! `walsync`: replicate, restore, snapshot, list and verify SQLite databases.

fn main() {
    walsync::cli::init_logging();
    let args: walsync::cli::Walsync = walsync::cli::parse_args("walsync");
    walsync::cli::exit(walsync::cli::run(args));
}
