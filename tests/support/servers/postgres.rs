//! A private PostgreSQL cluster for fault tests.

use std::{path::PathBuf, process::Stdio};

use tokio::process::Command;

use super::{
    START_DEADLINE, STOP_DEADLINE, ServerError, accepts, port_or_error, temp_dir, tls::ServerTls,
};
use crate::support::TempDir;

/// Loopback TCP clients must use TLS; the Unix socket, which the helper's own commands could
/// use, stays open without it.
const TLS_ONLY_HBA: &str = "\
local all all trust
hostssl all all 127.0.0.1/32 trust
hostnossl all all 127.0.0.1/32 reject
";

/// A private PostgreSQL cluster with trust authentication and a database `ferry`. PostgreSQL
/// refuses to run as root, so when the tests run as root its commands run as the `postgres`
/// user (`runuser`), which then owns the temp dir.
pub struct PrivatePostgres {
    port: u16,
    bin: PathBuf,
    run_as: Option<&'static str>,
    log: PathBuf,
    dir: TempDir,
}

impl PrivatePostgres {
    pub async fn launch() -> Result<Self, ServerError> {
        Self::launch_with(None).await
    }

    /// A cluster that accepts TCP clients only over TLS (`ssl = on` with `tls`'s certificate,
    /// and `hostnossl` connections rejected by `pg_hba.conf`).
    pub async fn launch_with_tls(tls: &ServerTls) -> Result<Self, ServerError> {
        Self::launch_with(Some(tls)).await
    }

    async fn launch_with(tls: Option<&ServerTls>) -> Result<Self, ServerError> {
        let dir = temp_dir("postgres")?;
        let log = dir.path().join("postgres.log");
        let error = |message: String| ServerError::new("postgres", &log, message);
        let port = port_or_error("postgres", &log)?;
        let bin =
            postgres_bin().ok_or_else(|| error("no initdb in /usr/lib/postgresql/*/bin".into()))?;
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .await
            .map_err(|e| error(format!("cannot run id -u: {e}")))?;
        let run_as = (String::from_utf8_lossy(&uid.stdout).trim() == "0").then_some("postgres");
        if let Some(user) = run_as {
            let chown = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(dir.path())
                .status()
                .await;
            if !chown.is_ok_and(|status| status.success()) {
                return Err(error(format!(
                    "cannot give {} to the {user} user",
                    dir.path().display()
                )));
            }
        }
        let mut postgres = Self {
            port,
            bin,
            run_as,
            log,
            dir,
        };
        let data = postgres.data();
        postgres
            .run(
                "initdb",
                &[
                    "-D",
                    &data,
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
            )
            .await?;
        if let Some(tls) = tls {
            postgres.require_tls(tls).await?;
        }
        postgres.start().await?;
        let port = port.to_string();
        postgres
            .run(
                "createdb",
                &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "ferry"],
            )
            .await?;
        Ok(postgres)
    }

    /// Copies the certificate and key into the data directory, where the server finds them
    /// with relative paths and may read them: it refuses a key that others can read, and when
    /// the tests run as root it runs as another user.
    async fn require_tls(&self, tls: &ServerTls) -> Result<(), ServerError> {
        use std::os::unix::fs::PermissionsExt;
        let data = PathBuf::from(self.data());
        let error = |message: String| ServerError::new("postgres", &self.log, message);
        let copy = |from: &PathBuf, to: &str| {
            std::fs::copy(from, data.join(to)).map_err(|e| {
                error(format!(
                    "cannot copy {} into the cluster: {e}",
                    from.display()
                ))
            })
        };
        copy(&tls.cert, "server.crt")?;
        copy(&tls.key, "server.key")?;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .map_err(|e| error(format!("cannot restrict server.key: {e}")))?;
        if let Some(user) = self.run_as {
            let chown = Command::new("chown")
                .arg(format!("{user}:"))
                .args([data.join("server.crt"), data.join("server.key")])
                .status()
                .await;
            if !chown.is_ok_and(|status| status.success()) {
                return Err(error(format!(
                    "cannot give the certificate to the {user} user"
                )));
            }
        }
        let settings = "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n";
        let configured = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut file| std::io::Write::write_all(&mut file, settings.as_bytes()))
            .and_then(|()| std::fs::write(data.join("pg_hba.conf"), TLS_ONLY_HBA));
        configured.map_err(|e| error(format!("cannot configure TLS: {e}")))
    }

    /// The database `ferry` as the `postgres` superuser.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/ferry", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut command = match self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        // The postgres user may not be allowed into the test's working directory.
        command.current_dir(self.dir.path());
        command
    }

    /// Runs a PostgreSQL program to completion; its output goes into the error when it fails.
    async fn run(&self, program: &str, args: &[&str]) -> Result<(), ServerError> {
        let output = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await;
        let output = output.map_err(|e| {
            ServerError::new("postgres", &self.log, format!("cannot run {program}: {e}"))
        })?;
        if output.status.success() {
            return Ok(());
        }
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Err(ServerError::new(
            "postgres",
            &self.log,
            format!("{program} failed ({}): {text}", output.status),
        ))
    }

    /// `pg_ctl start -w` returns once the server accepts connections (or fails at the
    /// deadline); the TCP check confirms the loopback listener.
    pub async fn start(&mut self) -> Result<(), ServerError> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let (data, log) = (self.data(), self.log.display().to_string());
        let timeout = START_DEADLINE.as_secs().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &options, "-w", "-t", &timeout, "start",
            ],
        )
        .await?;
        if !accepts(self.port).await {
            return Err(ServerError::new(
                "postgres",
                &self.log,
                format!("started but port {} refuses", self.port),
            ));
        }
        Ok(())
    }

    /// A fast shutdown: open sessions are ended, everything committed is checkpointed.
    pub async fn stop(&mut self) -> Result<(), ServerError> {
        let (data, timeout) = (self.data(), STOP_DEADLINE.as_secs().to_string());
        self.run(
            "pg_ctl",
            &["-D", &data, "-m", "fast", "-w", "-t", &timeout, "stop"],
        )
        .await
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // The postmaster is pg_ctl's child, not ours: stop it here, synchronously, before the
        // temp dir goes. Best effort (it may already be stopped).
        let program = self.bin.join("pg_ctl");
        let mut command = match self.run_as {
            Some(user) => {
                let mut command = std::process::Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => std::process::Command::new(program),
        };
        let data = self.data();
        let _ = command
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`.
fn postgres_bin() -> Option<PathBuf> {
    let versions = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    versions
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            Some((
                entry.file_name().to_str()?.parse::<u32>().ok()?,
                entry.path().join("bin"),
            ))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
}
