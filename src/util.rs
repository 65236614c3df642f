//! Small helpers every stage shares: hex text, retry backoff, random ids and
//! the wall clock in milliseconds.
//!
//! Why a module of its own: these were written once per stage that needed
//! them (three `hex`, two random-id helpers), and importing one stage's copy
//! from another tied unrelated stages into one import loop. This is a leaf:
//! it imports nothing of the crate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Capped exponential backoff with jitter for attempt `n` (0-based).
pub fn backoff(n: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1u32 << n.min(16));
    let d = base.min(cap);
    // Jitter in [d/2, d): enough to spread a herd of uploaders.
    let nanos = d.as_nanos() as u64;
    let jitter = if nanos == 0 {
        0
    } else {
        random_u64() % (nanos / 2).max(1)
    };
    Duration::from_nanos(nanos / 2 + jitter)
}

/// 64 random bits from the system's generator (ring); if it fails, the
/// time and the process id, unique enough for a probe key or holder id.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let rng = ring::rand::SystemRandom::new();
    if ring::rand::SecureRandom::fill(&rng, &mut b).is_err() {
        return now_ms() as u64 ^ (u64::from(std::process::id()) << 32);
    }
    u64::from_le_bytes(b)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    system_time_ms(SystemTime::now())
}

/// Milliseconds since the Unix epoch of `t` (negative before it).
pub fn system_time_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Since when a condition has held, shared between threads: set once when
/// it starts (later marks keep the first time), cleared when it ends.
#[derive(Debug, Default)]
pub struct Since(AtomicU64);

