//! What every Bulwark HTTP service shares (the CAP gateway, the commerce service): the
//! structured error body `{"error":{"code","message","request_id",…}}` and an HTTP/1.1
//! server loop for services that hold thousands of keep-alive connections. Each service
//! keeps its own mapping from its errors to [`ApiError`]s.

#![forbid(unsafe_code)]

mod error;
mod serve;

pub use error::ApiError;
pub use serve::serve_http1;
