//! The HTTP surface (SPEC SHOP-1 … SHOP-6): catalog, purchase, orders, admin, health,
//! metrics, OpenAPI. The only module that knows HTTP, and the one place that maps the
//! shop's outcomes to statuses and error codes (the body,
//! `{"error":{"code","message","request_id"}}`, is `bulwark_http::ApiError`'s).
//!
//! Middleware, in request order: request id (`X-Request-Id` from the client if sane,
//! else generated; echoed) with the `REQUEST_COMPLETED` event and request metrics; then
//! the handler. Purchases pass admission control (`SHOP_MAX_IN_FLIGHT` and the
//! per-product queue bound), beyond which they get 503 `OVERLOADED` with `Retry-After`.
//! Bodies are limited to 64 KiB for purchases and 4 MiB for seeding.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bulwark_http::route::{Role, Route};
use bulwark_http::{ApiError, Observed};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Shop;
use crate::db::DbError;
use crate::inventory::Reserve;
use crate::model::{MAX_ID_LEN, MAX_QUANTITY, Order, Product, PurchaseRequest, Step, reason};
use crate::store;

pub use bulwark_http::RequestId;

/// 400 with `code`.
fn bad_request(code: &'static str, message: impl Into<String>, rid: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message, rid)
}

/// 503: the database is unavailable (the breaker is open or the call failed).
fn db_error(e: &DbError, rid: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
        format!(
            "{e}; nothing was applied unless a retry with the same Idempotency-Key says otherwise"
        ),
        rid,
    )
    .retry(1)
}

/// 404 for a product.
fn product_not_found(id: &str, rid: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "PRODUCT_NOT_FOUND",
        format!("no product {id:?}"),
        rid,
    )
}

/// Builds the router.
pub fn router(shop: Arc<Shop>) -> Router {
    let small = DefaultBodyLimit::max(64 * 1024);
    Router::new()
        .route("/health", get(health))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/products", get(list_products))
        .route("/v1/products/{id}", get(get_product))
        .route("/v1/products/{id}/stock", get(get_stock))
        .route("/v1/orders", post(purchase).layer(small))
        .route("/v1/orders/{id}", get(get_order))
        .route(
            "/v1/admin/seed",
            post(seed).layer(DefaultBodyLimit::max(4 * 1024 * 1024)),
        )
        .route("/v1/admin/products/{id}/audit", get(audit))
        .route("/v1/admin/orders/{id}/retry", post(retry_order))
        .route("/v1/admin/dead-letters", get(dead_letters))
        .route("/v1/admin/reconcile", post(reconcile))
        .route(
            "/v1/admin/payment-provider",
            post(payment_provider).layer(DefaultBodyLimit::max(4096)),
        )
        .route("/v1/admin/replica", get(replica))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(shop)
}

/// What `REQUEST_COMPLETED` and the security layer need to know of the shop.
pub fn observed() -> Observed {
    Observed {
        mode: "SHOP",
        classify,
        // A flash sale is mostly successful reads and sold-out purchases.
        routine: |op, status| op == "health" || status < 300 || status == 409,
    }
}

/// Each route's metric label and who may call it: catalog and order reads need `read`,
/// purchases `write`, everything under `/v1/admin/` `admin`.
pub fn classify(method: &Method, route: Option<&str>) -> Route {
    match (route, method) {
        (Some("/v1/products"), _) => Route::needs("list_products", Role::Read),
        (Some("/v1/products/{id}"), _) => Route::needs("get_product", Role::Read),
        (Some("/v1/products/{id}/stock"), _) => Route::needs("get_stock", Role::Read),
        (Some("/v1/orders"), &Method::POST) => Route::needs("purchase", Role::Write),
        (Some("/v1/orders/{id}"), _) => Route::needs("get_order", Role::Read),
        (Some(p), _) if p.starts_with("/v1/admin/") => Route::needs("admin", Role::Admin),
        (Some("/health" | "/health/ready"), _) => Route::open("health"),
        (Some("/openapi.json"), _) => Route::open("openapi"),
        (Some("/metrics"), _) => Route::needs("metrics", Role::Read),
        _ => Route::needs("other", Role::Read),
    }
}

fn rid(req: &axum::Extension<RequestId>) -> &str {
    &req.0.0
}

async fn not_found(rid: axum::Extension<RequestId>) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "no such endpoint",
        &rid.0.0,
    )
}

