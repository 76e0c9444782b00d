//! HTTP errors: statuses come from the error's kind.

use super::*;

/// An HTTP error: status plus a JSON body naming the problem.
pub(super) struct ApiError(pub(super) StatusCode, pub(super) Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

pub(super) fn err(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
    ApiError(
        status,
        json!({"ok": false, "status": "error", "error": message.into(), "code": code}),
    )
}

/// The HTTP status of an error, from its kind.
pub(super) fn http_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid | ErrorKind::Config => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::NoResponders | ErrorKind::Timeout | ErrorKind::Unavailable => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        err(http_status(e.kind()), &e.code(), e.reason())
    }
}

pub(super) type ApiResult = Result<Response, ApiError>;

/// Nobody answering a node's subject means there is no such node (404).
pub(super) fn unknown_node_if_silent(e: Error, node: &str) -> ApiError {
    if e.kind() == ErrorKind::NoResponders {
        err(
            StatusCode::NOT_FOUND,
            "unknown_node",
            format!("unknown node {node:?}"),
        )
    } else {
        ApiError::from(e)
    }
}

pub(super) fn ok(v: Value) -> ApiResult {
    Ok(Json(v).into_response())
}

pub(super) fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    parse_object(body).map_err(ApiError::from)
}
