//! The set of proxies and every change the API can make to it.
//!
//! Invariants:
//! * **all or nothing**: every operation checks its whole input and acquires every new
//!   listening socket before it changes anything, so a refused request (bad field, unknown
//!   toxic, duplicate name, port in use) leaves every proxy, toxic and connection as it was.
//!   `/populate` and `/reset` are atomic over all the proxies they touch;
//! * operations are serialized by one lock, held across binding and stopping, so two API
//!   calls never interleave;
//! * a toxic change reaches every connection of the proxy through a `watch` channel before
//!   the API answers; each connection applies it before reading further bytes;
//! * deleting, disabling, or changing a proxy's `listen`/`upstream` closes every one of its
//!   connections before the API answers, and a deleted or disabled proxy's port is free
//!   when the API answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use bulwark_obs::events::{Emit, ProxyChanged, ToxicChanged};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};

use crate::connection::ToxicSet;
use crate::error::ApiError;
use crate::proxy::{Running, Spec};
use crate::toxic::{Direction, SharedState, TYPES, Toxic, ToxicKind};

/// Where a proxy listens when the request names no address: loopback, a free port.
/// (Toxiproxy binds every interface then; a chaos tool should not open ports to the
/// network unless asked.)
const DEFAULT_LISTEN: &str = "127.0.0.1:0";
/// Longest proxy or toxic name.
const MAX_NAME: usize = 256;

/// A proxy as `POST /proxies`, `POST /proxies/{name}` and `/populate` receive it.
/// `toxics` is accepted and ignored, as Toxiproxy does (its Go client sends it back).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProxyInput {
    name: Option<String>,
    listen: Option<String>,
    upstream: Option<String>,
    enabled: Option<bool>,
    #[serde(default, rename = "toxics")]
    _toxics: Option<Value>,
}

/// A toxic as `POST /proxies/{name}/toxics` and `POST /proxies/{name}/toxics/{toxic}`
/// receive it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToxicInput {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    stream: Option<String>,
    toxicity: Option<f32>,
    attributes: Option<Map<String, Value>>,
}

/// Settings every proxy shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Seed of all randomness (toxicity, jitter, slicing).
    pub seed: u64,
    /// Most connections open at once per proxy.
    pub max_connections: usize,
}

/// One proxy.
#[derive(Debug)]
struct Entry {
    name: Arc<str>,
    /// Configured address, or the bound one (with its real port) once started.
    listen: String,
    upstream: Arc<str>,
    /// Chain order: creation order.
    toxics: Vec<Toxic>,
    /// Publishes `toxics` to the connections.
    tx: watch::Sender<ToxicSet>,
    /// `Some` while enabled.
    running: Option<Running>,
    /// Base seed of this proxy's connections.
    seed: u64,
}

impl Entry {
    fn new(name: &str, listen: String, upstream: &str, seed: u64) -> Entry {
        let (tx, _) = watch::channel(Arc::new(Vec::new()));
        Entry {
            name: name.into(),
            listen,
            upstream: upstream.into(),
            toxics: Vec::new(),
            tx,
            running: None,
            seed,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "name": &*self.name,
            "listen": self.listen,
            "upstream": &*self.upstream,
            "enabled": self.running.is_some(),
            "toxics": self.toxics_json(),
        })
    }

    /// Toxics as Toxiproxy lists them: upstream ones, then downstream ones, each in the
    /// order they were added.
    fn toxics_json(&self) -> Value {
        let mut list: Vec<&Toxic> = self.toxics.iter().collect();
        list.sort_by_key(|t| t.stream);
        Value::Array(list.iter().map(|t| t.to_json()).collect())
    }

    fn publish(&self) {
        self.tx.send_replace(Arc::new(self.toxics.clone()));
    }

    fn start(&mut self, listener: TcpListener, limits: Limits) -> Result<(), ApiError> {
        let spec = Spec {
            name: self.name.clone(),
            upstream: self.upstream.clone(),
            toxics: self.tx.subscribe(),
            seed: self.seed,
            max_connections: limits.max_connections,
        };
        let running = Running::start(listener, spec).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot start proxy {}: {e}", self.name),
            )
        })?;
        self.listen = running.addr.to_string();
        self.running = Some(running);
        Ok(())
    }

    async fn stop(&mut self) -> Option<TcpListener> {
        match self.running.take() {
            Some(r) => r.stop().await,
            None => None,
        }
    }

    fn event(&self, action: &str) {
        ProxyChanged {
            proxy: &self.name,
            action,
            listen: &self.listen,
            upstream: &self.upstream,
            enabled: self.running.is_some(),
        }
        .emit();
    }

    fn toxic_event(&self, toxic: &Toxic, action: &str) {
        ToxicChanged {
            proxy: &self.name,
            toxic: &toxic.name,
            kind: toxic.kind.type_name(),
            stream: toxic.stream.as_str(),
            action,
            attributes: &toxic.kind.attributes().to_string(),
            active: self.toxics.len(),
        }
        .emit();
    }
}