async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn ready(State(shop): State<Arc<Shop>>) -> Response {
    let shedding = shop.admission.shedding();
    let up = shop.db.ping().await && !shedding;
    let body = json!({
        "status": if up { "ready" } else { "not_ready" },
        "shedding": shedding,
        "database": shop.db.dialect.as_str(),
        "breaker": shop.db.breaker.snapshot().state,
    });
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        bulwark_obs::metrics::render(),
    )
        .into_response()
}

/// The OpenAPI 3.1 document (`openapi.json` beside this crate's `Cargo.toml`), written by
/// hand so it says what the handlers do, with the HTTP layer's answers added
/// ([`bulwark_http::openapi::complete`]); kept true by the schemathesis test
/// (`tests/openapi.rs`) and the security test's role table.
const DOCUMENT: &str = include_str!("../openapi.json");

/// The completed document, built once: the shop's limits are constants.
static OPENAPI: std::sync::LazyLock<Value> =
    std::sync::LazyLock::new(|| bulwark_http::openapi::embedded(DOCUMENT));

async fn openapi() -> axum::Json<Value> {
    axum::Json(OPENAPI.clone())
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

fn with_cache_header(mut r: Response, hit: bool) -> Response {
    r.headers_mut().insert(
        "x-cache",
        HeaderValue::from_static(if hit { "hit" } else { "miss" }),
    );
    r
}

/// Product details (cache, TTL 300 s) with its stock (cache, TTL 5 s).
async fn get_product(
    State(shop): State<Arc<Shop>>,
    r: axum::Extension<RequestId>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !valid_id(&id) {
        return Err(product_not_found(&id, rid(&r)));
    }
    let d = shop.db.dialect;
    let (details, details_hit) = match shop.cache.details(&id).await {
        Some(p) => (p, true),
        None => {
            let row = shop
                .db
                .replica(async |c| store::product(c, d, &id, false).await)
                .await
                .map_err(|e| db_error(&e, rid(&r)))?
                .ok_or_else(|| product_not_found(&id, rid(&r)))?;
            shop.cache.put_details(&row.product);
            (row.product, false)
        }
    };
    let (stock, stock_hit) = cached_stock(&shop, &id, rid(&r)).await?;
    let body = Product { stock, ..details };
    Ok(with_cache_header(
        axum::Json(body).into_response(),
        details_hit && stock_hit,
    ))
}

/// A product's stock from the cache, else from the replica (then cached); `true` for a
/// cache hit.
async fn cached_stock(shop: &Shop, id: &str, rid: &str) -> Result<(i64, bool), ApiError> {
    if let Some(n) = shop.cache.stock(id).await {
        return Ok((n, true));
    }
    let d = shop.db.dialect;
    let (n, version) = shop
        .db
        .replica(async |c| store::stock(c, d, id).await)
        .await
        .map_err(|e| db_error(&e, rid))?
        .ok_or_else(|| product_not_found(id, rid))?;
    shop.cache.put_stock(id, n, version);
    Ok((n, false))
}

/// Units available (cache, TTL 5 s).
async fn get_stock(
    State(shop): State<Arc<Shop>>,
    r: axum::Extension<RequestId>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !valid_id(&id) {
        return Err(product_not_found(&id, rid(&r)));
    }
    let (n, hit) = cached_stock(&shop, &id, rid(&r)).await?;
    Ok(with_cache_header(
        axum::Json(json!({"product_id": id, "available": n})).into_response(),
        hit,
    ))
}

#[derive(Debug, Deserialize)]
struct Page {
    limit: Option<String>,
    cursor: Option<String>,
}

/// Products in id order, `limit` (1–200, default 50) per page; `next_cursor` continues.
/// Served by the read replica when one is configured (may be stale).
async fn list_products(
    State(shop): State<Arc<Shop>>,
    r: axum::Extension<RequestId>,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    let limit: i64 = match page.limit.as_deref() {
        None => 50,
        Some(s) => s
            .parse()
            .ok()
            .filter(|n| (1..=200).contains(n))
            .ok_or_else(|| bad_request("INVALID_REQUEST", "limit must be 1 to 200", rid(&r)))?,
    };
    if let Some(c) = &page.cursor
        && !valid_id(c)
    {
        return Err(bad_request("INVALID_REQUEST", "malformed cursor", rid(&r)));
    }
    let d = shop.db.dialect;
    let items = shop
        .db
        .replica(async |c| store::list_products(c, d, page.cursor.as_deref(), limit).await)
        .await
        .map_err(|e| db_error(&e, rid(&r)))?
        .into_iter()
        .map(|row| row.product)
        .collect::<Vec<_>>();
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|p| p.id.clone()))
        .flatten();
    let mut resp = axum::Json(json!({"items": items, "next_cursor": next})).into_response();
    resp.headers_mut().insert(
        "x-read-source",
        HeaderValue::from_static(if shop.db.has_replica {
            "replica"
        } else {
            "primary"
        }),
    );
    Ok(resp)
}

