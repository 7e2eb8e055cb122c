//! What every Bulwark HTTP service shares (the CAP gateway, the commerce service): the
//! structured error body `{"error":{"code","message","request_id",…}}`, the request
//! middleware (correlation id, `REQUEST_COMPLETED`) and an HTTP/1.1 server loop for
//! services that hold thousands of keep-alive connections. Each service
//! keeps its own mapping from its errors to [`ApiError`]s.

#![forbid(unsafe_code)]

mod error;
mod observe;
mod serve;

pub use error::ApiError;
pub use observe::{Observed, RequestId, observe};
pub use serve::serve_http1;
