//! What `up` runs: a list of services, each a command line plus how to tell it is healthy.
//!
//! The supervisor knows nothing about Bulwark beyond this description, so tests build a
//! [`Topology`] of small fake services (`sh -c 'exit 3'`, a Python HTTP stub, a
//! `redis-server` on a free port) and exercise the real supervisor and control API.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use bulwark_chaos::Link;
use bulwark_placement::{Layout, LayoutState, NodeSpec, Placement};

use crate::args::{Backend, UpArgs};

/// First replica port (`db_g1`); replica `i` (1-based) listens on `6400 + i`.
pub const REPLICA_BASE_PORT: u16 = 6400;
/// AP gateway port (`app_ap`).
pub const AP_PORT: u16 = 5001;
/// CP gateway port (`app_cp`).
pub const CP_PORT: u16 = 5002;
/// Quorum gateway port (`app_quorum`).
pub const QUORUM_PORT: u16 = 5003;
/// Commerce service port (`app_shop`).
pub const SHOP_PORT: u16 = 8080;
/// Toxiproxy API port of the fault proxy (`chaos_proxy`), Toxiproxy's default.
pub const CHAOS_PROXY_PORT: u16 = 8474;

/// The port of the proxied link from gateway `g` (1-based: 1 app_ap, 2 app_cp, 3
/// app_quorum) to replica `r` (1-based): `6400 + 100·g + r`, so app_ap's links are 65xx,
/// app_cp's 66xx, app_quorum's 67xx (docs/ARCHITECTURE.md, "The fault proxy and the port
/// scheme").
pub fn link_port(g: u16, r: u16) -> u16 {
    REPLICA_BASE_PORT + 100 * g + r
}

/// The role of a service, which decides its start and stop order: replicas start first and
/// stop last, as gateways depend on them (`depends_on: service_healthy`); the fault proxy
/// sits between them. Applications that need none of the cluster (the commerce service)
/// start last and stop first, with the gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// A storage replica (`bulwark node` or `redis-server`).
    Replica,
    /// An HTTP gateway in front of the replicas.
    Gateway,
    /// The fault proxy between gateways and replicas (`chaos_proxy`).
    Proxy,
    /// A standalone application with its own storage (`app_shop`).
    App,
}

impl ServiceKind {
    /// Lower-case name as shown in `ctl status`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Replica => "replica",
            ServiceKind::Gateway => "gateway",
            ServiceKind::Proxy => "proxy",
            ServiceKind::App => "app",
        }
    }
}

/// How the supervisor decides a running service is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// A TCP connection to the port is accepted.
    Tcp,
    /// The port answers a RESP `PING` with `+PONG` (replicas).
    RespPing,
    /// `GET <path>` on the port answers 200 (gateways: `/health/ready`).
    Http {
        /// Request path, starting with `/`.
        path: String,
    },
}

/// One supervised service: its name, its command line and how to probe it.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Unique name (`db_g1`, `app_ap`); also the log file name.
    pub name: String,
    /// Decides start/stop order.
    pub kind: ServiceKind,
    /// The port it listens on (127.0.0.1), checked free before start and probed for health.
    pub port: u16,
    /// Human label for the endpoints table (`AP gateway`).
    pub label: String,
    /// Executable to run.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment on top of the inherited one (the supervisor's environment, with
    /// `SECRET_KEY`, `LOG_LEVEL`, `CB_*` …, is always passed through).
    pub env: Vec<(OsString, OsString)>,
    /// How to tell it is healthy.
    pub health: HealthCheck,
    /// Set when it speaks TLS (`up --tls`): the configuration its probes connect with.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl ServiceSpec {
    /// The URL a user would use to reach it (`http://…` or `https://…` for gateways,
    /// `redis://…` or `rediss://…` for replicas).
    pub fn url(&self) -> String {
        let s = if self.tls.is_some() { "s" } else { "" };
        match self.kind {
            ServiceKind::Gateway | ServiceKind::Proxy | ServiceKind::App => {
                format!("http{s}://127.0.0.1:{}", self.port)
            }
            ServiceKind::Replica => format!("redis{s}://127.0.0.1:{}", self.port),
        }
    }
}

