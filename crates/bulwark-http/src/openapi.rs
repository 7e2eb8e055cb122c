//! What the shared HTTP layer contributes to every service's OpenAPI document: the error
//! envelope's schema, the bearer scheme, and the answers the stack itself gives on any
//! route (the guard's 400/408/413/414/431, authentication's 401/403, the rate limiter's
//! 429). A service writes its own operations and the answers only it gives; [`complete`]
//! adds the rest, so the layer's answers are described in one place.

use serde_json::{Map, Value, json};

/// The statuses the stack may answer on any route, each with its response's name under
/// `#/components/responses/`.
const LAYER_RESPONSES: &[(&str, &str, &str)] = &[
    (
        "400",
        "HttpBadRequest",
        "MALFORMED_REQUEST, BAD_CONTENT_LENGTH or BAD_TRANSFER_ENCODING, from the HTTP layer.",
    ),
    (
        "401",
        "Unauthenticated",
        "UNAUTHENTICATED: no valid credential (the same answer whether or not a key exists).",
    ),
    (
        "403",
        "Forbidden",
        "FORBIDDEN: the credential's role is too small.",
    ),
    (
        "408",
        "RequestTimeout",
        "REQUEST_TIMEOUT: the request head or body did not arrive in time.",
    ),
    (
        "413",
        "HttpBodyTooLarge",
        "BODY_REJECTED: the body is over the route's limit (with \"limit\").",
    ),
    ("414", "UriTooLong", "URI_TOO_LONG (MAX_URI_BYTES)."),
    (
        "429",
        "TooManyRequests",
        "RATE_LIMITED (with Retry-After, RateLimit and RateLimit-Policy) or TOO_MANY_CONNECTIONS.",
    ),
    (
        "431",
        "HeadersTooLarge",
        "HEADERS_TOO_LARGE (MAX_HEAD_BYTES).",
    ),
];

/// The error envelope, `{"error":{"code","message","request_id"}}` (extra fields allowed).
fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["code", "message", "request_id"],
            "properties": {
                "code": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"},
                "message": {"type": "string"},
                "request_id": {"type": "string"}
            }
        }}
    })
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn object(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    }
}

/// A service's embedded document (`include_str!` of its `openapi.json`), completed. A
/// document that does not parse comes out as `null`; each service's unit test holds its
/// own to parsing.
pub fn embedded(text: &str) -> Value {
    let mut doc: Value = serde_json::from_str(text).unwrap_or_default();
    complete(&mut doc);
    doc
}

/// Adds the layer's parts to `doc`: the `Error` schema, the `bearer` scheme (optional:
/// a service without credentials serves loopback without them), the layer's responses,
/// and on every operation each layer status it does not describe itself. What the
/// document already has is kept.
pub fn complete(doc: &mut Value) {
    let root = object(doc);
    root.entry("security")
        .or_insert_with(|| json!([{"bearer": []}, {}]));
    let components = object(root.entry("components").or_insert(Value::Null));
    object(components.entry("schemas").or_insert(Value::Null))
        .entry("Error")
        .or_insert_with(error_schema);
    object(components.entry("securitySchemes").or_insert(Value::Null))
        .entry("bearer")
        .or_insert_with(|| {
            json!({"type": "http", "scheme": "bearer",
                   "description": "An API key (roles read < write < admin) or a JWT."})
        });
    let responses = object(components.entry("responses").or_insert(Value::Null));
    for (_, name, description) in LAYER_RESPONSES {
        responses
            .entry(*name)
            .or_insert_with(|| error_response(description));
    }
    if let Some(Value::Object(limited)) = responses.get_mut("TooManyRequests") {
        limited
            .entry("headers")
            .or_insert_with(|| json!({"Retry-After": {"schema": {"type": "integer"}}}));
    }
    let Some(Value::Object(paths)) = root.get_mut("paths") else {
        return;
    };
    for item in paths.values_mut() {
        let Value::Object(item) = item else { continue };
        for (method, op) in item.iter_mut() {
            if method == "parameters" {
                continue;
            }
            let answers = object(object(op).entry("responses").or_insert(Value::Null));
            for (status, name, _) in LAYER_RESPONSES {
                answers
                    .entry(*status)
                    .or_insert_with(|| json!({"$ref": format!("#/components/responses/{name}")}));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_gets_the_layer_answers_and_keeps_its_own() {
        let mut doc = json!({
            "openapi": "3.1.0",
            "paths": {"/x": {
                "parameters": [],
                "get": {"responses": {"200": {"description": "ok"},
                                      "400": {"$ref": "#/components/responses/Mine"}}},
                "post": {}
            }},
            "components": {"responses": {"Mine": {"description": "mine"}}}
        });
        complete(&mut doc);
        let get = &doc["paths"]["/x"]["get"]["responses"];
        assert_eq!(get["400"]["$ref"], "#/components/responses/Mine");
        assert_eq!(get["401"]["$ref"], "#/components/responses/Unauthenticated");
        assert_eq!(get["200"]["description"], "ok");
        let post = &doc["paths"]["/x"]["post"]["responses"];
        assert_eq!(post["400"]["$ref"], "#/components/responses/HttpBadRequest");
        assert_eq!(post.as_object().map(Map::len), Some(LAYER_RESPONSES.len()));
        // Every reference resolves.
        for (_, name, _) in LAYER_RESPONSES {
            let r = &doc["components"]["responses"][name];
            assert_eq!(
                r["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/Error"
            );
        }
        assert!(
            doc["components"]["responses"]["TooManyRequests"]["headers"]["Retry-After"].is_object()
        );
        assert_eq!(
            doc["components"]["schemas"]["Error"]["required"][0],
            "error"
        );
        assert_eq!(doc["security"][1], json!({}));
    }
}
