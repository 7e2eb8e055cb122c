//! Certificates and keys from PEM files, and the settings that name them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bulwark_config::{ConfigError, Settings};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The files of a TLS server identity, from settings `<PREFIX>_CERT_FILE`,
/// `<PREFIX>_KEY_FILE` and (mutual TLS) `<PREFIX>_CLIENT_CA_FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files `prefix` names (`TLS` → `TLS_CERT_FILE`, …), or `None` when neither the
    /// certificate nor the key is set. One without the other, or a client CA without
    /// both, is an error naming the missing setting.
    pub fn from_settings(s: &Settings, prefix: &str) -> Result<Option<TlsFiles>, ConfigError> {
        let name = |part: &str| format!("{prefix}_{part}");
        let (cert_name, key_name, ca_name) =
            (name("CERT_FILE"), name("KEY_FILE"), name("CLIENT_CA_FILE"));
        let cert = s.get(&cert_name).map(PathBuf::from);
        let key = s.get(&key_name).map(PathBuf::from);
        let client_ca = s.get(&ca_name).map(PathBuf::from);
        match (cert, key) {
            (None, None) if client_ca.is_none() => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert,
                key,
                client_ca,
            })),
            (None, _) => Err(ConfigError::Missing {
                setting: cert_name,
                reason: format!("TLS needs a certificate beside {key_name}"),
            }),
            (Some(_), None) => Err(ConfigError::Missing {
                setting: key_name,
                reason: format!("TLS needs the private key of {cert_name}"),
            }),
        }
    }
}

fn file_err(path: &Path, reason: impl Into<String>) -> ConfigError {
    ConfigError::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The certificates of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(
            path,
            "no certificate (expected -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        file_err(
            path,
            format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        )
    })
}

/// The trust anchors of a CA file.
pub(crate) fn load_roots(path: &Path) -> Result<rustls::RootCertStore, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_err(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// A client configuration trusting the CA in `ca` (PEM) and, when given, presenting the
/// certificate chain and key of `identity` (mutual TLS).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let builder = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| file_err(ca, e.to_string()))?
        .with_root_certificates(load_roots(ca)?);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| file_err(key, format!("does not match {}: {e}", cert.display())))?,
    };
    Ok(Arc::new(config))
}

/// The name a client checks the server's certificate against: an IP address or a DNS
/// name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?}: {e}"))
}