/// A purchase.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurchaseBody {
    product_id: String,
    #[serde(deserialize_with = "bulwark_http::input::integer")]
    quantity: i64,
    #[serde(default)]
    customer_id: Option<String>,
}

fn order_body(o: &Order) -> Value {
    json!({
        "order_id": o.id,
        "status": o.step.status().as_str(),
        "product_id": o.product_id,
        "quantity": o.quantity,
        "amount_cents": o.amount_cents,
    })
}

/// The answer for an order in its current state (also the replayed answer).
fn order_response(o: &Order, rid: &str) -> Response {
    match o.step {
        Step::Confirmed => (StatusCode::CREATED, axum::Json(order_body(o))).into_response(),
        Step::Reserved | Step::Compensating => {
            (StatusCode::ACCEPTED, axum::Json(order_body(o))).into_response()
        }
        Step::Cancelled if o.reason.as_deref() == Some(reason::PAYMENT_DECLINED) => ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "PAYMENT_DECLINED",
            "the payment was declined; the order is cancelled and its stock released",
            rid,
        )
        .with("order_id", o.id.clone())
        .with("status", "CANCELLED")
        .into_response(),
        Step::Cancelled => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ORDER_CANCELLED",
            format!(
                "the order was compensated ({}); stock released, nothing charged",
                o.reason.as_deref().unwrap_or("unknown")
            ),
            rid,
        )
        .with("order_id", o.id.clone())
        .with("status", "CANCELLED")
        .into_response(),
        Step::Dead => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ORDER_FAILED",
            "the order's compensation failed and waits for an operator",
            rid,
        )
        .with("order_id", o.id.clone())
        .with("status", "FAILED")
        .into_response(),
    }
}

