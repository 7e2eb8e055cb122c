//! `GET /openapi.json`: the OpenAPI document of the `/v1` API (data and admin), generated from the
//! handlers' annotations so it cannot drift from the code.

use axum::Json;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Bulwark CAP service",
        description = "Key-value gateway over N replicas with per-request consistency (AP, CP, quorum). Errors are {\"error\":{\"code\",\"message\",\"request_id\"}}."
    ),
    paths(super::v1::get, super::v1::put, super::v1::delete, super::anti_entropy),
    components(schemas(super::v1::PutBody))
)]
struct ApiDoc;

/// The document.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
