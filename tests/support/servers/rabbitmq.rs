//! A private RabbitMQ node for fault tests.

use std::path::Path;

use tokio::{
    process::Command,
    time::{Instant, sleep},
};

use super::{
    POLL_INTERVAL, START_DEADLINE, ServerError, Supervised, accepts, port_or_error, temp_dir,
    tls::ServerTls,
};
use crate::support::TempDir;

/// A private RabbitMQ node with its own name, ports, cookie (`HOME`), configuration, data and
/// logs. It runs in the foreground as a child of the test, which lets `Drop` kill it even when
/// `rabbitmqctl` cannot reach it: `RUNNING_UNDER_SYSTEMD` makes the start script `exec` the
/// Erlang VM (as it does under systemd) instead of running it in the background behind a
/// signal-forwarding shell, so the child is the node itself and not a shell whose death would
/// orphan it. It uses the scripts in `/usr/lib/rabbitmq/bin` directly: the `/usr/sbin`
/// wrappers switch to the `rabbitmq` user, whose cookie and files belong to the shared node.
pub struct PrivateRabbitMq {
    port: u16,
    /// The TLS listener's port, when there is one.
    tls_port: Option<u16>,
    dist_port: u16,
    node: String,
    process: Supervised,
    dir: TempDir,
}

const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

impl PrivateRabbitMq {
    pub async fn launch() -> Result<Self, ServerError> {
        Self::launch_with_config("").await
    }

    /// A node with extra lines in its `rabbitmq.conf` (e.g. `max_message_size = 4096`).
    pub async fn launch_with_config(extra: &str) -> Result<Self, ServerError> {
        Self::launch_with(None, extra).await
    }

    /// A node that also listens for AMQP over TLS (`amqps://`) on `tls_port()`, presenting
    /// `tls`'s certificate and asking clients for none; `extra` as in `launch_with_config`.
    pub async fn launch_with_tls(tls: &ServerTls, extra: &str) -> Result<Self, ServerError> {
        Self::launch_with(Some(tls), extra).await
    }

    async fn launch_with(tls: Option<&ServerTls>, extra: &str) -> Result<Self, ServerError> {
        let dir = temp_dir("rabbitmq")?;
        let log = dir.path().join("rabbitmq.log");
        let mut ports = Vec::new();
        // The kernel may hand out the same free port twice in a row.
        while ports.len() < 3 {
            let port = port_or_error("rabbitmq", &log)?;
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let (port, dist_port) = (ports[0], ports[1]);
        let tls_port = tls.map(|_| ports[2]);
        let listener = match (tls, tls_port) {
            (Some(tls), Some(tls_port)) => format!(
                "listeners.ssl.default = {tls_port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                tls.ca.display(),
                tls.cert.display(),
                tls.key.display()
            ),
            _ => String::new(),
        };
        let files = [
            ("home/.keep", ""),
            // Our own (empty) env file and config: the machine's set the shared node's name and
            // its listener on 5672. All logs go to the console, which is our log file.
            ("rabbitmq-env.conf", ""),
            (
                "rabbitmq.conf",
                &format!("log.console = true\nlog.file = false\n{listener}{extra}\n"),
            ),
            ("enabled_plugins", "[].\n"),
        ];
        for (name, text) in files {
            let path = dir.path().join(name);
            let written = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&path, text));
            written.map_err(|e| {
                ServerError::new(
                    "rabbitmq",
                    &log,
                    format!("cannot write {}: {e}", path.display()),
                )
            })?;
        }
        let node = format!("ferry-test-{port}@localhost");
        let mut rabbitmq = Self {
            port,
            tls_port,
            dist_port,
            node,
            process: Supervised::new("rabbitmq", log),
            dir,
        };
        rabbitmq.start().await?;
        Ok(rabbitmq)
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TLS listener's port; `None` unless launched with TLS.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn command(&self, program: &str) -> std::process::Command {
        let dir = self.dir.path();
        let mut command = std::process::Command::new(Path::new(RABBITMQ_BIN).join(program));
        command
            .current_dir(dir)
            .env("HOME", dir.join("home"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RUNNING_UNDER_SYSTEMD", "true")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            );
        command
    }

    pub async fn start(&mut self) -> Result<(), ServerError> {
        if !Path::new(RABBITMQ_BIN).join("rabbitmq-server").exists() {
            return Err(self
                .process
                .error(format!("no rabbitmq-server in {RABBITMQ_BIN}")));
        }
        let command = self.command("rabbitmq-server");
        self.process.start(command, self.port).await?;
        // The TLS listener opens just after the plain one; a client let in between would be
        // refused a connection rather than shown a certificate.
        if let Some(tls_port) = self.tls_port {
            let deadline = Instant::now() + START_DEADLINE;
            while !accepts(tls_port).await {
                if Instant::now() > deadline {
                    return Err(self.process.error(format!(
                        "TLS port {tls_port} not accepting after {START_DEADLINE:?}"
                    )));
                }
                sleep(POLL_INTERVAL).await;
            }
        }
        Ok(())
    }

    /// `rabbitmqctl stop`: the node syncs its message store and halts.
    pub async fn stop(&mut self) -> Result<(), ServerError> {
        let output = Command::from(self.command("rabbitmqctl"))
            .args(["-n", &self.node, "stop"])
            .output()
            .await;
        let output =
            output.map_err(|e| self.process.error(format!("cannot run rabbitmqctl: {e}")))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(self.process.error(format!(
                "rabbitmqctl stop failed ({}): {stderr}",
                output.status
            )));
        }
        self.process.wait_exit().await
    }
}