/// Purchase: reserve + create order, charge, confirm (the saga). 201 when it finished in
/// time, 202 while it runs on.
async fn purchase(
    State(shop): State<Arc<Shop>>,
    r: axum::Extension<RequestId>,
    headers: HeaderMap,
    body: Result<axum::Json<PurchaseBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let rid = rid(&r);
    let strategy = shop.inventory.strategy().as_str();
    let count = |outcome: &str| {
        bulwark_obs::metrics::metrics()
            .shop_purchases
            .with_label_values(&[strategy, outcome])
            .inc();
    };
    let Some(_permit) = shop.admission.try_admit() else {
        count("overloaded");
        return Err(overloaded(shop.config.max_in_flight, rid));
    };
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => {
            return Err(bad_request(
                "INVALID_REQUEST",
                "the Idempotency-Key header is required",
                rid,
            ));
        }
        Some(Ok(k))
            if !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            k.to_string()
        }
        Some(_) => {
            return Err(bad_request(
                "INVALID_REQUEST",
                "Idempotency-Key must be 1 to 128 visible ASCII characters",
                rid,
            ));
        }
    };
    let body = match body {
        Ok(axum::Json(b)) => b,
        // A quantity of the wrong type or out of range (not a missing one).
        Err(JsonRejection::JsonDataError(e)) if e.body_text().contains("quantity: ") => {
            return Err(bad_request(
                "INVALID_QUANTITY",
                format!("quantity must be an integer from 1 to {MAX_QUANTITY}"),
                rid,
            ));
        }
        Err(e) => {
            let status = e.status();
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "PAYLOAD_TOO_LARGE"
            } else {
                "INVALID_REQUEST"
            };
            let status = if status == StatusCode::PAYLOAD_TOO_LARGE {
                status
            } else {
                StatusCode::BAD_REQUEST
            };
            return Err(ApiError::new(status, code, e.body_text(), rid));
        }
    };
    if !(1..=MAX_QUANTITY).contains(&body.quantity) {
        return Err(bad_request(
            "INVALID_QUANTITY",
            format!("quantity must be an integer from 1 to {MAX_QUANTITY}"),
            rid,
        ));
    }
    if !valid_id(&body.product_id) {
        return Err(product_not_found(&body.product_id, rid));
    }
    let customer = body.customer_id.unwrap_or_else(|| "anonymous".into());
    if customer.is_empty() || customer.chars().count() > MAX_ID_LEN {
        return Err(bad_request(
            "INVALID_REQUEST",
            format!("customer_id must be 1 to {MAX_ID_LEN} characters"),
            rid,
        ));
    }
    let req = PurchaseRequest {
        fingerprint: PurchaseRequest::fingerprint_of(&body.product_id, body.quantity, &customer),
        key,
        product_id: body.product_id,
        quantity: body.quantity,
        customer_id: customer,
    };
    let product = req.product_id.clone();
    let reserved = {
        let _sale = shop.sale.read().await;
        shop.inventory.reserve(req).await
    };
    match reserved {
        Reserve::Reserved(order) => {
            count("reserved");
            let Some(done) = shop.saga.spawn(order.clone()) else {
                return Ok(order_response(&order, rid));
            };
            shop.outbox.wake();
            let end = match tokio::time::timeout(shop.config.sync_wait, done).await {
                Ok(Ok(end)) => end,
                _ => order,
            };
            Ok(order_response(&end, rid))
        }
        Reserve::Existing(order) => {
            count("replayed");
            Ok(order_response(&order, rid))
        }
        Reserve::KeyReused => {
            count("key_reused");
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "IDEMPOTENCY_KEY_REUSED",
                "this Idempotency-Key was used with a different request body",
                rid,
            ))
        }
        Reserve::SoldOut => {
            count("sold_out");
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "SOLD_OUT",
                format!("not enough stock of {product:?}; nothing was reserved"),
                rid,
            ))
        }
        Reserve::NotFound => Err(product_not_found(&product, rid)),
        Reserve::Overloaded => {
            count("overloaded");
            Err(overloaded(shop.config.queue_per_product, rid))
        }
        Reserve::Unavailable(e) => {
            count("unavailable");
            Err(db_error(&DbError::Unavailable(e), rid))
        }
    }
}

/// Load shedding (503, as the gateway's): distinct from a client's own rate limit (429).
fn overloaded(limit: usize, rid: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "OVERLOADED",
        format!("more than {limit} purchases waiting; retry later"),
        rid,
    )
    .retry(1)
}

/// An order and its saga state.
async fn get_order(
    State(shop): State<Arc<Shop>>,
    r: axum::Extension<RequestId>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let order = load_order(&shop, &id, rid(&r)).await?;
    Ok(axum::Json(order_detail(&shop, &order)).into_response())
}

async fn load_order(shop: &Shop, id: &str, rid: &str) -> Result<Order, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "ORDER_NOT_FOUND",
            format!("no order {id:?}"),
            rid,
        )
    };
    if !valid_id(id) {
        return Err(not_found());
    }
    let d = shop.db.dialect;
    shop.db
        .primary(async |c| store::order(c, d, id).await)
        .await
        .map_err(|e| db_error(&e, rid))?
        .ok_or_else(not_found)
}

fn order_detail(shop: &Shop, o: &Order) -> Value {
    let mut body = order_body(o);
    body["saga"] = json!({
        "step": o.step.as_str(),
        "state": if o.step.is_terminal() { "terminal" } else if shop.saga.is_active(&o.id) { "running" } else { "waiting" },
        "attempts": o.attempts,
        "reason": o.reason,
        "expires_ms": o.expires_ms,
    });
    body
}

/// A product to seed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedProduct {
    id: String,
    name: String,
    #[serde(default)]
    description: String,
    #[serde(deserialize_with = "bulwark_http::input::integer")]
    price_cents: i64,
    #[serde(deserialize_with = "bulwark_http::input::integer")]
    stock: i64,
}

/// A sale to seed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedBody {
    products: Vec<SeedProduct>,
    #[serde(default)]
    reset: bool,
}

