//! The security middleware: authentication, the role check, rate limits and the audit
//! log, in that order, for every route that is not open (docs/design/security.md).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts as _, MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bulwark_audit::{AuditLog, Record};
use bulwark_obs::metrics::metrics;
use bulwark_resilience::rate::{Policy, RateLimiter, Standing};

use crate::auth::{Authenticator, Principal};
use crate::error::ApiError;
use crate::guard::ConnMeta;
use crate::observe::RequestId;
use crate::route::{Access, Classify, Role};

/// Who a rate limit counts: a credential, or a client address when there is none.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ClientKey {
    Key(Arc<str>),
    Ip(IpAddr),
}

/// One limiter per route class (read, write, admin), or none for a class not limited.
#[derive(Debug)]
pub struct Limiters {
    by_role: [Option<Limiter>; 3],
}

/// A class's limiter and its `RateLimit-Policy` header, which never changes.
#[derive(Debug)]
struct Limiter {
    rate: RateLimiter<ClientKey>,
    policy: Option<HeaderValue>,
}

impl Limiters {
    /// Limiters with these policies for read, write and admin routes, each remembering
    /// at most `max_keys` clients.
    pub fn new(policies: [Option<Policy>; 3], max_keys: usize) -> Limiters {
        Limiters {
            by_role: policies.map(|p| {
                p.map(|p| {
                    let rate = RateLimiter::new(p, max_keys);
                    let policy = policy_header(&rate);
                    Limiter { rate, policy }
                })
            }),
        }
    }

    fn for_role(&self, role: Role) -> Option<&Limiter> {
        self.by_role[role as usize].as_ref()
    }
}

/// `RateLimit-Policy`: every quota of the class, as in draft-ietf-httpapi-ratelimit-headers.
fn policy_header(limiter: &RateLimiter<ClientKey>) -> Option<HeaderValue> {
    let policy = limiter
        .policy()
        .quotas()
        .iter()
        .map(|q| format!("\"{}\";q={};w={}", q.name(), q.count, q.window.as_secs()))
        .collect::<Vec<_>>()
        .join(", ");
    HeaderValue::from_str(&policy).ok()
}

/// Everything the middleware needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct Security {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    service: Arc<str>,
    classify: Classify,
    auth: Authenticator,
    limits: Option<Limiters>,
    audit: Option<AuditLog>,
}

impl Security {
    /// The security of service `service` (its name in the audit log).
    pub fn new(
        service: &str,
        classify: Classify,
        auth: Authenticator,
        limits: Option<Limiters>,
        audit: Option<AuditLog>,
    ) -> Security {
        auth.spawn_watcher();
        Security {
            inner: Arc::new(Inner {
                service: Arc::from(service),
                classify,
                auth,
                limits,
                audit,
            }),
        }
    }

    /// Appends what is queued to the audit log and stops its writer (at shutdown).
    pub async fn close(&self) {
        if let Some(audit) = &self.inner.audit {
            audit.clone().close().await;
        }
    }
}

/// Who made a request, for handlers that want to know (an extension).
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

