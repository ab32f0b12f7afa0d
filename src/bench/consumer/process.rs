//! The consumer under test as a child process (`ferry consumer --config FILE`, this same
//! binary), so its memory is its own: spawn it, follow `/status`, read `/metrics` and its peak
//! RSS, stop it with SIGTERM as Kubernetes would.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::process::{Child, Command};

use super::super::{BenchError, child::POLL};
use crate::config::ConsumerConfig;

/// How long the consumer may deliver nothing while messages are still expected.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one read of the consumer's endpoints may take on a loaded machine.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The unit of the CPU times in `/proc/<pid>/stat`: Linux reports them in `USER_HZ` ticks,
/// which is 100 on every architecture Ferry builds for.
const USER_HZ: u64 = 100;
/// How long a SIGTERM may take: deliveries in progress settle, then the process exits.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `ferry consumer` child.
pub struct ConsumerProcess {
    child: Child,
    pid: u32,
    address: SocketAddr,
    http: reqwest::Client,
    config_path: PathBuf,
    log_path: PathBuf,
}

/// What `wait_delivered` saw.
pub struct Progress {
    /// When `/status` first said `ready`.
    pub ready_at: Option<Instant>,
    /// When `deliveredTotal` first reached the target.
    pub done_at: Instant,
    /// The last `/status` read.
    pub status: serde_json::Value,
}

impl ConsumerProcess {
    /// Writes `config` to a temporary file and starts the consumer on it; connection URLs go
    /// into the child's environment only (`env`). Its log goes to a file kept on failure.
    pub fn spawn(
        config: &ConsumerConfig,
        env: &[(&str, &str)],
        name: &str,
    ) -> Result<Self, BenchError> {
        let dir = std::env::temp_dir();
        let config_path = dir.join(format!("{name}-consumer.yaml"));
        let log_path = dir.join(format!("{name}-consumer.log"));
        let yaml = crate::config::to_yaml(config)
            .map_err(|error| BenchError::Consumer(format!("cannot write its config: {error}")))?;
        std::fs::write(&config_path, yaml)
            .map_err(BenchError::io(format!("writing {}", config_path.display())))?;
        let log = std::fs::File::create(&log_path)
            .map_err(BenchError::io(format!("creating {}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(BenchError::io("sharing the consumer log file"))?;
        let exe = std::env::current_exe().map_err(BenchError::io("finding the ferry binary"))?;
        let mut command = Command::new(exe);
        command
            .arg("consumer")
            .arg("--config")
            .arg(&config_path)
            .env("FERRY_LOG_LEVEL", "warn")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            // A benchmark that fails half-way must not leave a consumer behind.
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command
            .spawn()
            .map_err(BenchError::io("starting `ferry consumer`"))?;
        let pid = child
            .id()
            .ok_or_else(|| BenchError::Consumer("exited before it could be watched".into()))?;
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|error| BenchError::Consumer(format!("HTTP client: {error}")))?;
        Ok(Self {
            child,
            pid,
            address: config.http.listen,
            http,
            config_path,
            log_path,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `/status`, or `None` while the endpoint does not answer yet.
    pub async fn status(&mut self) -> Result<Option<serde_json::Value>, BenchError> {
        self.check_alive()?;
        match self.get("/status").await {
            Ok(body) => serde_json::from_str(&body)
                .map(Some)
                .map_err(|error| BenchError::Consumer(format!("/status is not JSON: {error}"))),
            Err(_) => Ok(None),
        }
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&mut self) -> Result<String, BenchError> {
        self.check_alive()?;
        self.get("/metrics")
            .await
            .map_err(|error| BenchError::Consumer(format!("reading /metrics: {error}")))
    }

    /// Polls `/status` every `POLL` until `deliveredTotal` reaches `target`; fails when it
    /// stops moving for `STALL_TIMEOUT`.
    pub async fn wait_delivered(&mut self, target: u64) -> Result<Progress, BenchError> {
        let mut ready_at = None;
        let mut last = (0, Instant::now());
        loop {
            if let Some(status) = self.status().await? {
                let now = Instant::now();
                if ready_at.is_none() && status["ready"] == serde_json::Value::Bool(true) {
                    ready_at = Some(now);
                }
                let delivered = status["deliveredTotal"].as_u64().unwrap_or(0);
                if delivered >= target {
                    return Ok(Progress {
                        ready_at,
                        done_at: now,
                        status,
                    });
                }
                if delivered > last.0 {
                    last = (delivered, now);
                }
            }
            if last.1.elapsed() > STALL_TIMEOUT {
                return Err(self.failure(format!(
                    "delivered {} of {target} and nothing more for {}s",
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
        vm_hwm_kib(&text).ok_or_else(|| BenchError::Consumer(format!("no VmHWM line in {path}")))
    }

    /// CPU time the consumer has used so far (user + system, all threads).
    pub fn cpu_time(&self) -> Result<Duration, BenchError> {
        let path = format!("/proc/{}/stat", self.pid);
        let text =
            std::fs::read_to_string(&path).map_err(BenchError::io(format!("reading {path}")))?;
        cpu_ticks(&text)
            .map(|ticks| Duration::from_millis(ticks * 1000 / USER_HZ))
            .ok_or_else(|| BenchError::Consumer(format!("cannot read utime and stime in {path}")))
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
            Ok(exited) => exited.map_err(BenchError::io("waiting for the consumer"))?,
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

    async fn get(&self, path: &str) -> Result<String, reqwest::Error> {
        self.http
            .get(format!("http://{}{path}", self.address))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    }

    fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.failure(format!("exited early with {status}"))),
            Err(error) => Err(BenchError::io("watching the consumer")(error)),
        }
    }

    fn failure(&self, message: String) -> BenchError {
        BenchError::Consumer(format!(
            "{message} (its log: {}; config: {})",
            self.log_path.display(),
            self.config_path.display()
        ))
    }
}

/// `utime + stime` from `/proc/<pid>/stat`, in ticks. Fields are counted after the command
/// name's closing parenthesis, since the name itself may hold spaces.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    // After the name come field 3 (state) onwards; utime and stime are fields 14 and 15.
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// The `VmHWM:   12345 kB` line of `/proc/<pid>/status`, in KiB.
fn vm_hwm_kib(status: &str) -> Option<u64> {
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
    fn cpu_ticks_add_user_and_system_time_even_with_spaces_in_the_name() {
        let stat = "4242 (ferry con) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 37 0 0 20 0 9 0";
        assert_eq!(cpu_ticks(stat), Some(187));
        assert_eq!(cpu_ticks("4242 (ferry"), None);
    }

    #[test]
    fn peak_rss_is_read_from_the_vm_hwm_line() {
        let status = "Name:\tferry\nVmHWM:\t   23456 kB\nVmRSS:\t   20000 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(23_456));
        assert_eq!(vm_hwm_kib("Name:\tferry\n"), None);
    }
}
