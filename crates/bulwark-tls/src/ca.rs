//! The local certificate authority of `bulwark up --tls` (as Elasticsearch 8 makes one at
//! first start): `<dir>/ca.pem` (what clients trust) and `<dir>/ca-key.pem`, kept across
//! runs so clients go on trusting it; per-service certificates `<dir>/<name>.pem` and
//! `<dir>/<name>-key.pem`, issued afresh at every start (so they never expire under a
//! running cluster). Every certificate names `localhost`, `127.0.0.1` and `::1` besides
//! the service's own names, and may serve as a server and as a client (mutual TLS on
//! replica links). Key files are created with mode 0600.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The CA's common name.
const CA_NAME: &str = "Bulwark local CA";

/// Why the CA or a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Key or certificate generation failed, or the existing CA key is unusable.
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being made.
        what: String,
        /// The error.
        source: rcgen::Error,
    },
}

/// A certificate and key issued by the local CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
}

/// The local CA of one data directory.
#[derive(Debug)]
pub struct LocalCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    Ok(params)
}

impl LocalCa {
    /// Opens the CA in `dir`, creating it (and `dir`, mode 0700) if it does not exist.
    pub fn open_or_create(dir: &Path) -> Result<LocalCa, CaError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(dir))?;
        }
        let rc = |what: &str| {
            let what = what.to_owned();
            move |source| CaError::Rcgen { what, source }
        };
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca-key.pem");
        let params = ca_params().map_err(rc("CA parameters"))?;
        let key = if cert_path.exists() && key_path.exists() {
            let pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            KeyPair::from_pem(&pem).map_err(rc(&format!("{}", key_path.display())))?
        } else {
            let key = KeyPair::generate().map_err(rc("CA key"))?;
            let cert = params.self_signed(&key).map_err(rc("CA certificate"))?;
            write_private(&key_path, &key.serialize_pem())?;
            std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
            key
        };
        // The same name and key make the same issuer: certificates issued now chain to
        // the `ca.pem` written when the CA was created.
        Ok(LocalCa {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate clients trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues `<name>.pem` and `<name>-key.pem` for `hosts` (plus the loopback names).
    pub fn issue(&self, name: &str, hosts: &[&str]) -> Result<Issued, CaError> {
        let rc = |source| CaError::Rcgen {
            what: format!("certificate {name}"),
            source,
        };
        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        for h in hosts {
            if !names.iter().any(|n| n == h) {
                names.push((*h).to_owned());
            }
        }
        let mut params = CertificateParams::new(names).map_err(rc)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = std::time::SystemTime::now();
        params.not_before = (now - std::time::Duration::from_secs(3600)).into();
        params.not_after = (now + std::time::Duration::from_secs(365 * 86_400)).into();
        let key = KeyPair::generate().map_err(rc)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rc)?;
        let issued = Issued {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}-key.pem")),
        };
        write_private(&issued.key, &key.serialize_pem())?;
        std::fs::write(&issued.cert, cert.pem()).map_err(|source| CaError::Io {
            path: issued.cert.clone(),
            source,
        })?;
        Ok(issued)
    }
}

/// Writes `text` to `path` with mode 0600 (replacing the file).
pub fn write_private(path: &Path, text: &str) -> Result<(), CaError> {
    let err = |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}
