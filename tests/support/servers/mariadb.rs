//! A private MariaDB server for fault tests: its own data directory and port, stopped and
//! started again with its data kept.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::{ServerError, Supervised, binary, port_or_error, temp_dir};
use crate::support::TempDir;

/// A private MariaDB with a database `ferry`. `root` has no password and may connect from
/// loopback only; `user(...)` adds a user with a password for the code under test.
pub struct PrivateMariadb {
    port: u16,
    process: Supervised,
    dir: TempDir,
}

impl PrivateMariadb {
    pub async fn launch() -> Result<Self, ServerError> {
        let dir = temp_dir("mariadb")?;
        let log = dir.path().join("mariadb.log");
        let port = port_or_error("mariadb", &log)?;
        let error = |message: String| ServerError::new("mariadb", &log, message);
        // mariadbd switches to the `mysql` user itself when started as root (`--user`), and that
        // user must own the data directory.
        let as_root = is_root().await;
        if as_root {
            let chown = Command::new("chown")
                .arg("mysql:")
                .arg(dir.path())
                .status()
                .await;
            if !chown.is_ok_and(|status| status.success()) {
                return Err(error(format!(
                    "cannot give {} to the mysql user",
                    dir.path().display()
                )));
            }
        }
        let data = dir.path().join("data");
        let mut install = Command::new(binary(
            &["/usr/bin/mariadb-install-db", "/usr/bin/mysql_install_db"],
            "mariadb-install-db",
        ));
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
        if as_root {
            install.arg("--user=mysql");
        }
        let output = install
            .output()
            .await
            .map_err(|e| error(format!("cannot run mariadb-install-db: {e}")))?;
        if !output.status.success() {
            return Err(error(format!(
                "mariadb-install-db failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let mut server = Self {
            port,
            process: Supervised::new("mariadb", log),
            dir,
        };
        server.start().await?;
        server.execute("CREATE DATABASE ferry").await?;
        Ok(server)
    }

    /// The database `ferry` as `root`, who has no password.
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/ferry", self.port)
    }

    /// Adds `name` with `password`, allowed everything on the database `ferry`; the URL for it.
    pub async fn user(&self, name: &str, password: &str) -> Result<String, ServerError> {
        for host in ["127.0.0.1", "localhost"] {
            self.execute(&format!(
                "CREATE USER '{name}'@'{host}' IDENTIFIED BY '{password}'; \
                 GRANT ALL ON ferry.* TO '{name}'@'{host}'"
            ))
            .await?;
        }
        Ok(format!(
            "mysql://{name}:{password}@127.0.0.1:{}/ferry",
            self.port
        ))
    }

    pub async fn start(&mut self) -> Result<(), ServerError> {
        let data = self.dir.path().join("data");
        let mut command = std::process::Command::new(binary(&["/usr/sbin/mariadbd"], "mariadbd"));
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--port={}", self.port))
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("mariadb.pid").display()
            ))
            .args(["--bind-address=127.0.0.1", "--innodb-buffer-pool-size=32M"])
            // Durable commits, as a production server has them: a restart must keep every
            // committed outbox row.
            .arg("--innodb-flush-log-at-trx-commit=1");
        if is_root().await {
            command.arg("--user=mysql");
        }
        self.process.start(command, self.port).await
    }

    /// SIGTERM: MariaDB finishes its transactions' durability work and shuts down cleanly.
    pub async fn stop(&mut self) -> Result<(), ServerError> {
        self.process.terminate().await
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("mariadb.sock")
    }

    /// Runs SQL as root through the `mariadb` client.
    async fn execute(&self, sql: &str) -> Result<(), ServerError> {
        let output = Command::new(binary(&["/usr/bin/mariadb", "/usr/bin/mysql"], "mariadb"))
            .args(["--no-defaults", "-uroot", "-h127.0.0.1"])
            .arg(format!("-P{}", self.port))
            .args(["-e", sql])
            .output()
            .await
            .map_err(|e| self.error(format!("cannot run the mariadb client: {e}")))?;
        if output.status.success() {
            return Ok(());
        }
        Err(self.error(format!(
            "{sql}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }

    fn error(&self, message: String) -> ServerError {
        ServerError::new("mariadb", &self.log(), message)
    }

    fn log(&self) -> PathBuf {
        Path::new(self.dir.path()).join("mariadb.log")
    }
}

async fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .await
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}
