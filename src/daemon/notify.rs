//! systemd service notifications (`Type=notify`): `READY=1`, `STOPPING=1`
//! and `WATCHDOG=1`.
//!
//! Why: with `Type=simple` systemd considers walsync started the moment the
//! process exists, even if every database then fails to open; with
//! `Type=notify` `systemctl start` returns once each database found at
//! start-up has been opened and made its first pass (or reported why not),
//! and `WatchdogSec=` restarts a daemon whose main loop stopped turning.
//! The protocol is one datagram to `$NOTIFY_SOCKET`; the `sd-notify` crate
//! sends it (no libsystemd needed). Without `$NOTIFY_SOCKET` every call is
//! a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tell systemd start-up is complete.
pub fn ready() {
    send(&[NotifyState::Ready], "READY=1");
}

/// Tell systemd shutdown has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping], "STOPPING=1");
}

/// Tell the watchdog the daemon is alive.
pub fn watchdog() {
    send(&[NotifyState::Watchdog], "WATCHDOG=1");
}

/// How often to ping the watchdog (half its timeout), when systemd asked
/// for one (`$WATCHDOG_USEC` set for this process).
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}

fn send(state: &[NotifyState], what: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    match sd_notify::notify(false, state) {
        Ok(()) => log::debug!("notified systemd: {what}"),
        Err(e) => log::warn!("cannot notify systemd ({what}): {e}"),
    }
}
