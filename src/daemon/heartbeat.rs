//! Push-style heartbeat (`--heartbeat-url`): a GET to a monitoring URL
//! (healthchecks.io, Uptime Kuma push monitors) while replication is healthy.
//!
//! Why push and why only when healthy: the monitor alerts when pings *stop*,
//! which covers every failure at once — the daemon died, the host is down,
//! storage refuses uploads, a database fell behind. So a ping is sent at
//! most every interval and only while every database replicates with a lag
//! below the bound. Pinging runs on its own thread with request timeouts; a
//! failed ping is logged and never touches replication.
//!
//! Such URLs are bearer secrets (the token is in the path or query), so the
//! log names only the scheme and host ([`redact_url`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::daemon::metrics::Registry;
use crate::error::{Error, Result};

/// Heartbeat settings.
#[derive(Clone)]
pub struct Config {
    /// The URL to GET (a secret: never logged whole).
    pub url: String,
    /// At most one ping per interval.
    pub interval: Duration,
    /// Ping only while every database lags at most this much.
    pub max_lag: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("url", &redact_url(&self.url))
            .field("interval", &self.interval)
            .field("max_lag", &self.max_lag)
            .finish()
    }
}

impl Config {
    /// Check the URL (http or https, with a host).
    pub fn validate(&self) -> Result<()> {
        let uri: http::Uri = self.url.parse().map_err(|_| {
            Error::Config(format!(
                "--heartbeat-url {}: not a valid URL",
                redact_url(&self.url)
            ))
        })?;
        let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
        if !scheme_ok || uri.host().is_none() {
            return Err(Error::Config(format!(
                "--heartbeat-url {}: needs an http:// or https:// URL with a host",
                redact_url(&self.url)
            )));
        }
        if self.interval.is_zero() {
            return Err(Error::Config("--heartbeat-interval must be above 0".into()));
        }
        Ok(())
    }
}

/// `scheme://host[:port]/…` — the URL without user info, path or query,
/// which is where push-monitoring tokens live.
pub fn redact_url(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.host()) {
            (Some(scheme), Some(host)) => match uri.port_u16() {
                Some(p) => format!("{scheme}://{host}:{p}/…"),
                None => format!("{scheme}://{host}/…"),
            },
            _ => "<heartbeat URL>".into(),
        },
        Err(_) => "<heartbeat URL>".into(),
    }
}

/// Start the heartbeat thread.
pub fn spawn(cfg: Config, registry: Arc<Registry>) -> Result<()> {
    std::thread::Builder::new()
        .name("heartbeat".into())
        .stack_size(256 * 1024)
        .spawn(move || run(&cfg, &registry))
        .map_err(|e| Error::Config(format!("cannot start the heartbeat thread: {e}")))?;
    Ok(())
}

fn run(cfg: &Config, registry: &Registry) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(true)
        .build()
        .into();
    let shown = redact_url(&cfg.url);
    // Check health often (lag can only be judged while it happens), ping at
    // most once per interval.
    let poll = cfg.interval.min(Duration::from_secs(1));
    let mut last_ping: Option<Instant> = None;
    // Log transitions only: withheld (with the first reason) and resumed.
    let mut withheld = false;
    loop {
        let due = last_ping.is_none_or(|t| t.elapsed() >= cfg.interval);
        if due {
            match registry.caught_up(cfg.max_lag) {
                Ok(()) => {
                    if withheld {
                        log::info!("heartbeat resumed: every database is caught up");
                        withheld = false;
                    }
                    last_ping = Some(Instant::now());
                    match agent.get(&cfg.url).call() {
                        Ok(_) => log::debug!("heartbeat sent to {shown}"),
                        Err(e) => log::warn!(
                            "heartbeat to {shown} failed: {}",
                            scrub(&e.to_string(), &cfg.url)
                        ),
                    }
                }
                Err(reason) => {
                    if !withheld {
                        log::info!("heartbeat withheld: {reason}");
                        withheld = true;
                    } else {
                        log::trace!("heartbeat still withheld: {reason}");
                    }
                }
            }
        }
        std::thread::sleep(poll);
    }
}

/// Remove the URL and its token-bearing parts from an error message.
fn scrub(message: &str, url: &str) -> String {
    let mut out = message.replace(url, "<heartbeat URL>");
    if let Ok(uri) = url.parse::<http::Uri>() {
        if let Some(pq) = uri.path_and_query() {
            if pq.as_str().len() > 1 {
                out = out.replace(pq.as_str(), "/…");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_only_scheme_and_host() {
        assert_eq!(
            redact_url("https://user:pw@hc-ping.com/5f2c-token?x=secret"),
            "https://hc-ping.com/…"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:8080/api/push/abc"),
            "http://127.0.0.1:8080/…"
        );
        assert_eq!(redact_url("not a url"), "<heartbeat URL>");
    }

    #[test]
    fn scrub_removes_the_token() {
        let url = "http://127.0.0.1:9/push/TOKEN123?status=up";
        let msg = format!("connection refused: {url}; path /push/TOKEN123?status=up");
        let clean = scrub(&msg, url);
        assert!(!clean.contains("TOKEN123"), "{clean}");
    }

    #[test]
    fn validation_names_the_flag() {
        let cfg = Config {
            url: "ftp://x/secret".into(),
            interval: Duration::from_secs(1),
            max_lag: Duration::from_secs(1),
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("--heartbeat-url"), "{e}");
        assert!(!e.contains("secret"), "{e}");
    }
}