/// The middleware (`from_fn_with_state(security, security::layer)`).
pub async fn layer(State(sec): State<Security>, mut req: Request, next: Next) -> Response {
    let s = &*sec.inner;
    // Only cheap handles here (an Arc, an enum); the strings are made when a record is.
    let template = req.extensions().get::<MatchedPath>().cloned();
    let route = (s.classify)(req.method(), template.as_ref().map(MatchedPath::as_str));
    let Access::Needs(needed) = route.access else {
        return next.run(req).await;
    };
    let rid = req
        .extensions()
        .get::<RequestId>()
        .map_or_else(String::new, |r| r.0.clone());
    let peer = req.extensions().get::<Arc<ConnMeta>>().map(|m| m.peer.ip());
    let client = peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let audited = route.audited(req.method());
    let method = req.method().clone();
    let resource = if audited {
        resource_of(&mut req).await
    } else {
        String::new()
    };
    let audit = |principal: Option<&Principal>, status: u16| {
        let record = Record {
            at_ms: Record::now_ms(),
            service: s.service.clone(),
            key_id: principal.map_or_else(|| Arc::from("-"), |p| p.id.clone()),
            role: principal.map_or("-", |p| p.role.as_str()),
            client,
            method: method.to_string(),
            route: template
                .as_ref()
                .map_or("<unmatched>", MatchedPath::as_str)
                .to_owned(),
            resource: resource.clone(),
            status,
            outcome: Record::outcome_of(status),
            request_id: rid.clone(),
        };
        async move {
            if let Some(log) = &s.audit {
                log.append(record).await;
            }
        }
    };

    // Protected mode: no credentials, loopback only (the bind is loopback too).
    if s.auth.is_open() && !peer.is_some_and(is_loopback) {
        metrics()
            .http_auth_refusals
            .with_label_values(&["not_loopback"])
            .inc();
        audit(None, 403).await;
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "protected mode: without credentials only loopback clients are served",
            &rid,
        )
        .into_response();
    }
    let principal = match s.auth.authenticate(req.headers()) {
        Ok(p) => p,
        Err(_) => {
            // Failed attempts count against the address, so guessing is rate limited.
            if let Some(refused) = limit(s, needed, &ClientKey::Ip(client), &rid) {
                audit(None, 429).await;
                return refused;
            }
            metrics()
                .http_auth_refusals
                .with_label_values(&["unauthenticated"])
                .inc();
            audit(None, 401).await;
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "missing or invalid credentials: send Authorization: Bearer <API key or token>",
                &rid,
            )
            .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"bulwark\""),
            );
            return r;
        }
    };
    if principal.role < needed {
        metrics()
            .http_auth_refusals
            .with_label_values(&["forbidden"])
            .inc();
        audit(Some(&principal), 403).await;
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            format!(
                "this endpoint needs the {} role; the credential has {}",
                needed.as_str(),
                principal.role.as_str()
            ),
            &rid,
        )
        .into_response();
    }
    let key = if s.auth.is_open() {
        ClientKey::Ip(client)
    } else {
        ClientKey::Key(principal.id.clone())
    };
    let limiter = s.limits.as_ref().and_then(|l| l.for_role(needed));
    let standing = match limiter {
        Some(l) => {
            let st = l.rate.check(&key);
            if !st.allowed {
                audit(Some(&principal), 429).await;
                return refused(l, needed, &st, &rid);
            }
            Some((l, st))
        }
        None => None,
    };
    req.extensions_mut().insert(Caller(principal.clone()));
    let mut response = next.run(req).await;
    if let Some((l, st)) = standing {
        rate_headers(&mut response, l, &st);
    }
    if audited {
        audit(Some(&principal), response.status().as_u16()).await;
    }
    response
}

/// Checks `key` against the class's limit; the 429 when it is over.
fn limit(s: &Inner, class: Role, key: &ClientKey, rid: &str) -> Option<Response> {
    let l = s.limits.as_ref()?.for_role(class)?;
    let st = l.rate.check(key);
    (!st.allowed).then(|| refused(l, class, &st, rid))
}

fn refused(limiter: &Limiter, class: Role, st: &Standing, rid: &str) -> Response {
    metrics()
        .http_rate_limited
        .with_label_values(&[class.as_str()])
        .inc();
    let retry = ceil_secs(st.retry_after).max(1);
    let mut r = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        format!(
            "rate limit of {} requests exceeded; retry in {retry} s",
            class.as_str()
        ),
        rid,
    )
    .with("retry_after_sec", retry)
    .retry(retry)
    .into_response();
    rate_headers(&mut r, limiter, st);
    r
}

/// `RateLimit-Policy` (every quota of the class) and `RateLimit` (the one with the
/// fewest requests left), as in draft-ietf-httpapi-ratelimit-headers.
fn rate_headers(r: &mut Response, limiter: &Limiter, st: &Standing) {
    let current = limiter.rate.policy().quotas().get(st.quota).map(|q| {
        format!(
            "\"{}\";r={};t={}",
            q.name(),
            st.remaining,
            ceil_secs(st.reset)
        )
    });
    let h = r.headers_mut();
    if let Some(policy) = &limiter.policy {
        h.insert("ratelimit-policy", policy.clone());
    }
    if let Some(Ok(v)) = current.map(|c| HeaderValue::from_str(&c)) {
        h.insert("ratelimit", v);
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The resource a request names: its path parameters but `value` (the seed's write URL
/// carries the value in the path), `name=value` joined by commas.
async fn resource_of(req: &mut Request) -> String {
    let (mut parts, body) = std::mem::take(req).into_parts();
    let resource = match RawPathParams::from_request_parts(&mut parts, &()).await {
        Ok(params) => params
            .iter()
            .filter(|(name, _)| *name != "value")
            .map(|(name, v)| format!("{name}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        Err(_) => String::new(),
    };
    *req = Request::from_parts(parts, body);
    resource
}
