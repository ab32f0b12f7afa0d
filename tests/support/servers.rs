//! Private server instances for fault tests: each runs on its own loopback port with its data
//! in its own temporary directory, so a test can stop and restart it without touching the
//! shared servers. `stop()` shuts the server down cleanly, `start()` brings it back on the same
//! port with the same data, and dropping the value kills the server and removes its directory.
//!
//! Every start waits for the server to accept connections, with a deadline, and a failure
//! names the server and its log file (with the log's last lines).

use std::{
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    time::Duration,
};

use tokio::{
    net::TcpStream,
    process::Command,
    time::{Instant, sleep},
};

use super::{TempDir, free_port};

pub mod mariadb;
pub mod postgres;
pub mod rabbitmq;
pub mod tls;

/// Generous: RabbitMQ boots in several seconds on a loaded two-core machine.
const START_DEADLINE: Duration = Duration::from_secs(90);
const STOP_DEADLINE: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Log lines quoted in a failure.
const LOG_TAIL: usize = 20;

/// A private server failed to start or stop.
#[derive(Debug, thiserror::Error)]
#[error("{server}: {message} (log: {})\n{tail}", log.display())]
pub struct ServerError {
    pub server: &'static str,
    pub message: String,
    pub log: PathBuf,
    tail: String,
}

impl ServerError {
    fn new(server: &'static str, log: &Path, message: impl Into<String>) -> Self {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n");
        Self {
            server,
            message: message.into(),
            log: log.to_owned(),
            tail,
        }
    }
}

/// Accepts TCP connections on the port: the server is ready, or (after a stop) still up.
pub async fn accepts(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).await.is_ok()
}

/// A server run as a child of the test process. A `std` child rather than tokio's, so that
/// `Drop` can kill it and reap it synchronously: no server outlives its test, not even as a
/// zombie.
struct Supervised {
    server: &'static str,
    log: PathBuf,
    child: Option<Child>,
}

impl Supervised {
    fn new(server: &'static str, log: PathBuf) -> Self {
        Self {
            server,
            log,
            child: None,
        }
    }

    fn error(&self, message: impl Into<String>) -> ServerError {
        ServerError::new(self.server, &self.log, message)
    }

    /// Spawns the command with its output appended to the log, then waits until `port` accepts.
    async fn start(
        &mut self,
        mut command: std::process::Command,
        port: u16,
    ) -> Result<(), ServerError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log);
        let log = log.map_err(|e| self.error(format!("cannot open the log: {e}")))?;
        let err = log
            .try_clone()
            .map_err(|e| self.error(format!("cannot open the log: {e}")))?;
        command.stdin(Stdio::null()).stdout(log).stderr(err);
        let child = command
            .spawn()
            .map_err(|e| self.error(format!("cannot run {command:?}: {e}")))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if accepts(port).await {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                return Err(self.error(format!("exited while starting ({status})")));
            }
            if Instant::now() > deadline {
                return Err(self.error(format!(
                    "port {port} not accepting after {START_DEADLINE:?}"
                )));
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    /// The exit status once the child has exited (and is reaped); `None` while it runs.
    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self
            .child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten());
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Asks the server to shut down cleanly (SIGTERM) and waits for it to exit.
    async fn terminate(&mut self) -> Result<(), ServerError> {
        let pid = self
            .child
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| self.error("not running"))?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
        if !status.is_ok_and(|status| status.success()) {
            return Err(self.error(format!("cannot signal process {pid}")));
        }
        self.wait_exit().await
    }

    /// Waits for the child to exit; kills it and fails when it outlives the deadline.
    async fn wait_exit(&mut self) -> Result<(), ServerError> {
        if self.child.is_none() {
            return Err(self.error("not running"));
        }
        let deadline = Instant::now() + STOP_DEADLINE;
        while self.exited().is_none() {
            if Instant::now() > deadline {
                self.kill();
                return Err(self.error(format!(
                    "still running {STOP_DEADLINE:?} after being told to stop; killed"
                )));
            }
            sleep(POLL_INTERVAL).await;
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The first of `candidates` that exists, or the bare program name for a `PATH` lookup.
fn binary(candidates: &[&str], name: &str) -> PathBuf {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn port_or_error(server: &'static str, log: &Path) -> Result<u16, ServerError> {
    free_port().map_err(|e| ServerError::new(server, log, format!("no free port: {e}")))
}

fn temp_dir(server: &'static str) -> Result<TempDir, ServerError> {
    TempDir::new(server).map_err(|e| {
        ServerError::new(
            server,
            Path::new("-"),
            format!("cannot create a temp dir: {e}"),
        )
    })
}

/// A private Redis with append-only persistence, so a restart keeps every acknowledged write.
pub struct PrivateRedis {
    port: u16,
    process: Supervised,
    dir: TempDir,
}

impl PrivateRedis {
    pub async fn launch() -> Result<Self, ServerError> {
        let dir = temp_dir("redis")?;
        let log = dir.path().join("redis.log");
        let port = port_or_error("redis", &log)?;
        let mut redis = Self {
            port,
            process: Supervised::new("redis", log),
            dir,
        };
        redis.start().await?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn start(&mut self) -> Result<(), ServerError> {
        let mut command =
            std::process::Command::new(binary(&["/usr/bin/redis-server"], "redis-server"));
        command
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
            ])
            .arg("--dir")
            .arg(self.dir.path());
        self.process.start(command, self.port).await
    }

    /// SIGTERM: Redis flushes the append-only file and exits.
    pub async fn stop(&mut self) -> Result<(), ServerError> {
        self.process.terminate().await
    }
}

/// A private NATS server with JetStream, its store in the temp dir.
pub struct PrivateNats {
    port: u16,
    options: Vec<String>,
    process: Supervised,
    dir: TempDir,
}

impl PrivateNats {
    pub async fn launch() -> Result<Self, ServerError> {
        Self::launch_with_options(&[]).await
    }

    /// A server with extra command-line options, kept for restarts: for example TLS required
    /// of every client (`--tls --tlscert <file> --tlskey <file>`) or a user (`--user`, `--pass`).
    pub async fn launch_with_options(options: &[&str]) -> Result<Self, ServerError> {
        let dir = temp_dir("nats")?;
        let log = dir.path().join("nats.log");
        let port = port_or_error("nats", &log)?;
        let mut nats = Self {
            port,
            options: options.iter().map(|&option| option.to_owned()).collect(),
            process: Supervised::new("nats", log),
            dir,
        };
        nats.start().await?;
        Ok(nats)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn start(&mut self) -> Result<(), ServerError> {
        let mut command =
            std::process::Command::new(binary(&["/usr/sbin/nats-server"], "nats-server"));
        command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path().join("jetstream"))
            .args(&self.options);
        self.process.start(command, self.port).await
    }

    /// SIGTERM: the server closes its JetStream store and exits.
    pub async fn stop(&mut self) -> Result<(), ServerError> {
        self.process.terminate().await
    }
}