impl Since {
    /// The condition holds (from now, unless it already did).
    pub fn mark(&self) {
        let now = u64::try_from(now_ms()).unwrap_or(1).max(1);
        let _ = self
            .0
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The condition ended.
    pub fn clear(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// Clear it, returning since when it held.
    pub fn take(&self) -> Option<SystemTime> {
        match self.0.swap(0, Ordering::Relaxed) {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// How long it has held (zero when it does not).
    pub fn elapsed(&self) -> Duration {
        match self.0.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            ms => (UNIX_EPOCH + Duration::from_millis(ms))
                .elapsed()
                .unwrap_or(Duration::ZERO),
        }
    }

    /// True while the condition holds.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed) != 0
    }
}

/// The newest error of something, with when it happened, shared between
/// threads: the thread that meets the error notes it (the text it logs
/// anyway), `walsync status` reads it. Kept after recovery: it is the
/// *last* error, its time says whether it is current.
#[derive(Debug, Default)]
pub struct LastError(std::sync::Mutex<Option<(String, i64)>>);

impl LastError {
    /// `message` happened now.
    pub fn note(&self, message: String) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some((message, now_ms()));
    }

    /// The newest error and its time (ms since the epoch), if any.
    pub fn get(&self) -> Option<(String, i64)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Hand the allocator's free pages back to the kernel (glibc `malloc_trim`).
///
/// Why: every database's thread allocates from one of glibc's per-thread
/// arenas (at most 8 per core), and start-up makes a thousand threads do the
/// same burst at once (resume-point listings, the first snapshot, its
/// upload). What they free stays resident inside the arenas: glibc gives back
/// only the free space at the top of an arena, not free pages between live
/// chunks. `malloc_trim` releases those pages too (MADV_DONTNEED), without
/// moving anything. Elsewhere than glibc this does nothing.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's malloc_trim takes each arena's lock and only
        // releases pages no allocation uses; callable from any thread.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Run `f` in a stack frame of its own, never inlined into the caller.
///
/// Why: a long-lived thread that first does deep work (opening a database)
/// and then sleeps in a loop it calls would otherwise keep the deep work's
/// inlined locals in the enclosing frame, which stays live (and resident)
/// above the loop while the thread sleeps, out of reach of
/// [`release_unused_stack`].
#[inline(never)]
pub fn outlined<T>(f: impl FnOnce() -> T) -> T {
    f()
}

thread_local! {
    /// Lowest stack address this thread may release (0: unknown), set by
    /// [`note_thread_stack`].
    static STACK_LOW: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Room left untouched at the low end of a noted stack: glibc keeps the
/// thread descriptor and static TLS at the top of the stack mapping, so the
/// usable stack is somewhat smaller than the size asked for.
const STACK_SLACK: usize = 64 * 1024;
/// Room left below the marker local of [`release_unused_stack`]: the rest of
/// its own frame (it is never inlined: 40 bytes in the release build), the
/// red zone (128 bytes) and the `madvise` call (rustix's raw system call,
/// inlined or a few small frames).
const STACK_MARGIN: usize = 1024;

/// Called first on a thread spawned with `size` bytes of stack: lets
/// [`release_unused_stack`] find the part of it below the current frame.
///
/// # Safety
///
/// `size` must be at most the stack size this thread was spawned with
/// (`std::thread::Builder::stack_size`), and this must be called near the
/// top of the thread's stack (first thing in its closure): a larger size
/// would make [`release_unused_stack`] discard memory below this thread's
/// stack mapping, which may belong to another thread.
pub unsafe fn note_thread_stack(size: usize) {
    let here = std::hint::black_box(&size) as *const usize as usize;
    let low = here.saturating_sub(size).saturating_add(STACK_SLACK);
    STACK_LOW.with(|c| c.set(low));
}

/// Hand back the pages of this thread's stack below the current frame.
///
/// Why: a database's thread touches its deepest stack once (opening SQLite,
/// the resume-point listings over HTTP, the first snapshot: ~40 KiB) and
/// then sleeps in a shallow loop for hours; the touched pages stayed
/// resident, once per database. Pages below the stack pointer hold nothing
/// (a later call gets zeroed pages). Does nothing on a thread that did not
/// call [`note_thread_stack`].
///
/// Never inlined: the marker below must sit in a frame of its own, within
/// [`STACK_MARGIN`] of the stack pointer at the `madvise` call; inlined into
/// a caller, it could lie anywhere in that caller's (larger) frame, and the
/// release would discard the caller's live locals below it.
#[inline(never)]
pub fn release_unused_stack() {
    let low = STACK_LOW.with(std::cell::Cell::get);
    if low == 0 {
        return;
    }
    let marker = 0u8;
    let here = std::hint::black_box(&marker) as *const u8 as usize;
    let page = rustix::param::page_size();
    let start = low.next_multiple_of(page);
    let end = here.saturating_sub(STACK_MARGIN) / page * page;
    if end > start {
        // SAFETY: [start, end) lies within this thread's stack mapping
        // (above `size - STACK_SLACK` below the frame that noted it) and
        // at least STACK_MARGIN below `marker`, a local of this function's
        // own frame (never inlined), so below the stack pointer at the
        // call, its red zone and the call's frames: below every live frame
        // of this thread. MADV_DONTNEED on private anonymous memory only
        // makes later reads of it return zeros, and nothing reads it
        // before writing.
        let _ = unsafe {
            rustix::mm::madvise(
                start as *mut std::ffi::c_void,
                end - start,
                rustix::mm::Advice::LinuxDontNeed,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_keeps_the_first_mark_until_cleared() {
        let s = Since::default();
        assert!(!s.is_set());
        assert_eq!(s.elapsed(), Duration::ZERO);
        s.mark();
        let first = s.0.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
        s.mark();
        assert_eq!(
            s.0.load(Ordering::Relaxed),
            first,
            "a later mark keeps the first time"
        );
        assert!(s.take().is_some());
        assert!(!s.is_set());
        assert_eq!(s.take(), None);
    }

    #[test]
    fn hex_is_lower_case_two_digits_per_byte() {
        assert_eq!(hex(&[0, 0x0f, 0xab, 0xff]), "000fabff");
    }

    #[test]
    fn backoff_stays_within_half_and_whole_of_the_capped_step() {
        for n in 0..40 {
            let d = backoff(n, Duration::from_secs(4));
            let step = Duration::from_millis(100)
                .saturating_mul(1u32 << n.min(16))
                .min(Duration::from_secs(4));
            assert!(d >= step / 2 && d <= step, "attempt {n}: {d:?} vs {step:?}");
        }
    }
}
