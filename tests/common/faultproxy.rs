//! The fault-injecting S3 proxy (`scripts/s3proxy.py`) as a test fixture.
//!
//! Why a separate process and not an in-test proxy: the benchmarks, `make
//! soak` and these tests then inject exactly the same faults through one
//! implementation, and the proxy counts what it injected, so a test can
//! prove the fault it meant really reached walsync. It listens on
//! 127.0.0.1 only and forwards to the S3 server of the environment
//! (`AWS_ENDPOINT_URL_S3`) with the client's signature intact.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::process::{Cmd, Proc};

/// A running proxy; killed when dropped.
pub struct FaultProxy {
    _proc: Proc,
    /// The S3 port walsync talks to.
    pub port: u16,
    /// The control port (never dark).
    ctl: u16,
}

/// What the proxy counted.
#[derive(Debug, Default, Clone)]
pub struct ProxyStats {
    /// Requests forwarded upstream, per method.
    pub requests: BTreeMap<String, u64>,
    /// Faults injected, per kind (`slowdown`, `error500`, `reset_request`,
    /// `reset_response`, `truncate`, `dark_refuse`, `dark_hang`).
    pub faults: BTreeMap<String, u64>,
}

impl ProxyStats {
    pub fn fault(&self, kind: &str) -> u64 {
        self.faults.get(kind).copied().unwrap_or(0)
    }
    pub fn total_faults(&self) -> u64 {
        self.faults.values().sum()
    }
}

impl FaultProxy {
    /// Start the proxy in front of the environment's S3 server with the
    /// fault configuration `faults` (JSON, see `scripts/s3proxy.py`) and a
    /// fixed seed for its dice.
    pub fn start(faults: &str, seed: u64) -> FaultProxy {
        let seed = seed.to_string();
        let (proc, line) = start_s3proxy(&["--faults", faults, "--seed", &seed]);
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (port, ctl) = match parts.as_slice() {
            ["PORT", p, "CONTROL", c] => (p.parse().unwrap(), c.parse().unwrap()),
            _ => panic!("fault proxy did not start: {line:?}"),
        };
        FaultProxy {
            _proc: proc,
            port,
            ctl,
        }
    }

    /// The endpoint URL for walsync's `--endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn control(&self, method: &str, what: &str, body: &str) -> String {
        let url = format!("http://127.0.0.1:{}/__proxy/{what}", self.ctl);
        let resp = if method == "POST" {
            ureq::post(&url)
                .header("Content-Type", "application/json")
                .send(body)
        } else {
            ureq::get(&url).call()
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("fault proxy {method} {what} {body}: {e}"));
        resp.body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("fault proxy {what}: {e}"))
    }

    /// Replace the fault configuration (JSON; `{}` switches faults off).
    pub fn set(&self, faults: &str) {
        self.control("POST", "faults", faults);
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        let text = self.control("GET", "stats", "");
        ProxyStats {
            requests: flat_object(&text, "requests"),
            faults: flat_object(&text, "faults"),
        }
    }
}

/// `python3 scripts/s3proxy.py --upstream $AWS_ENDPOINT_URL_S3 [args]`,
/// running, with the line it prints first (`PORT <n> CONTROL <n>`). Its
/// stderr goes to a log whose tail a failing test prints; it is killed when
/// the returned process is dropped.
pub fn start_s3proxy(args: &[&str]) -> (Proc, String) {
    let upstream = std::env::var("AWS_ENDPOINT_URL_S3").expect("AWS_ENDPOINT_URL_S3 (S3 env)");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3proxy.py");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("proxy-logs");
    std::fs::create_dir_all(&dir).expect("proxy log dir");
    let name = super::unique_prefix("s3proxy").replace('/', "_");
    let mut proc = Cmd::new("python3")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg(&script)
        .args(["--upstream", &upstream])
        .args(args)
        .stdout_to(dir.join(format!("{name}.out")))
        .spawn(&dir.join(format!("{name}.log")));
    let mut line = None;
    let up = super::process::wait_for(Duration::from_secs(30), || {
        proc.assert_running();
        line = proc
            .stdout_text()
            .split_once('\n')
            .map(|(l, _)| l.to_string());
        line.is_some()
    });
    assert!(up, "s3proxy.py printed no port within 30 s");
    (proc, line.unwrap_or_default())
}

/// The `"name": {"k": n, ...}` member of a JSON text whose values are
/// plain integers (all the proxy's counters are).
fn flat_object(json: &str, name: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Some(at) = json.find(&format!("\"{name}\":")) else {
        return out;
    };
    let rest = &json[at..];
    let (Some(open), Some(close)) = (rest.find('{'), rest.find('}')) else {
        return out;
    };
    for pair in rest[open + 1..close].split(',') {
        if let Some((k, v)) = pair.split_once(':') {
            if let Ok(n) = v.trim().parse() {
                out.insert(k.trim().trim_matches('"').to_string(), n);
            }
        }
    }
    out
}
