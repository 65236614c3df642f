//! Every user-visible default, in one table.
//!
//! Why a module of its own: the same default used to be written as a
//! literal in the flags' parsing, in the per-database settings, in the
//! compactor and in help texts, and nothing kept the copies equal. Here each
//! one is a named constant that the command line (`crate::cli`), the
//! `--config` file (whose unset keys fall back to the same values through
//! the flags) and the daemon's own settings (`capture::DbConfig::new`,
//! `compact::Policy::default`, the lease, restore and S3 settings) all read.
//! A help text still states its default in words ("(default 4)"); a test in
//! `crate::cli` compares every such text with the constant here.
//!
//! This module imports nothing of the crate, so any stage can read it
//! without tying itself to another stage. Internal tuning constants that no
//! flag or config key sets (buffer sizes, retry backoffs, poll periods) stay
//! next to the code they tune.

use std::time::Duration;

/// `--uploaders`: upload threads shared by all databases. Uploads are
/// latency-bound (one PUT per commit group), so a few threads keep dozens of
/// busy databases flowing while an idle server runs only four threads.
/// Without the flag the pool grows with the databases replicated
/// ([`uploaders_for`]): 10,000 databases at 100 commits/s in all, on this
/// project's test machine and local S3 server, left 80 of 200 sampled
/// databases' last commit unshipped at the shutdown timeout with 4 threads
/// and none with 16.
pub const UPLOADERS: usize = 4;
/// Databases per uploader thread when `--uploaders` is not given...
pub const DBS_PER_UPLOADER: usize = 500;
/// ... and the most threads that default reaches (idle connections beyond
/// the transport's pool are closed after use).
pub const MAX_AUTO_UPLOADERS: usize = 24;

/// Uploader threads for `dbs` databases without `--uploaders`; under a
/// `--max-requests-per-sec` cap (`max_rps`, 0 = none) no more than the cap
/// (beyond it threads would only queue for tokens, each holding a lease
/// checked before its wait).
pub fn uploaders_for(dbs: usize, max_rps: u32) -> usize {
    let n = (dbs / DBS_PER_UPLOADER).clamp(UPLOADERS, MAX_AUTO_UPLOADERS);
    match usize::try_from(max_rps) {
        Ok(0) | Err(_) => n,
        Ok(cap) => n.min(cap.max(UPLOADERS)),
    }
}

/// `--snapshot-interval`: a full snapshot of every database once a day, so a
/// restore of the newest state never replays more than a day of changes even
/// with compaction off, at the cost of one database-sized upload a day.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// `--checkpoint-pages`: a PASSIVE checkpoint after shipping once the WAL
/// holds this many frames, SQLite's own auto-checkpoint threshold, so the
/// WAL stays as small as the application expects.
pub const CHECKPOINT_PAGES: u64 = 1000;

/// `--truncate-pages`: a TRUNCATE checkpoint (a brief writer stall) once the
/// WAL file is this many pages long (64 MiB at 4 KiB pages): rare enough
/// not to stall writers, small enough to bound the WAL on disk.
pub const TRUNCATE_PAGES: u64 = 16 * 1024;

/// `--max-wal-mib`: while uploads are stuck, the WAL is held back until it
/// is this many MiB, then released (its next txid is a snapshot). 1 GiB
/// rides out a long S3 outage for most databases without filling a disk.
pub const MAX_WAL_MIB: u64 = 1024;

/// `--min-put-interval`: at most one upload of a database per second. A
/// commit after a quiet second still ships at once (no added latency for
/// isolated commits); under sustained load the commits of each second go
/// into one object, so a busy database costs about 3,600 PUTs an hour, as
/// with Litestream's one-second sync, instead of one PUT per commit (36,000
/// an hour at 10 commits/s). `0` ships every commit at once.
pub const MIN_PUT_INTERVAL: Duration = Duration::from_secs(1);

/// `--close-idle-after`: a database without a file event for this long
/// closes its files (one descriptor, its lock file, stays open) and reopens
/// them on the next write, checking under SQLite's write lock that nothing
/// committed meanwhile was lost (else its next txid is a snapshot). Long
/// enough that a database written every few seconds stays open (reopening
/// costs about a millisecond of CPU); short enough that thousands of
/// mostly idle databases fit the usual open-file limit and little memory.
pub const CLOSE_IDLE_AFTER: Duration = Duration::from_secs(10);

/// `--memory-mib`: memory for queued uploads, shared by all databases.
/// Beyond it the WAL itself is the buffer, so this bounds RSS, not safety.
pub const MEMORY_MIB: u64 = 64;

/// `--shutdown-timeout`: on SIGTERM/SIGINT, how long to wait for committed
/// data to ship; below the stop timeout of the shipped systemd unit (60 s)
/// and systemd's default (90 s), so walsync exits on its own before it is
/// killed.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// `--heartbeat-interval`: at most one heartbeat push this often; monitoring
/// services check every few minutes, more pushes would only cost requests.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// `--heartbeat-max-lag`: the heartbeat is withheld while any database lags
/// more than this; a healthy daemon ships within seconds, so a minute of lag
/// means something is wrong.
pub const HEARTBEAT_MAX_LAG: Duration = Duration::from_secs(60);

/// `--retention` (`sync` and `compact`): every state of the last 24 h stays
/// restorable, exactly: a day to notice a mistake, with a bucket that does
/// not grow without bound.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);

/// `--retention-grace`: an object is deleted only after it has been
/// deletable this long, so a restore that planned with it finishes first.
pub const RETENTION_GRACE: Duration = Duration::from_secs(5 * 60);

/// `--compaction`: intervals of compaction levels 1, 2 and 3. Each level
/// runs about ten times less often than the one below, so a restore of the
/// newest state reads a handful of objects instead of one per commit.
pub const COMPACTION_INTERVALS: [Duration; 3] = [
    Duration::from_secs(30),
    Duration::from_secs(5 * 60),
    Duration::from_secs(60 * 60),
];

/// `--max-requests-per-sec`: no cap (0); a cap is for buckets billed or
/// throttled per request.
pub const MAX_REQUESTS_PER_SEC: u32 = 0;

/// `--lease-ttl` (and the lease `walsync snapshot` takes): another walsync
/// may take a database over only after its writer lease expired. A minute
/// covers a slow renewal through S3 retries while a failover waits at most
/// that long.
pub const LEASE_TTL: Duration = Duration::from_secs(60);

/// `walsync snapshot --timeout`: how long to wait for the snapshot's upload
/// to be acknowledged; a large database over a slow link needs minutes.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// `--parallel` (`restore`, `verify`): download threads. Restores are bound
/// by request latency, and eight GETs in flight saturate most links without
/// holding much memory.
pub const RESTORE_PARALLEL: usize = 8;

/// S3 region when neither `--region` nor `$AWS_REGION` /
/// `$AWS_DEFAULT_REGION` names one: the region AWS itself assumes.
pub const S3_REGION: &str = "us-east-1";

/// Log filter when `$RUST_LOG` is unset: walsync's own messages at info,
/// one line per event worth knowing about, nothing from libraries.
pub const LOG_FILTER: &str = "walsync=info";
