//! API-key authentication: which routes need the key, how a request presents it, and a
//! comparison whose time does not depend on where a guess goes wrong.
//!
//! With a key set (`api_key` or `api_key_file`):
//! - `/health` and `/health/ready` are always open (probes carry no secrets);
//! - `/metrics` needs the key only with `metrics_require_key`;
//! - everything else under `/v1/`, `/tokenize`, `/detokenize` needs it, the admin routes
//!   (`POST /v1/models/{id}/load|unload`) included.
//!
//! Without a key the API is open, but the admin routes only while the server listens on a
//! loopback address: on any other address they answer 403 — loading and unloading models
//! must not be open to the network by default.
//!
//! A request presents the key as `Authorization: Bearer KEY` (the scheme in any case, as
//! RFC 7235 allows; what OpenAI's SDKs send) or as `x-api-key: KEY`.

use crate::api::ApiError;

use super::http::HttpRequest;
use super::State;

/// What a route asks of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Open,
    /// The key, when one is set.
    Key,
    /// The key when one is set; without one, a loopback listen address.
    Admin,
}

fn access(st: &State, route: &str, path: &str) -> Access {
    match route {
        "/health" | "/health/ready" => Access::Open,
        "/metrics" if st.cfg().metrics_require_key => Access::Key,
        "/metrics" => Access::Open,
        "/v1/models/{id}/load" | "/v1/models/{id}/unload" => Access::Admin,
        // Unknown paths under /v1/ too: a 404 there would tell a caller without the key
        // which routes exist.
        _ if path.starts_with("/v1/") || route != "other" => Access::Key,
        _ => Access::Open,
    }
}

/// Checks a request against its route's access rule: 401 (key missing or wrong), 403 (an
/// admin route on a non-loopback address without a key), else `Ok`.
pub(crate) fn check(st: &State, req: &HttpRequest, route: &str) -> Result<(), ApiError> {
    let rule = access(st, route, req.path());
    match (&st.cfg().api_key, rule) {
        (_, Access::Open) => Ok(()),
        (Some(key), _) => match presented_key(req) {
            Some(given) if same_secret(given.as_bytes(), key.as_bytes()) => Ok(()),
            _ => Err(ApiError::unauthorized()),
        },
        (None, Access::Key) => Ok(()),
        (None, Access::Admin) if st.http.local_addr().ip().is_loopback() => Ok(()),
        (None, Access::Admin) => Err(ApiError::admin_needs_key()),
    }
}

/// The key a request presents: `Authorization: Bearer KEY`, else `x-api-key: KEY`.
fn presented_key(req: &HttpRequest) -> Option<&str> {
    let bearer = req.header("Authorization").and_then(|v| {
        let (scheme, key) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
    });
    bearer.or_else(|| req.header("x-api-key").map(str::trim))
}

/// Whether `given` equals `key`, in time that depends only on the length of `given` (which
/// the caller chose): every byte is compared, with no exit at the first difference, and a
/// length mismatch only sets the result. `black_box` keeps the compiler from turning the
/// loop back into an early exit.
pub(crate) fn same_secret(given: &[u8], key: &[u8]) -> bool {
    if key.is_empty() {
        return false;
    }
    let mut diff = u8::from(given.len() != key.len());
    for (i, &g) in given.iter().enumerate() {
        diff |= std::hint::black_box(g ^ key[i % key.len()]);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_by_every_byte_and_length() {
        assert!(same_secret(b"sesame", b"sesame"));
        assert!(!same_secret(b"sesamE", b"sesame"));
        assert!(!same_secret(b"Sesame", b"sesame"));
        assert!(!same_secret(b"sesam", b"sesame"), "a prefix");
        assert!(!same_secret(b"sesamesesame", b"sesame"), "a repetition");
        assert!(!same_secret(b"", b"sesame"));
        assert!(!same_secret(b"", b""), "an empty key matches nothing");
    }
}