/// The files of `up --tls` under `<data-dir>/tls/`: the local CA (`ca.pem`, kept across
/// runs) and a certificate per service (`<name>.pem`, `<name>-key.pem`), issued at every
/// start by [`crate::secure::ensure_tls`]; `up.pem` is `up`'s own (its probes and data
/// faults present it to replicas, which require client certificates), `control.pem` the
/// control API's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsLayout {
    /// `<data-dir>/tls`.
    pub dir: PathBuf,
}

impl TlsLayout {
    /// The CA certificate clients trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The certificate of `name`.
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    /// The private key of `name`.
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-key.pem"))
    }

    /// `TLS_CERT_FILE` and `TLS_KEY_FILE` for the HTTP service `name`.
    fn https_env(&self, name: &str) -> Vec<(OsString, OsString)> {
        vec![
            ("TLS_CERT_FILE".into(), self.cert(name).into_os_string()),
            ("TLS_KEY_FILE".into(), self.key(name).into_os_string()),
        ]
    }

    /// The gateway `name`'s TLS to its replicas, presenting its own certificate.
    fn replica_env(&self, name: &str) -> Vec<(OsString, OsString)> {
        vec![
            ("REPLICA_TLS_CA_FILE".into(), self.ca().into_os_string()),
            (
                "REPLICA_TLS_CERT_FILE".into(),
                self.cert(name).into_os_string(),
            ),
            (
                "REPLICA_TLS_KEY_FILE".into(),
                self.key(name).into_os_string(),
            ),
        ]
    }
}

/// Timings of supervision. Production values are [`Policy::default`]; tests shorten them.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Delay before the first restart after a crash; doubled at each further crash.
    pub backoff_initial: Duration,
    /// Longest delay between restarts.
    pub backoff_max: Duration,
    /// A child that ran at least this long before crashing restarts after
    /// `backoff_initial` again (it was healthy for a while; this is a new incident).
    pub backoff_reset_after: Duration,
    /// How long a stop waits after SIGTERM before SIGKILL (docker's default, 10 s).
    pub stop_timeout: Duration,
    /// Period of the background health probes shown in `ctl status`.
    pub health_interval: Duration,
    /// Timeout of one health probe.
    pub health_timeout: Duration,
    /// How long `up` waits for each service to become healthy at start-up.
    pub startup_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            backoff_reset_after: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(10),
            // Gateways log each probe like any request; every 2 s keeps `ctl status`
            // current without drowning their logs.
            health_interval: Duration::from_secs(2),
            health_timeout: Duration::from_secs(1),
            startup_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything `up` runs and where it keeps its files.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Services, in any order (start order comes from their kind).
    pub services: Vec<ServiceSpec>,
    /// Holds the lock file and `logs/` (and, for real clusters, the replicas' data).
    pub data_dir: PathBuf,
    /// Address of the control API (port 0 is allowed: the bound address is reported).
    pub control: SocketAddr,
    /// Supervision timings.
    pub policy: Policy,
    /// Echo service logs to the terminal as a merged, readable stream.
    pub echo_logs: bool,
    /// Initial state of the chaos safety switch (`--chaos`, `CHAOS_ENABLED`).
    pub chaos: bool,
    /// The proxied gateway → replica links the fault proxy serves (empty without one).
    pub links: Vec<Link>,
    /// The gateways' `CHAOS_TOKEN`, fresh for each `up`, known only to its controller.
    pub chaos_token: Option<String>,
    /// The keys file every HTTP service (and the control API) authenticates with, under
    /// `--auth`.
    pub keys_file: Option<PathBuf>,
    /// What `up`'s own clients (the chaos controller) send: the admin key under `--auth`,
    /// and the CA they trust under `--tls`.
    pub identity: bulwark_http::client::ClientIdentity,
    /// The CA and certificates, under `--tls`.
    pub tls: Option<TlsLayout>,
    /// Where keys live: the replicas and N (`--replication-factor`), as version 1 until
    /// `up` settles it with the data directory's `sharding/layout.json`, which every
    /// gateway routes by (`LAYOUT_FILE`).
    pub layout: Layout,
}

impl Topology {
    /// The directory of the per-service log files.
    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    /// The audit log every service of the cluster appends to (one chain).
    pub fn audit_log(&self) -> PathBuf {
        self.log_dir().join("audit.jsonl")
    }

    /// The directory of the chaos controller's journal.
    pub fn chaos_dir(&self) -> PathBuf {
        self.data_dir.join("chaos")
    }

