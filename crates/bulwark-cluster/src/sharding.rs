//! The cluster's layout (docs/design/sharding.md, section 2): created by the first
//! `bulwark up` of a data directory, kept in `<data>/sharding/layout.json`, given to every
//! gateway as `LAYOUT_FILE` and served by the control API:
//!
//! | request | answer |
//! |---|---|
//! | `GET /api/v1/sharding/layout` | the layout (`format`, `version`, `state`) |
//! | `GET /api/v1/sharding/ring?key=K` | `K`'s position and replica set, preferred first |
//!
//! Both need the `admin` role, as the rest of the control API.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use bulwark_http::{ApiError, RequestId};
use bulwark_placement::{Layout, LayoutState, Placement, Ring, position};
use serde_json::json;

use crate::up::UpError;

/// Where the layout lives, under the data directory.
pub const LAYOUT_FILE: &str = "sharding/layout.json";

/// The layout file of `data_dir`.
pub fn layout_path(data_dir: &Path) -> PathBuf {
    data_dir.join(LAYOUT_FILE)
}

/// The layout `up` runs with `wanted` (the flags' nodes and N): the one the data directory
/// holds when it is the same placement; a new version of it when nothing has to move (every
/// node holds every key before and after, so adding a replica is filled by repair as it
/// always was); else an error, because changing a sharded layout moves data. Writes the
/// file (atomically) when it is new.
pub fn settle(data_dir: &Path, wanted: Placement) -> Result<Layout, UpError> {
    let path = layout_path(data_dir);
    let bad = |what: String| UpError::Layout {
        path: path.clone(),
        what,
    };
    let layout = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let stored = Layout::from_json(&text).map_err(|e| bad(e.to_string()))?;
            let everywhere = |p: &Placement| p.replication_factor == p.nodes.len();
            match &stored.state {
                LayoutState::Stable(p) if *p == wanted => return Ok(stored),
                LayoutState::Stable(p) if everywhere(p) && everywhere(&wanted) => Layout {
                    version: stored.version + 1,
                    state: LayoutState::Stable(wanted),
                    ..stored
                },
                _ => {
                    return Err(bad(format!(
                        "it holds layout version {} ({}), and these flags ask for {}: moving a sharded cluster's data is `bulwark ctl shard` (not built yet); start with the same --replicas and --replication-factor, or use another --data-dir",
                        stored.version,
                        describe(stored.target()),
                        describe(&wanted)
                    )));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Layout::stable(wanted).map_err(|e| bad(e.to_string()))?
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    write_atomically(&path, &layout.to_json()).map_err(|e| bad(e.to_string()))?;
    Ok(layout)
}

fn describe(p: &Placement) -> String {
    format!("{} nodes, N = {}", p.nodes.len(), p.replication_factor)
}

/// Writes `text` to a temporary file beside `path`, fsyncs it, renames it over `path` and
/// fsyncs the directory: a crash leaves the old file or the new one, never a torn one.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The layout being served, with its ring.
#[derive(Debug)]
pub struct Sharding {
    layout: Layout,
    ring: Ring,
}

impl Sharding {
    /// The layout's ring (of its target placement).
    pub fn new(layout: Layout) -> Result<Sharding, bulwark_placement::LayoutError> {
        let ring = Ring::new(layout.target())?;
        Ok(Sharding { layout, ring })
    }
}

/// The `/api/v1/sharding/*` routes.
pub fn router(sharding: Arc<Sharding>) -> Router {
    Router::new()
        .route("/api/v1/sharding/layout", get(layout))
        .route("/api/v1/sharding/ring", get(ring))
        .with_state(sharding)
}

async fn layout(State(s): State<Arc<Sharding>>) -> Response {
    Json(&s.layout).into_response()
}

async fn ring(
    State(s): State<Arc<Sharding>>,
    Extension(rid): Extension<RequestId>,
    RawQuery(query): RawQuery,
) -> Response {
    let keys: Vec<String> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "key")
        .map(|(_, v)| v.into_owned())
        .collect();
    let key = match keys.as_slice() {
        [key] if !key.is_empty() => key,
        [] | [_] => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                "give the key: /api/v1/sharding/ring?key=K",
                &rid.0,
            )
            .into_response();
        }
        _ => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                "`key` is given more than once: give it once",
                &rid.0,
            )
            .into_response();
        }
    };
    let replicas: Vec<&str> = s
        .ring
        .replicas(key.as_bytes())
        .iter()
        .map(|id| s.ring.name(*id))
        .collect();
    Json(json!({
        "key": key,
        "position": format!("{:016x}", position(key.as_bytes())),
        "layout_version": s.layout.version,
        "replicas": replicas,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    /// The placement `up --replicas m --replication-factor n` asks for.
    fn placement(m: u16, n: usize) -> Placement {
        let replicas: Vec<(String, u16)> =
            (1..=m).map(|i| (format!("db_g{i}"), 6400 + i)).collect();
        crate::topology::layout_of(&replicas, n).target().clone()
    }

    #[test]
    fn the_first_up_writes_version_1_and_later_ones_keep_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = settle(dir.path(), placement(6, 3)).unwrap();
        assert_eq!(first.version, 1);
        let text = std::fs::read_to_string(layout_path(dir.path())).unwrap();
        assert_eq!(Layout::from_json(&text).unwrap(), first);
        assert_eq!(settle(dir.path(), placement(6, 3)).unwrap(), first);
    }

    #[test]
    fn a_sharded_layout_is_never_changed_by_flags() {
        let dir = tempfile::tempdir().unwrap();
        settle(dir.path(), placement(6, 3)).unwrap();
        for other in [placement(7, 3), placement(6, 2), placement(3, 3)] {
            let e = settle(dir.path(), other).unwrap_err().to_string();
            assert!(e.contains("layout version 1 (6 nodes, N = 3)"), "{e}");
            assert!(e.contains("layout.json"), "{e}");
        }
        assert_eq!(settle(dir.path(), placement(6, 3)).unwrap().version, 1);
    }

    #[test]
    fn unsharded_clusters_grow_as_before() {
        let dir = tempfile::tempdir().unwrap();
        settle(dir.path(), placement(2, 2)).unwrap();
        let grown = settle(dir.path(), placement(3, 3)).unwrap();
        assert_eq!(grown.version, 2);
        assert_eq!(grown.target().nodes.len(), 3);
    }

    #[test]
    fn a_damaged_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sharding")).unwrap();
        std::fs::write(layout_path(dir.path()), "{not json").unwrap();
        let e = settle(dir.path(), placement(2, 2)).unwrap_err().to_string();
        assert!(
            e.contains("layout.json") && e.contains("not a layout"),
            "{e}"
        );
    }
}
