//! The data folder: development certificates, generated secrets, and the file that tells local
//! clients where the server listens.
//!
//! ```text
//! roomcast-data/
//!   ca.pem          development CA (clients trust it)      server.pem, server.key   its server certificate
//!   ca.key          the development CA's key (0600): re-issues the 13-day server certificate
//!   admin.key       admin bearer key (0600)                token.secret             HS256 secret (0600)
//!   server.json     {"quic": "...", "admin": "...", "web": "...", "pid": N} of the running server
//! ```
//!
//! `server.json` lives as long as the server that wrote it: [`DataFolder::write_server_file`]
//! returns a [`ServerFileGuard`] that removes the file when the server stops (or fails after
//! writing it), unless another server has written its own since. A server killed with SIGKILL
//! leaves its file behind; clients that read it then find nothing answering at its address.

use super::{Secrets, ServerError};
use crate::config::Config;
use crate::tls::{DEV_CA_FILE, ServerIdentity, write_file};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// File name of the address file in the data folder.
pub const SERVER_FILE: &str = "server.json";
const ADMIN_KEY_FILE: &str = "admin.key";
const TOKEN_SECRET_FILE: &str = "token.secret";

/// The addresses a running server writes for local clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerFile {
    /// QUIC address.
    pub quic: SocketAddr,
    /// Admin API address.
    pub admin: SocketAddr,
    /// Public web listener address (WebSocket, SDK, demo page), when it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<SocketAddr>,
    /// Process id of the server (absent in files written by older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// The `server.json` of a running server: dropping the guard removes the file, unless its
/// content is no longer what this guard wrote (another server has written its own since).
#[must_use = "dropping the guard removes server.json at once"]
#[derive(Debug)]
pub struct ServerFileGuard {
    path: PathBuf,
    written: String,
}

impl Drop for ServerFileGuard {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path).is_ok_and(|text| text == self.written);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove server.json");
        }
    }
}

/// A data folder and what is in it.
#[derive(Debug, Clone)]
pub struct DataFolder {
    /// Its path.
    pub path: PathBuf,
}

/// What `serve` needs before binding: secrets, the identity, and what was generated now.
pub struct Prepared {
    /// Secrets to run with.
    pub secrets: Secrets,
    /// The server certificate.
    pub identity: ServerIdentity,
    /// Human-readable notes on what was generated (printed once by `serve`).
    pub generated: Vec<String>,
}

impl DataFolder {
    /// The folder at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DataFolder { path: path.into() }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The development CA certificate, if there is one.
    pub fn ca_pem(&self) -> Option<Vec<u8>> {
        std::fs::read(self.file(DEV_CA_FILE)).ok()
    }

    /// The token secret stored here, if any.
    pub fn token_secret(&self) -> Option<String> {
        read_trimmed(&self.file(TOKEN_SECRET_FILE))
    }

    /// The admin key stored here, if any.
    pub fn admin_key(&self) -> Option<String> {
        read_trimmed(&self.file(ADMIN_KEY_FILE))
    }