    /// The cluster `bulwark up` runs for these arguments; children are `exe` (the running
    /// `bulwark` binary) with the `node` and `gateway` subcommands, or `redis-server`.
    pub fn from_up_args(args: &UpArgs, exe: &Path) -> Topology {
        let off = args.port_offset;
        let mut services = Vec::new();
        let replicas: Vec<(String, u16)> = (1..=u16::from(args.replicas))
            .map(|i| (format!("db_g{i}"), off + REPLICA_BASE_PORT + i))
            .collect();
        let tls = args.tls.then(|| TlsLayout {
            dir: args.data_dir.join(bulwark_http::client::TLS_DIR),
        });
        for (name, port) in &replicas {
            let dir = args.data_dir.join(name);
            let (program, mut argv): (PathBuf, Vec<OsString>) = match args.backend {
                Backend::Bulwark => (
                    exe.to_path_buf(),
                    vec![
                        "node".into(),
                        "--name".into(),
                        name.into(),
                        "--port".into(),
                        port.to_string().into(),
                        "--dir".into(),
                        dir.into_os_string(),
                        "--appendfsync".into(),
                        args.appendfsync().as_str().into(),
                        // Data faults of chaos experiments (BW.DEBUG), as Redis allows
                        // DEBUG locally.
                        "--enable-debug-command".into(),
                    ],
                ),
                Backend::Redis => (
                    PathBuf::from("redis-server"),
                    vec![
                        "--port".into(),
                        port.to_string().into(),
                        "--bind".into(),
                        "127.0.0.1".into(),
                        "--appendonly".into(),
                        "yes".into(),
                        "--appendfsync".into(),
                        args.appendfsync().as_str().into(),
                        "--save".into(),
                        "".into(),
                        "--dir".into(),
                        dir.into_os_string(),
                    ],
                ),
            };
            if let Some(t) = &tls {
                // Mutual TLS: the node's port speaks TLS only and wants client
                // certificates from the CA (Redis: the plain port off, `--tls-port`).
                if args.backend == Backend::Redis {
                    argv[1] = "0".into();
                    argv.extend(["--tls-port".into(), port.to_string().into()]);
                    argv.extend(["--tls-auth-clients".into(), "yes".into()]);
                }
                argv.extend([
                    "--tls-cert-file".into(),
                    t.cert(name).into_os_string(),
                    "--tls-key-file".into(),
                    t.key(name).into_os_string(),
                    "--tls-ca-cert-file".into(),
                    t.ca().into_os_string(),
                ]);
            }
            services.push(ServiceSpec {
                tls: None,
                name: name.clone(),
                kind: ServiceKind::Replica,
                port: *port,
                label: format!("replica {name}"),
                program,
                args: argv,
                env: Vec::new(),
                health: HealthCheck::RespPing,
            });
        }
        let mut gateways = vec![
            ("app_ap", "ap", off + AP_PORT, "AP gateway"),
            ("app_cp", "cp", off + CP_PORT, "CP gateway"),
        ];
        // N per key: the flag, or 3 (every replica when there are fewer). Quorum needs 3.
        let n = args
            .replication_factor
            .unwrap_or(args.replicas.min(3))
            .min(args.replicas);
        if n >= 3 && !args.no_quorum {
            gateways.push(("app_quorum", "quorum", off + QUORUM_PORT, "quorum gateway"));
        }
        // Every HTTP service appends to the cluster's one audit log (one chain).
        let audit: (OsString, OsString) = (
            "AUDIT_LOG".into(),
            args.data_dir
                .join("logs")
                .join("audit.jsonl")
                .into_os_string(),
        );
        let keys_file = args.auth.then(|| crate::secure::keys_file(&args.data_dir));
        // Every HTTP service: the keys file under --auth, its certificate under --tls.
        let secured = |name: &str, mut env: Vec<(OsString, OsString)>| {
            if let Some(k) = &keys_file {
                env.push(("API_KEYS_FILE".into(), k.clone().into_os_string()));
            }
            if let Some(t) = &tls {
                env.extend(t.https_env(name));
            }
            env
        };
        let proxied = !args.no_chaos_proxy;
        let chaos_token = format!("{:032x}", rand::random::<u128>());
        let mut links = Vec::new();
        if proxied {
            for (g, (gateway, ..)) in (1..).zip(&gateways) {
                for (r, (replica, port)) in (1..).zip(&replicas) {
                    links.push(Link {
                        gateway: (*gateway).to_owned(),
                        replica: replica.clone(),
                        listen: off + link_port(g, r),
                        upstream: *port,
                    });
                }
            }
            services.push(ServiceSpec {
                tls: None,
                name: "chaos_proxy".to_owned(),
                kind: ServiceKind::Proxy,
                port: off + CHAOS_PROXY_PORT,
                label: "fault proxy API".to_owned(),
                program: exe.to_path_buf(),
                args: vec![
                    "chaos".into(),
                    "proxy".into(),
                    "--listen".into(),
                    format!("127.0.0.1:{}", off + CHAOS_PROXY_PORT).into(),
                ],
                // Its only client is the chaos controller, which must never be throttled.
                env: secured(
                    "chaos_proxy",
                    vec![audit.clone(), ("RATE_LIMIT".into(), "off".into())],
                ),
                health: HealthCheck::Http {
                    path: "/version".to_owned(),
                },
            });
        }
        for (name, mode, port, label) in gateways {
            // Through this gateway's own proxies (one per replica), or directly.
            let replica_list = replicas
                .iter()
                .map(|(replica, direct)| {
                    let port = links
                        .iter()
                        .find(|l| l.gateway == name && l.replica == *replica)
                        .map_or(*direct, |l| l.listen);
                    format!("{replica}=127.0.0.1:{port}")
                })
                .collect::<Vec<_>>()
                .join(",");
            services.push(ServiceSpec {
                tls: None,
                name: name.to_owned(),
                kind: ServiceKind::Gateway,
                port,
                label: label.to_owned(),
                program: exe.to_path_buf(),
                args: vec![
                    "gateway".into(),
                    "--mode".into(),
                    mode.into(),
                    "--port".into(),
                    port.to_string().into(),
                    "--name".into(),
                    name.into(),
                    "--replicas".into(),
                    replica_list.clone().into(),
                    "--backend".into(),
                    args.backend.as_str().into(),
                ],
                // The admin endpoint's token (clock skew); an environment variable, so it
                // does not show in `ps`.
                env: secured(name, {
                    let mut env = vec![
                        ("CHAOS_TOKEN".into(), chaos_token.clone().into()),
                        audit.clone(),
                        (
                            "LAYOUT_FILE".into(),
                            crate::sharding::layout_path(&args.data_dir).into_os_string(),
                        ),
                    ];
                    if let Some(t) = &tls {
                        env.extend(t.replica_env(name));
                    }
                    env
                }),
                health: HealthCheck::Http {
                    path: "/health/ready".to_owned(),
                },
            });
        }
        if !args.no_shop {
            let db = args.data_dir.join("shop").join("shop.db");
            services.push(ServiceSpec {
                tls: None,
                name: "app_shop".to_owned(),
                kind: ServiceKind::App,
                port: off + SHOP_PORT,
                label: "commerce service".to_owned(),
                program: exe.to_path_buf(),
                args: vec![
                    "shop".into(),
                    "--bind".into(),
                    "127.0.0.1".into(),
                    "--port".into(),
                    (off + SHOP_PORT).to_string().into(),
                    "--database-url".into(),
                    format!("sqlite://{}", db.display()).into(),
                ],
                env: secured("app_shop", vec![audit.clone()]),
                health: HealthCheck::Http {
                    path: "/health/ready".to_owned(),
                },
            });
        }
        Topology {
            services,
            data_dir: args.data_dir.clone(),
            control: SocketAddr::from(([127, 0, 0, 1], off + args.control_port)),
            policy: Policy {
                startup_timeout: Duration::from_secs(args.startup_timeout),
                ..Policy::default()
            },
            echo_logs: !args.quiet,
            chaos: args.chaos,
            links,
            chaos_token: Some(chaos_token),
            keys_file,
            identity: bulwark_http::client::ClientIdentity::default(),
            tls,
            layout: layout_of(&replicas, n.into()),
        }
    }
}

