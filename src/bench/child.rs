//! The relay under test as a child process (`ferry relay --config FILE`, this same binary), so
//! its memory is its own: spawn it, read `/status`, `/metrics` and its peak RSS, stop it with
//! SIGTERM as Kubernetes would.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::{Child, Command},
};

use super::{
    BenchError,
    setup::{BROKER_ENV, DATABASE_ENV},
};
use crate::config::RelayConfig;

/// How often `/status` is read while waiting.
pub const POLL: Duration = Duration::from_millis(20);
/// How long the relay may take to become ready (connect to the database and broker).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the relay may publish nothing while rows are still expected before the run fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM may take: the in-flight batch is finished, then the process exits.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `ferry relay` child.
pub struct RelayProcess {
    child: Child,
    pid: u32,
    address: SocketAddr,
    config_path: PathBuf,
    log_path: PathBuf,
}

/// What `wait_published` saw.
pub struct Progress {
    /// When `/status` first said `ready`.
    pub ready_at: Option<Instant>,
    /// When `publishedTotal` first reached the target.
    pub done_at: Instant,
}

impl RelayProcess {
    /// Writes `config` to a temporary file and starts the relay on it; the URLs go into the
    /// child's environment only. Its log goes to a file that is kept when something fails.
    pub fn spawn(
        config: &RelayConfig,
        database_url: &str,
        broker_url: &str,
        name: &str,
    ) -> Result<Self, BenchError> {
        let dir = std::env::temp_dir();
        let config_path = dir.join(format!("{name}-relay.yaml"));
        let log_path = dir.join(format!("{name}-relay.log"));
        let yaml = crate::config::to_yaml(config)
            .map_err(|error| BenchError::Relay(format!("cannot write its config: {error}")))?;
        std::fs::write(&config_path, yaml)
            .map_err(BenchError::io(format!("writing {}", config_path.display())))?;
        let log = std::fs::File::create(&log_path)
            .map_err(BenchError::io(format!("creating {}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(BenchError::io("sharing the relay log file"))?;
        let exe = std::env::current_exe().map_err(BenchError::io("finding the ferry binary"))?;
        let child = Command::new(exe)
            .arg("relay")
            .arg("--config")
            .arg(&config_path)
            .env(DATABASE_ENV, database_url)
            .env(BROKER_ENV, broker_url)
            .env("FERRY_LOG_LEVEL", "warn")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            // A benchmark that fails half-way must not leave a relay behind.
            .kill_on_drop(true)
            .spawn()
            .map_err(BenchError::io("starting `ferry relay`"))?;
        let pid = child
            .id()
            .ok_or_else(|| BenchError::Relay("exited before it could be watched".into()))?;
        Ok(Self {
            child,
            pid,
            address: config.http.listen,
            config_path,
            log_path,
        })
    }

    /// `/status`, or `None` while the endpoint does not answer yet.
    pub async fn status(&mut self) -> Result<Option<serde_json::Value>, BenchError> {
        self.check_alive()?;
        match http_get(self.address, "/status").await {
            Ok(body) => serde_json::from_str(&body)
                .map(Some)
                .map_err(|error| BenchError::Relay(format!("/status is not JSON: {error}"))),
            Err(_) => Ok(None),
        }
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&mut self) -> Result<String, BenchError> {
        self.check_alive()?;
        http_get(self.address, "/metrics")
            .await
            .map_err(BenchError::io("reading the relay's /metrics"))
    }

    /// Waits until `/status` says ready (database and broker connected).
    pub async fn wait_ready(&mut self) -> Result<Instant, BenchError> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.status().await?
                && status["ready"] == serde_json::Value::Bool(true)
            {
                return Ok(Instant::now());
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(self.failure(format!("not ready within {}s", READY_TIMEOUT.as_secs())));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls `/status` every `POLL` until `publishedTotal` reaches `target`; fails when it
    /// stops moving for `STALL_TIMEOUT`.
    pub async fn wait_published(&mut self, target: u64) -> Result<Progress, BenchError> {
        let mut ready_at = None;
        let mut last = (0, Instant::now());
        loop {
            if let Some(status) = self.status().await? {
                let now = Instant::now();
                if ready_at.is_none() && status["ready"] == serde_json::Value::Bool(true) {
                    ready_at = Some(now);
                }
                let published = status["publishedTotal"].as_u64().unwrap_or(0);
                if published >= target {
                    return Ok(Progress {
                        ready_at,
                        done_at: now,
                    });
                }
                if published > last.0 {
                    last = (published, now);
                }
            }
            if last.1.elapsed() > STALL_TIMEOUT {
                return Err(self.failure(format!(
                    "published {} of {target} and nothing more for {}s",
                    last.0,
                    STALL_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The peak resident set (`VmHWM`) so far, in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64, BenchError> {
        let path = format!("/proc/{}/status", self.pid);
        let text =
            std::fs::read_to_string(&path).map_err(BenchError::io(format!("reading {path}")))?;
        vm_hwm_kib(&text).ok_or_else(|| BenchError::Relay(format!("no VmHWM line in {path}")))
    }

    /// SIGTERM, then waits for a clean exit; removes the config and log files when it is one.
    pub async fn stop(mut self) -> Result<(), BenchError> {
        let signalled = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .map_err(BenchError::io("running kill -TERM"))?;
        if !signalled.success() {
            return Err(self.failure(format!("kill -TERM {} failed", self.pid)));
        }
        let exited = match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(exited) => exited.map_err(BenchError::io("waiting for the relay"))?,
            Err(_) => {
                return Err(self.failure(format!(
                    "still running {}s after SIGTERM",
                    STOP_TIMEOUT.as_secs()
                )));
            }
        };
        if !exited.success() {
            return Err(self.failure(format!("exited with {exited} after SIGTERM")));
        }
        // Best effort: a leftover file in the temp folder is harmless.
        let _ = std::fs::remove_file(&self.config_path);
        let _ = std::fs::remove_file(&self.log_path);
        Ok(())
    }

    fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.failure(format!("exited early with {status}"))),
            Err(error) => Err(BenchError::io("watching the relay")(error)),
        }
    }

    fn failure(&self, message: String) -> BenchError {
        BenchError::Relay(format!(
            "{message} (its log: {}; config: {})",
            self.log_path.display(),
            self.config_path.display()
        ))
    }
}

/// A GET on the relay's own loopback endpoint with HTTP/1.0, which needs no client crate: the
/// server closes the connection after the body, so the body is everything after the headers.
async fn http_get(address: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(address).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(std::io::Error::other(format!(
            "GET {path} answered {status:?}"
        )));
    }
    Ok(body.to_owned())
}

/// The `VmHWM:   12345 kB` line of `/proc/<pid>/status`, in KiB.
pub(super) fn vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_read_from_the_vm_hwm_line() {
        let status =
            "Name:\tferry\nVmPeak:\t  900000 kB\nVmHWM:\t   23456 kB\nVmRSS:\t   20000 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(23_456));
        assert_eq!(vm_hwm_kib("Name:\tferry\n"), None);
    }
}
