//! `bulwark up --auth`: the cluster's API keys, made at first start (as Elasticsearch 8
//! makes its credentials) and kept in `<data-dir>/secrets/` so scripts go on working
//! across restarts:
//!
//! * `reader.key`, `writer.key`, `admin.key` (mode 0600): one key per role;
//! * `api-keys` (mode 0600): the keys file every service reads (`API_KEYS_FILE`), with
//!   the keys' SHA-256 only.
//!
//! `bulwark ctl` and `bulwark chaos` send `admin.key` from there (or `BULWARK_API_KEY`).
//!
//! `bulwark up --tls`: the local CA and the certificates of [`crate::topology::TlsLayout`].

use std::path::{Path, PathBuf};

use bulwark_http::auth::{key_hash, new_key};
use bulwark_http::client::{ClientIdentity, SECRETS_DIR};
use bulwark_tls::ca::write_private;

use crate::topology::Topology;
use crate::up::UpError;

/// The keys `--auth` makes: file stem and role.
pub const KEYS: [(&str, &str); 3] = [("reader", "read"), ("writer", "write"), ("admin", "admin")];

/// The keys file of a data directory.
pub fn keys_file(data_dir: &Path) -> PathBuf {
    data_dir.join(SECRETS_DIR).join("api-keys")
}

/// Makes the keys that do not exist yet, and writes the keys file from the ones there.
/// Returns the admin key.
pub fn ensure_keys(data_dir: &Path) -> Result<String, UpError> {
    let dir = data_dir.join(SECRETS_DIR);
    let io = |path: &Path| {
        let what = format!("cannot write {}", path.display());
        move |source| UpError::Io { what, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
    }
    let mut lines = String::from(
        "# Made by bulwark up --auth: <id> <role> sha256 of the key (the keys are beside this file).\n",
    );
    let mut admin = String::new();
    for (name, role) in KEYS {
        let path = dir.join(format!("{name}.key"));
        let key = match std::fs::read_to_string(&path) {
            Ok(k) if k.trim().starts_with(bulwark_http::auth::KEY_PREFIX) => k.trim().to_owned(),
            _ => {
                let (k, _) = new_key();
                write_private(&path, &format!("{k}\n"))
                    .map_err(|e| UpError::Config(e.to_string()))?;
                k
            }
        };
        lines.push_str(&format!("{name} {role} {}\n", key_hash(&key)));
        if name == "admin" {
            admin = key;
        }
    }
    let file = keys_file(data_dir);
    let tmp = file.with_extension("tmp");
    write_private(&tmp, &lines).map_err(|e| UpError::Config(e.to_string()))?;
    std::fs::rename(&tmp, &file).map_err(io(&file))?;
    Ok(admin)
}

/// What `up`'s own clients (the chaos controller, runs started through the API) send:
/// the admin key under `--auth`.
pub fn identity(admin_key: Option<String>) -> ClientIdentity {
    ClientIdentity {
        api_key: admin_key,
        ..ClientIdentity::default()
    }
}

/// Names beside the services that get a certificate: the control API, and `up` itself
/// (its probes and data faults present it to replicas).
const OWN_CERTS: [&str; 2] = ["control", "up"];

/// Under `--tls`: opens (or makes) the CA, issues every certificate, and gives `up`'s
/// probes and clients what they connect with. Nothing to do without `--tls`.
pub fn ensure_tls(topology: &mut Topology) -> Result<(), UpError> {
    let Some(layout) = topology.tls.clone() else {
        return Ok(());
    };
    let config = |e: String| UpError::Config(format!("--tls: {e}"));
    let ca =
        bulwark_tls::ca::LocalCa::open_or_create(&layout.dir).map_err(|e| config(e.to_string()))?;
    let names: Vec<String> = topology
        .services
        .iter()
        .map(|s| s.name.clone())
        .chain(OWN_CERTS.map(str::to_owned))
        .collect();
    for name in &names {
        ca.issue(name, &[]).map_err(|e| config(e.to_string()))?;
    }
    let (cert, key) = (layout.cert("up"), layout.key("up"));
    let probe = bulwark_tls::client_config(&layout.ca(), Some((&cert, &key)))
        .map_err(|e| config(e.to_string()))?;
    for s in &mut topology.services {
        s.tls = Some(probe.clone());
    }
    topology.identity.tls =
        Some(bulwark_tls::client_config(&layout.ca(), None).map_err(|e| config(e.to_string()))?);
    topology.identity.ca_file = Some(layout.ca());
    Ok(())
}
