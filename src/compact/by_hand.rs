//! `walsync compact NAME`: one compaction and retention pass run by hand.
//!
//! Why a file of its own: the command prints each deletion with its reason
//! (`--dry-run`) and shares the daemon's rules.

use super::*;

/// What `walsync compact` did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default)]
pub struct ByHand {
    /// Objects written per level (index 1..=3).
    pub written: [usize; 4],
    /// Objects deleted (or that would be).
    pub deleted: usize,
    /// Objects kept.
    pub kept: usize,
}

/// Compact every level of `db` as far as it goes, then apply retention
/// (`None`: keep everything), printing one line per action to `out`. With
/// `dry_run` nothing is written or deleted: the lines say what would be.
/// Unlike the daemon, nothing waits for a grace period: a restore running
/// meanwhile that meets a deleted object plans again (see `restore`).
pub fn compact_by_hand(
    storage: &dyn Storage,
    db: &str,
    retention: Option<Duration>,
    dry_run: bool,
    now_ms: i64,
    tmp_dir: &Path,
    out: &mut dyn Write,
) -> Result<ByHand> {
    let db = db.trim_matches('/');
    let mut ends = [0u64; 10];
    for (end, last) in ends
        .iter_mut()
        .zip(replica::last_in_each_level(storage, db)?)
    {
        if let Some(last) = last {
            *end = last.max_txid;
        }
    }
    if ends.iter().all(|e| *e == 0) {
        return Err(Error::Restore(format!(
            "{db}: no replica in {} (no objects under {db}/)",
            storage.describe()
        )));
    }
    let cancel = AtomicBool::new(false);
    let io = |e: std::io::Error| Error::io("stdout", e);
    let mut done = ByHand::default();
    for level in 1..=MAX_LEVEL {
        let l = usize::from(level);
        let mut pos = ends[l];
        // Bounded: each round consumes at least one object.
        for _ in 0..100_000 {
            if dry_run {
                if let Some(inputs) = next_inputs(storage, db, level, pos)? {
                    let (a, b) = (inputs[0].min_txid, inputs[inputs.len() - 1].max_txid);
                    writeln!(
                        out,
                        "would merge {} level-{} object(s), txids {a}..{b}, into {}",
                        inputs.len(),
                        level - 1,
                        ltx::object_key("", db, level, a, b)
                    )
                    .map_err(io)?;
                    done.written[l] += 1;
                    pos = b;
                    continue;
                }
                break;
            }
            let ctx = Ctx {
                tmp_dir,
                cancel: &cancel,
                recent: None,
                lineage: 0,
            };
            match compact_level(storage, db, level, pos, &ctx)? {
                Some(o) => {
                    writeln!(
                        out,
                        "wrote {} (txids {}..{}, {} bytes)",
                        o.key, o.min_txid, o.max_txid, o.size
                    )
                    .map_err(io)?;
                    done.written[l] += 1;
                    pos = o.max_txid;
                }
                None => break,
            }
        }
    }
    let Some(window) = retention else {
        writeln!(out, "retention off: nothing deleted").map_err(io)?;
        return Ok(done);
    };
    let plan = plan_retention(storage, db, window, now_ms)?;
    done.kept = plan.keep;
    done.deleted = plan.delete.len();
    let verb = if dry_run { "would delete" } else { "delete" };
    for (o, why) in &plan.delete {
        writeln!(out, "{verb} {}: {why}", o.key).map_err(io)?;
    }
    if !dry_run {
        let keys: Vec<String> = plan.delete.iter().map(|(o, _)| o.key.clone()).collect();
        delete_keys(storage, &keys)?;
    }
    let window_text = humantime::format_duration(window);
    match plan.t0 {
        Some(t0) => writeln!(
            out,
            "{db}: retention {window_text}: window starts at txid {t0}; kept {}, {} {}",
            plan.keep,
            if dry_run { "would delete" } else { "deleted" },
            plan.delete.len()
        ),
        None => writeln!(
            out,
            "{db}: retention {window_text}: every object is inside the window; kept {}",
            plan.keep
        ),
    }
    .map_err(io)?;
    Ok(done)
}