/// Seeds products; with `reset` the whole sale state is wiped first.
async fn seed(
    State(shop): State<Arc<Shop>>,
    r: axum::Extension<RequestId>,
    body: Result<axum::Json<SeedBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let rid = rid(&r);
    let body = body
        .map_err(|e| bad_request("INVALID_REQUEST", e.body_text(), rid))?
        .0;
    if body.products.len() > 10_000 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "at most 10000 products per seed",
            rid,
        )
        .with("limit", 10_000));
    }
    for p in &body.products {
        if !valid_id(&p.id) {
            return Err(bad_request(
                "INVALID_REQUEST",
                format!("product id {:?}: 1 to 128 of [A-Za-z0-9-_.:]", p.id),
                rid,
            ));
        }
        if p.name.chars().count() > 256 || p.description.chars().count() > 4096 {
            return Err(bad_request(
                "INVALID_REQUEST",
                format!(
                    "product {}: name ≤ 256 and description ≤ 4096 characters",
                    p.id
                ),
                rid,
            ));
        }
        if !(0..=1_000_000_000_000).contains(&p.stock)
            || !(0..=1_000_000_000).contains(&p.price_cents)
        {
            return Err(bad_request(
                "INVALID_REQUEST",
                format!("product {}: stock 0–10^12 and price_cents 0–10^9", p.id),
                rid,
            ));
        }
    }
    let products: Vec<(Product, i64)> = body
        .products
        .into_iter()
        .map(|p| {
            (
                Product {
                    id: p.id,
                    name: p.name,
                    description: p.description,
                    price_cents: p.price_cents,
                    stock: p.stock,
                },
                p.stock,
            )
        })
        .collect();
    // No purchase runs while the sale changes; writers restart with fresh counters.
    let _sale = shop.sale.write().await;
    if body.reset && !shop.saga.idle(shop.config.shutdown_timeout).await {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "SAGAS_RUNNING",
            "sagas of the current sale are still running; retry when they finished",
            rid,
        )
        .retry(1));
    }
    shop.inventory.stop_writers();
    let d = shop.db.dialect;
    let reset = body.reset;
    shop.db
        .tx(async |c| store::seed(c, d, &products, reset).await)
        .await
        .map_err(|e| db_error(&e, rid))?;
    if reset {
        shop.cache.clear();
    }
    let stocks: Vec<(String, i64)> = products.iter().map(|(p, s)| (p.id.clone(), *s)).collect();
    for (p, _) in &products {
        shop.cache.put_details(p);
        // A seeded row starts again at version 0.
        shop.cache.replace_stock(&p.id, p.stock, 0);
    }
    shop.inventory
        .load_redis(&stocks)
        .await
        .map_err(|e| db_error(&DbError::Unavailable(format!("redis: {e}")), rid))?;
    Ok(axum::Json(json!({"seeded": products.len()})).into_response())
}

/// The invariant check of one product (the bench's end-of-run verdict).
async fn audit(
    State(shop): State<Arc<Shop>>,
    r: axum::Extension<RequestId>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rid = rid(&r);
    if !valid_id(&id) {
        return Err(product_not_found(&id, rid));
    }
    let cached = shop.cache.peek_stock(&id);
    let a = crate::reconcile::audit(&shop.db, &id)
        .await
        .map_err(|e| db_error(&e, rid))?
        .ok_or_else(|| product_not_found(&id, rid))?;
    let report = crate::reconcile::Report::of(&id, &a, cached);
    let redis_stock = shop.inventory.redis_stock(&id).await;
    let count = |s: &str| a.orders.get(s).copied().unwrap_or(0);
    let inconsistent = bulwark_obs::metrics::metrics()
        .shop_inventory_inconsistency
        .with_label_values(&[&id])
        .get()
        == 1;
    Ok(axum::Json(json!({
        "product_id": id,
        "initial_stock": a.initial_stock,
        "db_stock": a.db_stock,
        "reserved": a.reserved,
        "sold": a.sold,
        "db_version": a.version,
        "cache_stock": report.cache_stock,
        "cache_version": report.cache_version,
        "redis_stock": redis_stock,
        "orders": {
            "CONFIRMED": count("CONFIRMED"),
            "CANCELLED": count("CANCELLED"),
            "PENDING": count("PENDING"),
            "FAILED": count("FAILED"),
        },
        "payments": {"captured": a.captured, "refunded": a.refunded},
        "invariants": {
            "no_oversell": a.sold <= a.initial_stock,
            "stock_conserved": report.stock_conserved,
            "all_terminal": count("PENDING") == 0,
            "paid_orders_settled": a.unsettled_captures == 0,
            "cache_matches_db": report.cache_matches_db,
        },
        "conditions": if inconsistent { vec!["InventoryInconsistency"] } else { Vec::new() },
    }))
    .into_response())
}

