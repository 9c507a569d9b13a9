//! OpenAI-style errors: an HTTP status plus `{"error": {"message", "type", "param", "code"}}`.

use serde_json::json;

/// An error answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `server_error`...
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header (503s).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, code: &'static str, message: String) -> ApiError {
        ApiError {
            status,
            message,
            kind,
            param: None,
            code: Some(code),
            retry_after_s: None,
        }
    }

    /// 400 for a bad value of `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param.to_string()),
            ..ApiError::new(
                400,
                "invalid_request_error",
                "invalid_value",
                message.into(),
            )
        }
    }

    /// 400 for a field of the wrong JSON type.
    pub fn wrong_type(param: &str, expected: &str) -> ApiError {
        ApiError {
            code: Some("invalid_type"),
            ..ApiError::invalid(param, format!("'{param}' must be {expected}"))
        }
    }

    pub fn missing(param: &str) -> ApiError {
        ApiError {
            code: Some("missing_required_parameter"),
            ..ApiError::invalid(param, format!("'{param}' is required"))
        }
    }

    /// 400 for a body that is not JSON (or not an object).
    pub fn bad_json(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "invalid_request_error", "invalid_json", message.into())
    }

    pub fn model_not_found(model: &str) -> ApiError {
        ApiError {
            param: Some("model".into()),
            ..ApiError::new(
                404,
                "invalid_request_error",
                "model_not_found",
                format!("the model '{model}' does not exist"),
            )
        }
    }

    pub fn not_found(path: &str) -> ApiError {
        ApiError::new(
            404,
            "invalid_request_error",
            "not_found",
            format!("no route for {path}"),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> ApiError {
        ApiError::new(
            405,
            "invalid_request_error",
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )
    }

    pub fn body_too_large(limit: usize) -> ApiError {
        ApiError::new(
            413,
            "invalid_request_error",
            "body_too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    }

    /// 408: the body did not arrive within the request read timeout.
    pub fn read_timeout(timeout_ms: u64) -> ApiError {
        ApiError::new(
            408,
            "invalid_request_error",
            "request_timeout",
            format!("the request did not arrive within {timeout_ms} ms"),
        )
    }

    /// 401, as OpenAI answers a missing or wrong key.
    pub fn unauthorized() -> ApiError {
        ApiError::new(
            401,
            "invalid_request_error",
            "invalid_api_key",
            "a valid API key is required: send 'Authorization: Bearer KEY'".into(),
        )
    }

    /// 403: an admin route on a server that has no API key and listens beyond loopback.
    pub fn admin_needs_key() -> ApiError {
        ApiError::new(
            403,
            "invalid_request_error",
            "admin_requires_key",
            "admin routes need an API key when the server listens on a non-loopback \
             address: start it with --api-key or --api-key-file"
                .into(),
        )
    }

    /// 503 with Retry-After: full queue, concurrency cap, model still loading, shutting down.
    pub fn unavailable(message: impl Into<String>, retry_after_s: u64) -> ApiError {
        ApiError {
            retry_after_s: Some(retry_after_s),
            ..ApiError::new(503, "server_error", "service_unavailable", message.into())
        }
    }

    /// 504: the request ran past its deadline (`request_deadline_ms`) and was cancelled.
    pub fn deadline_exceeded(deadline_ms: u64) -> ApiError {
        ApiError::new(
            504,
            "timeout",
            "deadline_exceeded",
            format!("the request ran past its deadline of {deadline_ms} ms and was cancelled"),
        )
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "server_error", "internal_error", message.into())
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}
