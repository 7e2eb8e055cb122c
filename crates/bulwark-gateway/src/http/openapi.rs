//! `GET /openapi.json`: the OpenAPI 3.1 document of every route (`openapi.json` beside
//! this crate's `Cargo.toml`), with this gateway's limits filled in and the HTTP layer's
//! answers added ([`bulwark_http::openapi::complete`]). Written by hand, so
//! it can say what the code does (`oneOf` bodies, every status the HTTP layer answers, the
//! consistency parameter as query and header); kept true by the schemathesis test
//! (`tests/openapi.rs`), which runs every check against a live gateway, and by the
//! security test, which checks every documented operation against its role table.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::Value;

use super::AppState;

/// The document as written.
const DOCUMENT: &str = include_str!("../../openapi.json");

/// URI bytes kept for the rest of a seed write's URI (the route, the query).
const URI_OVERHEAD: usize = 128;

/// The longest value `POST /write/{key}/{value}` takes, in characters: what fits in
/// `MAX_URI_BYTES` beside the longest key whatever the characters (a key byte is at most
/// 3 URI bytes once percent-encoded, a value character at most 12), and at most
/// `MAX_VALUE_BYTES`. A longer value is 413 `VALUE_TOO_LARGE`, so the limit is exact.
pub fn path_value_chars(max_key_bytes: usize, max_value_bytes: usize, max_uri: usize) -> usize {
    (max_uri.saturating_sub(URI_OVERHEAD + 3 * max_key_bytes) / 12).min(max_value_bytes)
}

/// The document with the limits in. JSON Schema counts characters: keys and values are
/// limited in bytes (`MAX_KEY_BYTES`, `MAX_VALUE_BYTES`), which are the character counts
/// of ASCII text; the descriptions say so. `n` (replicas per key) bounds `r` and `w`.
pub fn document_for(
    max_key_bytes: usize,
    max_value_bytes: usize,
    max_uri: usize,
    n: usize,
) -> Value {
    let mut doc = bulwark_http::openapi::embedded(DOCUMENT);
    let counts: Vec<String> = (1..=n).map(|k| k.to_string()).collect();
    if let Some(v) = doc.pointer_mut("/components/schemas/QuorumSize/pattern") {
        *v = format!("^({}|one|quorum|all)$", counts.join("|")).into();
    }
    let mut set = |pointer: &str, n: usize| {
        if let Some(v) = doc.pointer_mut(pointer) {
            *v = n.into();
        }
    };
    set("/components/schemas/Key/maxLength", max_key_bytes);
    set(
        "/components/schemas/PathValue/maxLength",
        path_value_chars(max_key_bytes, max_value_bytes, max_uri),
    );
    set(
        "/components/schemas/PutBody/oneOf/0/properties/value/maxLength",
        max_value_bytes,
    );
    set(
        "/components/schemas/PutBody/oneOf/1/properties/value_base64/maxLength",
        max_value_bytes.div_ceil(3) * 4,
    );
    doc
}

/// The document (built per call: it is small, rarely fetched, and each gateway of a
/// process may have its own limits).
pub async fn document(State(state): State<Arc<AppState>>) -> Json<Value> {
    let config = &state.engine.config;
    Json(document_for(
        config.limits.max_key_bytes,
        config.limits.max_value_bytes,
        config.http.serve.guard.max_uri,
        state.engine.routing.replication_factor(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_parses_and_takes_the_limits() {
        let doc = document_for(1024, 1 << 20, 16 * 1024, 3);
        assert_eq!(doc["openapi"], "3.1.0");
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["Key"]["maxLength"], 1024);
        // A 1024-byte key takes at most 3072 URI bytes; the value gets the rest.
        assert_eq!(
            schemas["PathValue"]["maxLength"],
            (16 * 1024 - URI_OVERHEAD - 3072) / 12
        );
        assert_eq!(
            schemas["PutBody"]["oneOf"][1]["properties"]["value_base64"]["maxLength"],
            (1usize << 20).div_ceil(3) * 4
        );
        assert_eq!(path_value_chars(8192, 1 << 20, 16 * 1024), 0);
        assert_eq!(schemas["QuorumSize"]["pattern"], "^(1|2|3|one|quorum|all)$");
        // The gateway's own 400 and the layer's 401 are on every operation.
        let put = &doc["paths"]["/v1/kv/{key}"]["put"]["responses"];
        assert_eq!(put["400"]["$ref"], "#/components/responses/BadRequest");
        assert_eq!(put["401"]["$ref"], "#/components/responses/Unauthenticated");
    }
}