/// Operator retry of a dead-lettered order: its compensation runs again.
async fn retry_order(
    State(shop): State<Arc<Shop>>,
    r: axum::Extension<RequestId>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rid = rid(&r);
    let order = load_order(&shop, &id, rid).await?;
    match shop.saga.revive(&order.id).await {
        Ok(Some((true, o))) => {
            Ok((StatusCode::ACCEPTED, axum::Json(order_detail(&shop, &o))).into_response())
        }
        Ok(Some((false, o))) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "NOT_DEAD_LETTERED",
            format!(
                "order is {}, only FAILED orders can be retried",
                o.step.status().as_str()
            ),
            rid,
        )),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "ORDER_NOT_FOUND",
            "no such order",
            rid,
        )),
        Err(e) => Err(db_error(&e, rid)),
    }
}

/// Dead-lettered orders (status `FAILED`), for operators.
async fn dead_letters(
    State(shop): State<Arc<Shop>>,
    r: axum::Extension<RequestId>,
) -> Result<Response, ApiError> {
    let d = shop.db.dialect;
    let ids = shop
        .db
        .primary(async |c| store::failed_orders(c, d, 1000).await)
        .await
        .map_err(|e| db_error(&e, rid(&r)))?;
    let items: Vec<Value> = ids.iter().map(|o| order_detail(&shop, o)).collect();
    Ok(axum::Json(json!({"items": items})).into_response())
}

/// Runs reconciliation now (it also runs every sweep interval).
async fn reconcile(
    State(shop): State<Arc<Shop>>,
    r: axum::Extension<RequestId>,
) -> Result<Response, ApiError> {
    let reports = shop.reconcile().await.map_err(|e| db_error(&e, rid(&r)))?;
    Ok(axum::Json(json!({"products": reports})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderSwitch {
    available: bool,
}

/// Fault injection: makes the payment simulator reachable or not.
async fn payment_provider(
    State(shop): State<Arc<Shop>>,
    r: axum::Extension<RequestId>,
    body: Result<axum::Json<ProviderSwitch>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = body
        .map_err(|e| bad_request("INVALID_REQUEST", e.body_text(), rid(&r)))?
        .0;
    shop.saga.payments().set_available(body.available);
    Ok(axum::Json(json!({"available": body.available})).into_response())
}

/// The read replica's replay lag (PostgreSQL), for showing the read path's staleness.
async fn replica(
    State(shop): State<Arc<Shop>>,
    r: axum::Extension<RequestId>,
) -> Result<Response, ApiError> {
    if !shop.db.has_replica {
        return Ok(axum::Json(json!({"configured": false})).into_response());
    }
    let d = shop.db.dialect;
    let lag = shop
        .db
        .replica(async |c| store::replica_lag_ms(c, d).await)
        .await
        .map_err(|e| db_error(&e, rid(&r)))?;
    Ok(axum::Json(json!({"configured": true, "lag_ms": lag})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_parses_and_states_the_models_limits() {
        let doc = &*OPENAPI;
        assert_eq!(doc["openapi"], "3.1.0");
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["Id"]["pattern"],
            format!("^[A-Za-z0-9._:-]{{1,{MAX_ID_LEN}}}$")
        );
        let purchase = &schemas["PurchaseBody"]["properties"];
        assert_eq!(purchase["quantity"]["maximum"], MAX_QUANTITY);
        assert_eq!(purchase["customer_id"]["maxLength"], MAX_ID_LEN);
        // The pattern accepts exactly what the handlers accept.
        for (id, ok) in [
            ("p-1_a.b:c", true),
            ("", false),
            ("a b", false),
            ("é", false),
        ] {
            assert_eq!(valid_id(id), ok, "{id:?}");
        }
        // The HTTP layer's answers are on every operation.
        let order = &doc["paths"]["/v1/orders"]["post"]["responses"];
        assert_eq!(
            order["429"]["$ref"],
            "#/components/responses/TooManyRequests"
        );
        assert_eq!(order["413"]["$ref"], "#/components/responses/TooLarge");
    }
}
