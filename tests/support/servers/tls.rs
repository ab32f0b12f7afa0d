//! Certificates for private servers' TLS listeners: a certificate authority made for the test
//! and a server certificate for 127.0.0.1 signed by it, written by `openssl` into a folder.

use std::path::{Path, PathBuf};

/// A server certificate and its key, and the authority that signed them: what a private
/// server's TLS listener presents, and what a client must trust to accept it.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ServerTls {
    /// Writes `ca.pem`, `server.pem` and `server.key` into `dir`. The certificate names
    /// 127.0.0.1 as an IP subject alternative name, which is what clients that verify the host
    /// compare with the address in their URL. Valid for a day: longer than any test.
    pub fn generate(dir: &Path) -> Self {
        let ca = authority(dir, "ca");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        );
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")
            .unwrap_or_else(|error| panic!("cannot write {}/san.ext: {error}", dir.display()));
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "san.ext",
                "-out",
                "server.pem",
            ],
        );
        Self {
            ca,
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}

/// A self-signed certificate authority, `<name>.pem` (with `<name>.key`) in `dir`. Besides the
/// one behind `ServerTls`, a test makes a second one to show that trusting the wrong authority
/// is no better than trusting none.
pub fn authority(dir: &Path, name: &str) -> PathBuf {
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    let subject = format!("/CN=Ferry test authority {name}");
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", &subject,
            "-keyout", &key, "-out", &pem,
        ],
    );
    dir.join(pem)
}

/// Runs `openssl` in `dir`; its error output is the failure message.
fn openssl(dir: &Path, args: &[&str]) {
    let output = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|error| panic!("cannot run openssl: {error}"));
    assert!(
        output.status.success(),
        "openssl {args:?} failed in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}