/// Version 1 of the stable layout of `replicas` (name, port on 127.0.0.1) with N = `n`.
pub fn layout_of(replicas: &[(String, u16)], n: usize) -> Layout {
    Layout {
        format: bulwark_placement::FORMAT,
        version: 1,
        state: LayoutState::Stable(Placement {
            replication_factor: n,
            vnodes: bulwark_placement::DEFAULT_VNODES,
            nodes: replicas
                .iter()
                .map(|(name, port)| NodeSpec::new(name.clone(), format!("127.0.0.1:{port}")))
                .collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Appendfsync;

    fn args(replicas: u8, backend: Backend) -> UpArgs {
        UpArgs {
            replicas,
            replication_factor: None,
            backend,
            data_dir: PathBuf::from("/d"),
            control_port: 7070,
            no_quorum: false,
            foreground_logs: false,
            quiet: false,
            appendfsync: Some(Appendfsync::Always),
            startup_timeout: 30,
            chaos: false,
            no_chaos_proxy: true,
            no_shop: true,
            port_offset: 0,
            auth: false,
            tls: false,
        }
    }

    fn argv(s: &ServiceSpec) -> Vec<String> {
        s.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn two_replicas_give_the_seed_topology() {
        let t = Topology::from_up_args(&args(2, Backend::Bulwark), Path::new("/bin/bulwark"));
        let names: Vec<_> = t
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.port))
            .collect();
        assert_eq!(
            names,
            [
                ("db_g1", 6401),
                ("db_g2", 6402),
                ("app_ap", 5001),
                ("app_cp", 5002)
            ]
        );
        assert_eq!(
            argv(&t.services[0]),
            [
                "node",
                "--name",
                "db_g1",
                "--port",
                "6401",
                "--dir",
                "/d/db_g1",
                "--appendfsync",
                "always",
                "--enable-debug-command"
            ]
        );
        assert_eq!(
            argv(&t.services[3]),
            [
                "gateway",
                "--mode",
                "cp",
                "--port",
                "5002",
                "--name",
                "app_cp",
                "--replicas",
                "db_g1=127.0.0.1:6401,db_g2=127.0.0.1:6402",
                "--backend",
                "bulwark"
            ]
        );
        assert_eq!(t.control.port(), 7070);
    }

    #[test]
    fn gateways_reach_replicas_through_one_proxy_per_link() {
        let mut a = args(3, Backend::Bulwark);
        a.no_chaos_proxy = false;
        let t = Topology::from_up_args(&a, Path::new("/bin/bulwark"));
        let proxy = t.services.iter().find(|s| s.name == "chaos_proxy");
        assert_eq!(
            proxy.map(|s| (s.kind, s.port)),
            Some((ServiceKind::Proxy, 8474))
        );
        assert_eq!(t.links.len(), 9, "3 gateways × 3 replicas");
        let quorum = t.services.iter().find(|s| s.name == "app_quorum").map(argv);
        assert!(
            quorum.is_some_and(|a| a.contains(
                &"db_g1=127.0.0.1:6701,db_g2=127.0.0.1:6702,db_g3=127.0.0.1:6703".to_owned()
            )),
            "app_quorum's links are 67xx"
        );
        let l = t
            .links
            .iter()
            .find(|l| l.gateway == "app_ap" && l.replica == "db_g2");
        assert_eq!(l.map(|l| (l.listen, l.upstream)), Some((6502, 6402)));
        assert_eq!(
            t.services
                .iter()
                .find(|s| s.name == "db_g1")
                .map(|s| s.port),
            Some(6401),
            "replicas keep their own ports"
        );
    }

    fn env(s: &ServiceSpec, name: &str) -> Option<String> {
        s.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_string_lossy().into_owned())
    }

    #[test]
    fn tls_gives_replicas_mutual_tls_and_gateways_https_and_client_certificates() {
        for backend in [Backend::Bulwark, Backend::Redis] {
            let mut a = args(2, backend);
            a.tls = true;
            a.no_shop = false;
            let t = Topology::from_up_args(&a, Path::new("/bin/bulwark"));
            let by = |n: &str| t.services.iter().find(|s| s.name == n).expect(n);
            let node = argv(by("db_g1"));
            let tail = [
                "--tls-cert-file",
                "/d/tls/db_g1.pem",
                "--tls-key-file",
                "/d/tls/db_g1-key.pem",
                "--tls-ca-cert-file",
                "/d/tls/ca.pem",
            ];
            assert!(node.ends_with(&tail.map(String::from)), "{node:?}");
            if backend == Backend::Redis {
                // The plain port is off; the replica's port is its TLS port.
                assert_eq!(node[..2], ["--port", "0"]);
                let at = node
                    .iter()
                    .position(|a| a == "--tls-port")
                    .expect("--tls-port");
                assert_eq!(node[at + 1], "6401");
                assert!(node.windows(2).any(|w| w == ["--tls-auth-clients", "yes"]));
            }
            let ap = by("app_ap");
            assert_eq!(
                env(ap, "TLS_CERT_FILE").as_deref(),
                Some("/d/tls/app_ap.pem")
            );
            assert_eq!(
                env(ap, "REPLICA_TLS_CA_FILE").as_deref(),
                Some("/d/tls/ca.pem")
            );
            assert_eq!(
                env(ap, "REPLICA_TLS_KEY_FILE").as_deref(),
                Some("/d/tls/app_ap-key.pem")
            );
            assert_eq!(
                env(by("app_shop"), "TLS_KEY_FILE").as_deref(),
                Some("/d/tls/app_shop-key.pem")
            );
            assert_eq!(env(by("app_shop"), "REPLICA_TLS_CA_FILE"), None);
        }
        let plain = Topology::from_up_args(&args(2, Backend::Bulwark), Path::new("/b"));
        assert!(plain.tls.is_none());
        assert!(
            plain
                .services
                .iter()
                .all(|s| env(s, "TLS_CERT_FILE").is_none())
        );
    }

    #[test]
    fn every_gateway_routes_by_the_layout_file_and_quorum_needs_three() {
        let gateways = |t: &Topology| -> Vec<String> {
            t.services
                .iter()
                .filter(|s| s.kind == ServiceKind::Gateway)
                .map(|s| {
                    let file = s.env.iter().find(|(k, _)| k == "LAYOUT_FILE").unwrap();
                    assert_eq!(
                        PathBuf::from(&file.1),
                        PathBuf::from("/d/sharding/layout.json")
                    );
                    s.name.clone()
                })
                .collect()
        };
        let mut a = args(6, Backend::Bulwark);
        let t = Topology::from_up_args(&a, Path::new("/bin/bulwark"));
        assert_eq!(t.layout.target().replication_factor, 3);
        assert_eq!(t.layout.target().nodes.len(), 6);
        assert_eq!(gateways(&t), ["app_ap", "app_cp", "app_quorum"]);
        a.replication_factor = Some(2);
        let t = Topology::from_up_args(&a, Path::new("/bin/bulwark"));
        assert_eq!(t.layout.target().replication_factor, 2);
        assert_eq!(gateways(&t), ["app_ap", "app_cp"]);
        let t = Topology::from_up_args(&args(2, Backend::Bulwark), Path::new("/bin/bulwark"));
        assert_eq!(t.layout.target().replication_factor, 2);
    }

    #[test]
    fn three_replicas_add_a_quorum_gateway_unless_disabled() {
        let mut a = args(3, Backend::Redis);
        let t = Topology::from_up_args(&a, Path::new("/bin/bulwark"));
        assert!(
            t.services
                .iter()
                .any(|s| s.name == "app_quorum" && s.port == 5003)
        );
        let g3 = t.services.iter().find(|s| s.name == "db_g3");
        assert_eq!(
            g3.map(|s| s.program.clone()),
            Some(PathBuf::from("redis-server"))
        );
        a.no_quorum = true;
        let t = Topology::from_up_args(&a, Path::new("/bin/bulwark"));
        assert!(!t.services.iter().any(|s| s.name == "app_quorum"));
    }

    #[test]
    fn the_commerce_service_runs_on_sqlite_under_the_data_dir() {
        let mut a = args(2, Backend::Bulwark);
        a.no_shop = false;
        a.port_offset = 10000;
        let t = Topology::from_up_args(&a, Path::new("/bin/bulwark"));
        let shop = t.services.iter().find(|s| s.name == "app_shop");
        assert_eq!(
            shop.map(|s| (s.kind, s.port, s.url())),
            Some((ServiceKind::App, 18080, "http://127.0.0.1:18080".to_owned()))
        );
        assert_eq!(
            shop.map(argv),
            Some(
                [
                    "shop",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    "18080",
                    "--database-url",
                    "sqlite:///d/shop/shop.db"
                ]
                .map(String::from)
                .to_vec()
            )
        );
    }
}