    /// The addresses of the server that last ran on this folder.
    pub fn server_file(&self) -> Option<ServerFile> {
        let text = std::fs::read_to_string(self.file(SERVER_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Records the bound addresses for local clients, atomically (a reader never sees half a
    /// file); the file is removed when the returned guard is dropped.
    pub fn write_server_file(&self, f: &ServerFile) -> Result<ServerFileGuard, ServerError> {
        let text = serde_json::to_string_pretty(f).map_err(|e| ServerError::Data(e.to_string()))?;
        let path = self.file(SERVER_FILE);
        let partial = self.file(&format!("{SERVER_FILE}.{}.tmp", std::process::id()));
        write_file(&partial, &text, false).map_err(|e| ServerError::Data(e.to_string()))?;
        std::fs::rename(&partial, &path).map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            ServerError::Data(format!("{}: {e}", path.display()))
        })?;
        Ok(ServerFileGuard {
            path,
            written: text,
        })
    }

    /// Resolves secrets and the certificate for `config`: configured values win (the caller has
    /// already merged flags and environment into `config`), else the files here, else new ones are
    /// generated and written here.
    pub fn prepare(&self, config: &Config) -> Result<Prepared, ServerError> {
        std::fs::create_dir_all(&self.path)
            .map_err(|e| ServerError::Data(format!("{}: {e}", self.path.display())))?;
        let mut generated = Vec::new();
        let admin_key = self.secret(
            &config.auth.admin_key,
            ADMIN_KEY_FILE,
            "admin key",
            &mut generated,
            true,
        )?;
        let token_secret = self.secret(
            &config.auth.token_secret,
            TOKEN_SECRET_FILE,
            "token secret",
            &mut generated,
            false,
        )?;
        let identity = if config.tls.cert.is_empty() {
            let (id, fresh) = ServerIdentity::dev_in(&self.path, &config.tls.dev_names)?;
            if fresh {
                generated.push(format!(
                    "development CA and server certificate in {} (clients trust {})",
                    self.path.display(),
                    self.file(DEV_CA_FILE).display()
                ));
            }
            id
        } else {
            ServerIdentity::load(Path::new(&config.tls.cert), Path::new(&config.tls.key))?
        };
        Ok(Prepared {
            secrets: Secrets {
                admin_key,
                token_secret,
            },
            identity,
            generated,
        })
    }

    fn secret(
        &self,
        configured: &str,
        file: &str,
        what: &str,
        generated: &mut Vec<String>,
        show: bool,
    ) -> Result<String, ServerError> {
        if !configured.is_empty() {
            return Ok(configured.to_owned());
        }
        let path = self.file(file);
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
            // A new secret would silently invalidate everything signed with the old one (every
            // client token, every app server's key): an emptied file is for a human to look at.
            Ok(_) => {
                return Err(ServerError::Data(format!(
                    "the {what} file {} is empty or holds only whitespace; put the {what} back \
                     (or set it in the configuration or the environment), or delete the file to \
                     have a new one generated (what was made with the old one stops working)",
                    path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ServerError::Data(format!(
                    "cannot read the {what} file {}: {e}",
                    path.display()
                )));
            }
        }
        let s = crate::auth::random_secret();
        write_file(&path, &s, true).map_err(|e| ServerError::Data(e.to_string()))?;
        generated.push(if show {
            format!("{what}: {s} (kept in {})", path.display())
        } else {
            format!("{what} in {}", path.display())
        });
        Ok(s)
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_generated_once_and_configured_values_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = DataFolder::new(dir.path());
        let mut config = Config::default();
        let first = data.prepare(&config).expect("prepares");
        assert_eq!(first.generated.len(), 3, "{:?}", first.generated);
        let second = data.prepare(&config).expect("prepares");
        assert!(second.generated.is_empty());
        assert_eq!(first.secrets.admin_key, second.secrets.admin_key);
        assert_eq!(
            data.admin_key().as_deref(),
            Some(first.secrets.admin_key.as_str())
        );
        config.auth.admin_key = "from-env".into();
        let third = data.prepare(&config).expect("prepares");
        assert_eq!(third.secrets.admin_key, "from-env");
        assert_eq!(third.secrets.token_secret, first.secrets.token_secret);
    }

    fn server_file(port: u16) -> ServerFile {
        ServerFile {
            quic: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], port + 1)),
            web: None,
            pid: Some(std::process::id()),
        }
    }

    #[test]
    fn the_server_file_goes_with_its_guard_but_not_another_servers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = DataFolder::new(dir.path());
        let guard = data.write_server_file(&server_file(7000)).expect("written");
        assert_eq!(data.server_file().expect("readable").quic.port(), 7000);
        drop(guard);
        assert!(data.server_file().is_none(), "removed with its guard");
        assert!(!dir.path().join(SERVER_FILE).exists());

        // A server whose file another server has replaced leaves that file alone.
        let first = data.write_server_file(&server_file(7000)).expect("written");
        let second = data.write_server_file(&server_file(7100)).expect("written");
        drop(first);
        assert_eq!(data.server_file().expect("still there").quic.port(), 7100);
        drop(second);
        assert!(data.server_file().is_none());
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("lists").collect();
        assert!(left.is_empty(), "no temporary file left: {left:?}");
    }

    #[test]
    fn an_emptied_secret_file_is_an_error_naming_it_not_a_new_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = DataFolder::new(dir.path());
        let config = Config::default();
        let first = data.prepare(&config).expect("prepares");
        for (file, what) in [
            (TOKEN_SECRET_FILE, "token secret"),
            (ADMIN_KEY_FILE, "admin key"),
        ] {
            let path = dir.path().join(file);
            let before = std::fs::read_to_string(&path).expect("written");
            for emptied in ["", " \n\t \n"] {
                std::fs::write(&path, emptied).expect("emptied");
                let err = data.prepare(&config).err().expect("refused");
                let text = err.to_string();
                assert!(
                    text.contains(&path.display().to_string()) && text.contains(what),
                    "{text}"
                );
                assert_eq!(
                    std::fs::read_to_string(&path).expect("still there"),
                    emptied,
                    "no new secret was written over it"
                );
            }
            std::fs::write(&path, &before).expect("restored");
        }
        let again = data.prepare(&config).expect("prepares again");
        assert_eq!(again.secrets.token_secret, first.secrets.token_secret);
        assert_eq!(again.secrets.admin_key, first.secrets.admin_key);
    }
}
