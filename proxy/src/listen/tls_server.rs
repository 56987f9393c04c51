//! TLS termination on the client listener (`[server.tls]`): TLS 1.3 and 1.2, ALPN `http/1.1`.
//!
//! The certificate and key are read at start-up (a bad file refuses to start, naming it) and
//! again on SIGHUP or when either file's modification time or size changes (polled every
//! [`POLL_EVERY`] by a background thread). The current `rustls::ServerConfig` sits behind an
//! `ArcSwap`: each accepted connection takes the one current at that moment for its
//! handshake, so a reload affects new connections only and never blocks a worker. A new pair
//! that does not load (unreadable, not PEM, key not matching the certificate) is logged as an
//! error and the old one stays in use.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sluice_core::config::ServerTls;

/// How often the certificate files are checked for changes.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// Why a certificate or key could not be loaded. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The certificate file holds no PEM certificate, or a broken one.
    #[error("{path}: no valid PEM certificate (`-----BEGIN CERTIFICATE-----`) found{detail}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said, if anything.
        detail: String,
    },
    /// The key file holds no PEM private key (PKCS#8, PKCS#1 RSA or SEC1).
    #[error("{path}: no PEM private key (PKCS#8, RSA or EC) found: {detail}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        detail: String,
    },
    /// rustls refused the pair (key not matching the certificate, unsupported key type).
    #[error("{cert} with key {key}: {message}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Cause.
        message: String,
    },
}

/// Loads `files` into a server config: TLS 1.3 and 1.2, ALPN `http/1.1`, no client auth.
pub fn load(files: &ServerTls) -> Result<rustls::ServerConfig, TlsFileError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsFileError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(&files.cert_file)?;
    let key_pem = read(&files.key_file)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsFileError::Cert {
            path: files.cert_file.clone(),
            detail: format!(": {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsFileError::Cert {
            path: files.cert_file.clone(),
            detail: String::new(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsFileError::Key {
        path: files.key_file.clone(),
        detail: e.to_string(),
    })?;
    let pair_err = |e: rustls::Error| TlsFileError::Pair {
        cert: files.cert_file.clone(),
        key: files.key_file.clone(),
        message: e.to_string(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(pair_err)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(pair_err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// What a file looked like when last loaded: (modified, length) of the cert and the key.
type Stamp = [Option<(SystemTime, u64)>; 2];

fn stamp(files: &ServerTls) -> Stamp {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    [one(&files.cert_file), one(&files.key_file)]
}

/// The listener's TLS settings, shared by every worker and swapped on reload.
pub struct TlsTerminator {
    files: ServerTls,
    current: ArcSwap<rustls::ServerConfig>,
    /// The files as last seen by a reload, so the poller acts on changes only.
    seen: Mutex<Stamp>,
}

impl TlsTerminator {
    /// Loads the certificate and key; fails when they do not load.
    pub fn new(files: &ServerTls) -> Result<Self, TlsFileError> {
        let seen = stamp(files);
        let config = load(files)?;
        Ok(TlsTerminator {
            files: files.clone(),
            current: ArcSwap::from_pointee(config),
            seen: Mutex::new(seen),
        })
    }

    /// The config for the next handshake.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current.load_full()
    }

    /// Reads the files again and swaps the config in; on error the old one stays and the
    /// error is logged and returned.
    pub fn reload(&self, why: &str) -> Result<(), TlsFileError> {
        let seen = stamp(&self.files);
        if let Ok(mut s) = self.seen.lock() {
            *s = seen;
        }
        match load(&self.files) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                tracing::info!(
                    cert = %self.files.cert_file.display(),
                    trigger = why,
                    "TLS certificate reloaded"
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    trigger = why,
                    "TLS certificate reload failed; still serving the previous certificate"
                );
                Err(e)
            }
        }
    }

    /// Reloads when either file changed since the last reload.
    pub fn reload_if_changed(&self) {
        let now = stamp(&self.files);
        let changed = self.seen.lock().map(|s| *s != now).unwrap_or(false);
        if changed {
            let _ = self.reload("file change");
        }
    }

    /// Starts the thread that polls the files for changes.
    pub fn spawn_watcher(self: &Arc<Self>) -> io::Result<()> {
        let this = self.clone();
        std::thread::Builder::new()
            .name("sluice-tls-watch".into())
            .spawn(move || loop {
                std::thread::sleep(POLL_EVERY);
                this.reload_if_changed();
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> ServerTls {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let files = ServerTls {
            cert_file: dir.join(format!("{name}.crt")),
            key_file: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert_file, cert.pem()).unwrap();
        std::fs::write(&files.key_file, key.serialize_pem()).unwrap();
        files
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn loads_a_pair_and_names_bad_files() {
        let dir = tmpdir("load");
        let good = write_pair(&dir, "a");
        let cfg = load(&good).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"http/1.1".to_vec()]);

        let missing = ServerTls {
            cert_file: dir.join("nope.crt"),
            key_file: good.key_file.clone(),
        };
        let e = load(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.crt"), "{e}");

        let garbage = dir.join("garbage.crt");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let e = load(&ServerTls {
            cert_file: garbage,
            key_file: good.key_file.clone(),
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("garbage.crt") && e.contains("PEM"), "{e}");

        // The key file holding a certificate: no key.
        let e = load(&ServerTls {
            cert_file: good.cert_file.clone(),
            key_file: good.cert_file.clone(),
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("a.crt") && e.contains("private key"), "{e}");

        // A key from another pair: rustls refuses the mismatch.
        let other = write_pair(&dir, "b");
        let e = load(&ServerTls {
            cert_file: good.cert_file.clone(),
            key_file: other.key_file.clone(),
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("a.crt") && e.contains("b.key"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reload_swaps_on_success_and_keeps_the_old_config_on_error() {
        let dir = tmpdir("reload");
        let files = write_pair(&dir, "a");
        let t = TlsTerminator::new(&files).unwrap();
        let first = t.current();
        // Unchanged files: nothing happens.
        t.reload_if_changed();
        assert!(Arc::ptr_eq(&first, &t.current()));
        // A broken certificate: the old config stays.
        std::fs::write(&files.cert_file, "broken").unwrap();
        assert!(t.reload("test").is_err());
        assert!(Arc::ptr_eq(&first, &t.current()));
        // A good new pair: swapped.
        let fresh = write_pair(&dir, "c");
        std::fs::copy(&fresh.cert_file, &files.cert_file).unwrap();
        std::fs::copy(&fresh.key_file, &files.key_file).unwrap();
        t.reload("test").unwrap();
        assert!(!Arc::ptr_eq(&first, &t.current()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