/// Every proxy of this process.
#[derive(Debug)]
pub(crate) struct Proxies {
    proxies: Mutex<BTreeMap<String, Entry>>,
    next_toxic_id: AtomicU64,
    limits: Limits,
}

/// Parses a JSON request body into `T`, with Toxiproxy's error wording.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(ApiError::bad_body)
}

fn check_name(field: &str, name: Option<String>) -> Result<String, ApiError> {
    let name = name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::missing(field))?;
    if name.len() > MAX_NAME || name.contains('/') || name.chars().any(char::is_control) {
        return Err(ApiError::bad_body(format!(
            "{field} must be at most {MAX_NAME} characters, without '/' or control characters"
        )));
    }
    Ok(name)
}

/// Checks that `addr` is `host:port` (the host may be a name, resolved later).
fn check_addr(field: &str, addr: &str, port_zero_ok: bool) -> Result<(), ApiError> {
    let bad = || ApiError::bad_body(format!("{field} must be host:port, got {addr:?}"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || (port == 0 && !port_zero_ok) || addr.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    Ok(())
}

/// Binds `listen`, mapping failures to the API's errors (a port in use is 409).
async fn bind(name: &str, listen: &str) -> Result<TcpListener, ApiError> {
    TcpListener::bind(listen).await.map_err(|e| {
        let status = if e.kind() == std::io::ErrorKind::AddrInUse {
            StatusCode::CONFLICT
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(
            status,
            format!("proxy {name}: cannot listen on {listen}: {e}"),
        )
    })
}

impl Proxies {
    pub(crate) fn new(limits: Limits) -> Proxies {
        Proxies {
            proxies: Mutex::new(BTreeMap::new()),
            next_toxic_id: AtomicU64::new(1),
            limits,
        }
    }

    fn proxy_seed(&self, name: &str) -> u64 {
        // FNV-1a of the name, mixed with the process seed: a proxy's connections get the
        // same randomness in every run with the same seed, whatever other proxies exist.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^ self.limits.seed.rotate_left(17)
    }

    /// `GET /proxies`: name → proxy.
    pub(crate) async fn list(&self) -> Value {
        let proxies = self.proxies.lock().await;
        let map: Map<String, Value> = proxies
            .iter()
            .map(|(name, e)| (name.clone(), e.to_json()))
            .collect();
        Value::Object(map)
    }

    /// `GET /proxies/{name}`.
    pub(crate) async fn get(&self, name: &str) -> Result<Value, ApiError> {
        let proxies = self.proxies.lock().await;
        proxies
            .get(name)
            .map(Entry::to_json)
            .ok_or_else(ApiError::proxy_not_found)
    }

    /// `POST /proxies`: 201 with the proxy.
    pub(crate) async fn create(&self, input: ProxyInput) -> Result<Value, ApiError> {
        let name = check_name("name", input.name)?;
        let upstream = input.upstream.filter(|u| !u.is_empty());
        let upstream = upstream.ok_or_else(|| ApiError::missing("upstream"))?;
        check_addr("upstream", &upstream, false)?;
        let listen = input
            .listen
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        check_addr("listen", &listen, true)?;
        let mut proxies = self.proxies.lock().await;
        if proxies.contains_key(&name) {
            return Err(ApiError::proxy_exists());
        }
        let mut entry = Entry::new(&name, listen, &upstream, self.proxy_seed(&name));
        if input.enabled.unwrap_or(true) {
            let listener = bind(&name, &entry.listen).await?;
            entry.start(listener, self.limits)?;
        }
        entry.event("created");
        let json = entry.to_json();
        proxies.insert(name, entry);
        Ok(json)
    }

    /// `POST /proxies/{name}` (and `PATCH`): changes `listen`, `upstream`, `enabled`;
    /// fields left out keep their values.
    pub(crate) async fn update(&self, name: &str, input: ProxyInput) -> Result<Value, ApiError> {
        let mut proxies = self.proxies.lock().await;
        let entry = proxies
            .get_mut(name)
            .ok_or_else(ApiError::proxy_not_found)?;
        if input.name.as_deref().is_some_and(|n| n != name) {
            return Err(ApiError::bad_body(
                "a proxy cannot be renamed: delete it and create it again",
            ));
        }
        let listen = input
            .listen
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| entry.listen.clone());
        let upstream = input
            .upstream
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| entry.upstream.to_string());
        check_addr("listen", &listen, true)?;
        check_addr("upstream", &upstream, false)?;
        let enabled = input.enabled.unwrap_or(entry.running.is_some());
        let listen_changed = listen != entry.listen;
        let upstream_changed = *upstream != *entry.upstream;
        let was_enabled = entry.running.is_some();
        if !listen_changed && !upstream_changed && enabled == was_enabled {
            return Ok(entry.to_json());
        }
        // Acquire the new socket first: if that fails, nothing has changed.
        let fresh = if enabled && (listen_changed || !was_enabled) {
            Some(bind(name, &listen).await?)
        } else {
            None
        };
        let old_listener = if listen_changed || upstream_changed || !enabled {
            entry.stop().await
        } else {
            None
        };
        entry.listen = listen;
        entry.upstream = upstream.into();
        if enabled && entry.running.is_none() {
            let listener = match (fresh, old_listener) {
                (Some(l), _) | (None, Some(l)) => l,
                (None, None) => bind(name, &entry.listen).await?,
            };
            entry.start(listener, self.limits)?;
        }
        let action = match (was_enabled, enabled) {
            (false, true) => "enabled",
            (true, false) => "disabled",
            _ => "updated",
        };
        entry.event(action);
        Ok(entry.to_json())
    }

    /// `DELETE /proxies/{name}`: closes its connections and its port.
    pub(crate) async fn delete(&self, name: &str) -> Result<(), ApiError> {
        let mut proxies = self.proxies.lock().await;
        let mut entry = proxies.remove(name).ok_or_else(ApiError::proxy_not_found)?;
        entry.stop().await;
        entry.event("deleted");
        Ok(())
    }

    /// `POST /reset`: enables every proxy and removes every toxic. Connections stay open
    /// (as in Toxiproxy), except those a removed `timeout` had cut off.
    pub(crate) async fn reset(&self) -> Result<(), ApiError> {
        let mut proxies = self.proxies.lock().await;
        let mut listeners = Vec::new();
        for entry in proxies.values().filter(|e| e.running.is_none()) {
            listeners.push((entry.name.clone(), bind(&entry.name, &entry.listen).await?));
        }
        for entry in proxies.values_mut() {
            let removed = std::mem::take(&mut entry.toxics);
            entry.publish();
            for t in &removed {
                entry.toxic_event(t, "removed");
            }
        }
        for (name, listener) in listeners {
            if let Some(entry) = proxies.get_mut(&*name) {
                entry.start(listener, self.limits)?;
                entry.event("enabled");
            }
        }
        Ok(())
    }

    /// `POST /populate`: creates or replaces the listed proxies, atomically. A proxy whose
    /// `listen` and `upstream` are unchanged is kept as it is (toxics and connections
    /// too); one that differs is replaced by a new one without toxics. Proxies not listed
    /// are left alone. Returns them in the order given.
    pub(crate) async fn populate(&self, input: Vec<ProxyInput>) -> Result<Value, ApiError> {
        struct Plan {
            name: String,
            listen: String,
            upstream: String,
            enabled: bool,
        }
        let mut plans: Vec<Plan> = Vec::with_capacity(input.len());
        for (i, p) in input.into_iter().enumerate() {
            let at = i + 1;
            let name = check_name(&format!("name at proxy {at}"), p.name)?;
            let upstream = p
                .upstream
                .filter(|u| !u.is_empty())
                .ok_or_else(|| ApiError::missing(&format!("upstream at proxy {at}")))?;
            check_addr(&format!("upstream at proxy {at}"), &upstream, false)?;
            let listen = p
                .listen
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
            check_addr(&format!("listen at proxy {at}"), &listen, true)?;
            if plans.iter().any(|q| q.name == name) {
                return Err(ApiError::bad_body(format!(
                    "duplicate proxy name {name:?} at proxy {at}"
                )));
            }
            plans.push(Plan {
                name,
                listen,
                upstream,
                enabled: p.enabled.unwrap_or(true),
            });
        }
        let mut proxies = self.proxies.lock().await;
        let same =
            |plan: &Plan, e: &Entry| plan.listen == e.listen && *plan.upstream == *e.upstream;
        // Bind every new socket before changing anything. A replaced proxy that keeps its
        // address reuses its own listener (taken when it is stopped below).
        let mut fresh: BTreeMap<String, TcpListener> = BTreeMap::new();
        for plan in &plans {
            let existing = proxies.get(&plan.name);
            if existing.is_some_and(|e| same(plan, e)) || !plan.enabled {
                continue;
            }
            let reuses = existing.is_some_and(|e| e.running.is_some() && e.listen == plan.listen);
            if !reuses {
                fresh.insert(plan.name.clone(), bind(&plan.name, &plan.listen).await?);
            }
        }
        let mut out = Vec::with_capacity(plans.len());
        for plan in plans {
            if let Some(e) = proxies.get(&plan.name)
                && same(&plan, e)
            {
                out.push(e.to_json());
                continue;
            }
            let old_listener = match proxies.remove(&plan.name) {
                Some(mut old) => old.stop().await,
                None => None,
            };
            let mut entry = Entry::new(
                &plan.name,
                plan.listen,
                &plan.upstream,
                self.proxy_seed(&plan.name),
            );
            if plan.enabled {
                let listener = match (fresh.remove(&plan.name), old_listener) {
                    (Some(l), _) | (None, Some(l)) => l,
                    (None, None) => bind(&plan.name, &entry.listen).await?,
                };
                entry.start(listener, self.limits)?;
            }
            entry.event("replaced");
            out.push(entry.to_json());
            proxies.insert(plan.name, entry);
        }
        Ok(json!({ "proxies": out }))
    }

    /// `GET /proxies/{name}/toxics`.
    pub(crate) async fn toxics(&self, name: &str) -> Result<Value, ApiError> {
        let proxies = self.proxies.lock().await;
        let entry = proxies.get(name).ok_or_else(ApiError::proxy_not_found)?;
        Ok(entry.toxics_json())
    }

    /// `GET /proxies/{name}/toxics/{toxic}`.
    pub(crate) async fn toxic(&self, name: &str, toxic: &str) -> Result<Value, ApiError> {
        let proxies = self.proxies.lock().await;
        let entry = proxies.get(name).ok_or_else(ApiError::proxy_not_found)?;
        entry
            .toxics
            .iter()
            .find(|t| t.name == toxic)
            .map(Toxic::to_json)
            .ok_or_else(ApiError::toxic_not_found)
    }

    /// `POST /proxies/{name}/toxics`: adds a toxic; it takes effect on the proxy's
    /// existing connections too.
    pub(crate) async fn add_toxic(&self, name: &str, input: ToxicInput) -> Result<Value, ApiError> {
        let mut proxies = self.proxies.lock().await;
        let entry = proxies
            .get_mut(name)
            .ok_or_else(ApiError::proxy_not_found)?;
        let stream = match input.stream.as_deref() {
            None | Some("") => Direction::Downstream,
            Some(s) => Direction::parse(s).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "stream was invalid, can be either upstream or downstream",
                )
            })?,
        };
        let type_name = input.kind.unwrap_or_default();
        let toxic_name = match input.name.filter(|n| !n.is_empty()) {
            Some(n) => check_name("name", Some(n))?,
            None => format!("{type_name}_{}", stream.as_str()),
        };
        let kind = ToxicKind::defaults(&type_name).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid toxic type: {type_name:?} (types: {})",
                    TYPES.join(", ")
                ),
            )
        })?;
        if entry.toxics.iter().any(|t| t.name == toxic_name) {
            return Err(ApiError::toxic_exists());
        }
        let kind = kind
            .with_attributes(&input.attributes.unwrap_or_default())
            .map_err(ApiError::bad_body)?;
        if matches!(kind, ToxicKind::HttpFault(_)) && stream != Direction::Upstream {
            return Err(ApiError::bad_body(
                "an http_fault acts on requests: its stream must be upstream",
            ));
        }
        let toxicity = check_toxicity(input.toxicity.unwrap_or(1.0))?;
        let toxic = Toxic {
            id: self.next_toxic_id.fetch_add(1, Ordering::Relaxed),
            version: 0,
            name: toxic_name,
            kind,
            stream,
            toxicity,
            shared: Arc::new(SharedState::default()),
        };
        let json = toxic.to_json();
        entry.toxics.push(toxic);
        entry.publish();
        if let Some(t) = entry.toxics.last() {
            entry.toxic_event(t, "added");
        }
        Ok(json)
    }

    /// `POST /proxies/{name}/toxics/{toxic}` (and `PATCH`): changes `attributes` (those
    /// given; the others keep their values) and `toxicity`.
    pub(crate) async fn update_toxic(
        &self,
        name: &str,
        toxic: &str,
        input: ToxicInput,
    ) -> Result<Value, ApiError> {
        let mut proxies = self.proxies.lock().await;
        let entry = proxies
            .get_mut(name)
            .ok_or_else(ApiError::proxy_not_found)?;
        let index = entry
            .toxics
            .iter()
            .position(|t| t.name == toxic)
            .ok_or_else(ApiError::toxic_not_found)?;
        let current = &entry.toxics[index];
        if input.name.as_deref().is_some_and(|n| n != current.name)
            || input
                .kind
                .as_deref()
                .is_some_and(|k| k != current.kind.type_name())
            || input
                .stream
                .as_deref()
                .is_some_and(|s| s != current.stream.as_str())
        {
            return Err(ApiError::bad_body(
                "a toxic's name, type and stream cannot change: remove it and add it again",
            ));
        }
        let kind = current
            .kind
            .clone()
            .with_attributes(&input.attributes.unwrap_or_default())
            .map_err(ApiError::bad_body)?;
        let toxicity = check_toxicity(input.toxicity.unwrap_or(current.toxicity))?;
        let updated = Toxic {
            id: current.id,
            version: current.version + 1,
            name: current.name.clone(),
            kind,
            stream: current.stream,
            toxicity,
            shared: Arc::new(SharedState::default()),
        };
        let json = updated.to_json();
        entry.toxics[index] = updated;
        entry.publish();
        entry.toxic_event(&entry.toxics[index], "updated");
        Ok(json)
    }

    /// `DELETE /proxies/{name}/toxics/{toxic}`.
    pub(crate) async fn remove_toxic(&self, name: &str, toxic: &str) -> Result<(), ApiError> {
        let mut proxies = self.proxies.lock().await;
        let entry = proxies
            .get_mut(name)
            .ok_or_else(ApiError::proxy_not_found)?;
        let index = entry
            .toxics
            .iter()
            .position(|t| t.name == toxic)
            .ok_or_else(ApiError::toxic_not_found)?;
        let removed = entry.toxics.remove(index);
        entry.publish();
        entry.toxic_event(&removed, "removed");
        Ok(())
    }

    /// Stops every proxy (process shutdown): closes every connection and port.
    pub(crate) async fn shutdown(&self) {
        let mut proxies = self.proxies.lock().await;
        for entry in proxies.values_mut() {
            entry.stop().await;
        }
    }

    /// Open connections over all proxies (for the shutdown log).
    pub(crate) async fn connections(&self) -> usize {
        let proxies = self.proxies.lock().await;
        proxies
            .values()
            .filter_map(|e| e.running.as_ref())
            .map(Running::connections)
            .sum()
    }
}

fn check_toxicity(t: f32) -> Result<f32, ApiError> {
    if (0.0..=1.0).contains(&t) {
        Ok(t)
    } else {
        Err(ApiError::bad_body(format!(
            "toxicity must be between 0 and 1, got {t}"
        )))
    }
}
