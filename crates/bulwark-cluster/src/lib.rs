//! `bulwark up` and `bulwark ctl`: a process supervisor for a local Bulwark cluster and its
//! client — the stand-in for the seed's `docker-compose up/ps`, `docker stop/start`,
//! `docker kill --signal=…` and `docker logs`.
//!
//! * [`topology`]: what runs — services as command lines with a health check. `up` builds
//!   the Bulwark topology from [`UpArgs`]; tests build their own with fake services.
//! * [`supervisor`]: one actor per service owns its process; restart policy (SPEC CAP-9),
//!   health probes, ordered start and stop.
//! * [`logs`]: per-service log files and the merged, readable terminal stream.
//! * [`control`]: the HTTP control API on 127.0.0.1:7070 (with the chaos routes of
//!   `bulwark-chaos`); [`client`]: its client; [`chaos`]: the supervisor as the chaos
//!   controller's `Processes`.
//! * [`secure`]: the keys of `up --auth`.
//! * [`up`] and [`ctl`]: the two subcommands.

#![forbid(unsafe_code)]

pub mod args;
pub mod chaos;
pub mod client;
pub mod control;
pub mod ctl;
pub mod health;
pub mod logs;
pub mod secure;
pub mod sharding;
pub mod supervisor;
pub mod topology;
pub mod up;

pub use args::{Appendfsync, Backend, CtlArgs, CtlCommand, UpArgs};
pub use ctl::run_ctl;
pub use up::run_up;
