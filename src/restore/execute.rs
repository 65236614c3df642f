//! Running a restore: a temp file beside the output, checks, then an atomic
//! install.
//!
//! Why a file of its own: this is what makes "never a half-written file"
//! true — the output appears only complete, verified and renamed into place.

use super::*;

/// Removes the temporary database (and the `-wal`, `-shm` and `-journal`
/// files SQLite may create next to it) unless disarmed.
struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl TempGuard {
    fn sidecars(path: &Path) -> [PathBuf; 3] {
        ["-wal", "-shm", "-journal"].map(|s| {
            let mut p = path.as_os_str().to_owned();
            p.push(s);
            PathBuf::from(p)
        })
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for p in Self::sidecars(&self.path) {
            let _ = fs::remove_file(p);
        }
        let _ = fs::remove_file(&self.path);
    }
}

/// Restore `plan` into the file `out`. See the module docs for the steps and
/// guarantees; on error nothing is left at `out` (an existing file there is
/// untouched unless the error came after a forced rename, which is last).
pub fn restore(
    storage: &dyn Storage,
    plan: &Plan,
    out: &Path,
    opts: &RestoreOptions,
) -> Result<Summary> {
    let storage = &RetryReads(storage);
    let start = Instant::now();
    if plan.objects.is_empty() {
        return Err(Error::Restore(format!("{}: empty restore plan", plan.db)));
    }
    let stale = check_output(out, opts.force)?;
    let (dir, name) = split_output(out)?;
    remove_abandoned_temps(&dir, &name);
    let tmp_path = dir.join(format!(
        ".{name}.walsync-restore-{}-{:x}.tmp",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp_path)
        .map_err(|e| {
            Error::io(
                &dir,
                io::Error::new(e.kind(), format!("cannot create the restore file: {e}")),
            )
        })?;
    let mut guard = TempGuard {
        path: tmp_path.clone(),
        armed: true,
    };

    // An object deleted meanwhile (retention or `walsync compact` replaced
    // it by a compacted one) is no reason to fail: plan the same txid again
    // from a fresh listing and start over, a bounded number of times.
    let mut current = plan.clone();
    let mut replans = 0;
    let (page_size, pages) = loop {
        match download_and_apply(storage, &current, &file, &tmp_path, &dir, opts) {
            Ok(r) => break r,
            Err(e)
                if e.storage_kind() == Some(StorageErrorKind::NotFound)
                    && replans < MAX_REPLANS =>
            {
                replans += 1;
                log::warn!(
                    "{}: {e}; planning txid {} again (objects change while retention runs)",
                    plan.db,
                    plan.txid
                );
                file.set_len(0).map_err(|e| Error::io(&tmp_path, e))?;
                current = list(storage, &plan.db)?.plan(storage, Target::Txid(plan.txid))?;
            }
            Err(e) => return Err(e),
        }
    };
    let plan = &current;
    file.sync_all().map_err(|e| Error::io(&tmp_path, e))?;
    drop(file);
    let check_start = Instant::now();
    sqlite_check(&tmp_path, plan, opts.check)?;
    let check = (opts.check, check_start.elapsed());
    // SQLite removes its -wal/-shm when the last connection closes; make sure.
    for p in TempGuard::sidecars(&tmp_path) {
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&p, e)),
        }
    }
    File::open(&tmp_path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(&tmp_path, e))?;

    for p in stale {
        fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
    }
    install(&tmp_path, out, opts.force)?;
    guard.armed = false;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(&dir, e))?;

    Ok(Summary {
        db: plan.db.clone(),
        txid: plan.txid,
        objects: plan.objects.len(),
        bytes: plan.total_bytes(),
        page_size,
        pages,
        elapsed: start.elapsed(),
        check,
        output: out.to_path_buf(),
    })
}

/// A restore killed with SIGKILL cannot remove its temp file
/// (`.NAME.walsync-restore-PID-….tmp`, never OUT itself). Remove those whose
/// process is gone, with their SQLite sidecars, before the next restore to
/// the same output. Best effort: a failure only leaves the file behind.
pub(super) fn remove_abandoned_temps(dir: &Path, name: &str) {
    let prefix = format!(".{name}.walsync-restore-");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue; // a restore that is still running
        }
        let path = entry.path();
        log::info!("removing {} left by an interrupted restore", path.display());
        let _ = fs::remove_file(&path);
    }
}

/// Refuse an existing output (unless `force`) and stale SQLite sidecars;
/// returns the sidecars to remove before the rename when forced.
fn check_output(out: &Path, force: bool) -> Result<Vec<PathBuf>> {
    match fs::symlink_metadata(out) {
        Ok(md) if md.is_dir() => {
            return Err(Error::Restore(format!(
                "{}: is a directory, not a database file",
                out.display()
            )))
        }
        Ok(_) if !force => {
            return Err(Error::Restore(format!(
                "{}: already exists (use --force to replace it)",
                out.display()
            )))
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(out, e)),
    }
    let mut stale = Vec::new();
    for p in TempGuard::sidecars(out) {
        match fs::symlink_metadata(&p) {
            Ok(_) if !force => {
                return Err(Error::Restore(format!(
                    "{}: exists; SQLite would replay it over the restored database \
                     (remove it or use --force)",
                    p.display()
                )))
            }
            Ok(_) => stale.push(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&p, e)),
        }
    }
    Ok(stale)
}

fn split_output(out: &Path) -> Result<(PathBuf, String)> {
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Config(format!("{}: not a file name", out.display())))?
        .to_string();
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name))
}

/// Move the finished temp file to `out`: a plain rename when forced, else a
/// hard link (fails atomically if `out` appeared meanwhile) and unlink.
fn install(tmp: &Path, out: &Path, force: bool) -> Result<()> {
    if force {
        return fs::rename(tmp, out).map_err(|e| Error::io(out, e));
    }
    match fs::hard_link(tmp, out) {
        Ok(()) => fs::remove_file(tmp).map_err(|e| Error::io(tmp, e)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Error::Restore(format!(
            "{}: already exists (created during the restore; use --force to replace it)",
            out.display()
        ))),
        // File systems without hard links: check, then rename.
        Err(_) if !out.exists() => fs::rename(tmp, out).map_err(|e| Error::io(out, e)),
        Err(e) => Err(Error::io(out, e)),
    }
}
