//! Who may read and who may act: the Host check against DNS rebinding, the token, CSRF and
//! origin checks on actions, and read-only mode.

use std::net::IpAddr;

use axum::http::{HeaderMap, header};

use crate::error::WebError;

/// The header an API client sends the CSRF token in (a custom header cannot be sent
/// cross-origin without a CORS preflight, which the dashboard never grants).
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// The dashboard's access rules, fixed for the life of the process.
#[derive(Debug, Clone)]
pub(crate) struct AccessPolicy {
    /// The token actions need; `None` on a loopback-only dashboard.
    pub(crate) token: Option<String>,
    /// Actions are hidden and refused.
    pub(crate) read_only: bool,
    /// A random per-process secret every action form and API call must echo back.
    pub(crate) csrf_token: String,
}

/// How an action request proves who sent it.
pub(crate) struct ActionCredentials<'a> {
    /// The CSRF token from the form field or the `X-CSRF-Token` header.
    pub(crate) csrf_token: Option<&'a str>,
    /// The dashboard token from the form field (the API uses `Authorization: Bearer`).
    pub(crate) token: Option<&'a str>,
}

impl AccessPolicy {
    /// A policy with a fresh CSRF secret (122 random bits of a v4 UUID).
    pub(crate) fn new(token: Option<String>, read_only: bool) -> Self {
        AccessPolicy {
            token,
            read_only,
            csrf_token: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// Every request: without a token the dashboard answers only to loopback host names, so
    /// a page on another site cannot reach it by rebinding its own name to 127.0.0.1.
    pub(crate) fn check_host(&self, headers: &HeaderMap) -> Result<(), WebError> {
        if self.token.is_some() {
            return Ok(());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .ok_or(WebError::Forbidden("the request has no Host header"))?;
        if is_loopback_host(host) {
            Ok(())
        } else {
            Err(WebError::Forbidden(
                "this dashboard has no token and answers only to localhost, 127.0.0.1 or [::1]",
            ))
        }
    }

    /// An action (retry, cancel, pause, resume): not read-only, same origin, the token when
    /// one is configured, and the CSRF token unless the token came in an `Authorization`
    /// header (which a browser never attaches on its own).
    pub(crate) fn check_action(
        &self,
        headers: &HeaderMap,
        credentials: &ActionCredentials<'_>,
    ) -> Result<(), WebError> {
        if self.read_only {
            return Err(WebError::Forbidden("the dashboard is read-only"));
        }
        check_same_origin(headers)?;
        let bearer = bearer_token(headers);
        if let Some(expected) = &self.token {
            let given = bearer.or(credentials.token).unwrap_or_default();
            if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                return Err(WebError::Unauthorized);
            }
        }
        let header_authenticated = self.token.is_some() && bearer.is_some();
        if !header_authenticated {
            let given = credentials
                .csrf_token
                .or_else(|| headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()))
                .unwrap_or_default();
            if !constant_time_eq(given.as_bytes(), self.csrf_token.as_bytes()) {
                return Err(WebError::Forbidden("missing or wrong CSRF token"));
            }
        }
        Ok(())
    }
}

/// `localhost`, `*.localhost`, a 127.0.0.0/8 address or `[::1]`, with or without a port.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(address, _)| address)
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    let name = name.to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A browser names the page that sent a POST in `Origin` (and `Sec-Fetch-Site`); refuse any
/// other origin than the dashboard's own. Clients that send neither (scripts) pass: they
/// still need the CSRF token or the bearer token.
fn check_same_origin(headers: &HeaderMap) -> Result<(), WebError> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err(WebError::Forbidden("cross-site request"));
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_authority = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.split_once("://"))
        .map(|(_, authority)| authority);
    match (origin_authority, host) {
        (Some(authority), Some(host)) if authority.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(WebError::Forbidden(
            "the request's Origin is not this dashboard",
        )),
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Compares secrets without an early exit, so response timing does not reveal how many
/// leading bytes of a guess were right.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = given.len() ^ expected.len();
    for (index, byte) in expected.iter().enumerate() {
        difference |= usize::from(byte ^ given.get(index).copied().unwrap_or(0));
    }
    difference == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised_with_and_without_ports() {
        for host in [
            "localhost",
            "localhost:8080",
            "LOCALHOST:1",
            "dash.localhost:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(host), "{host} should be loopback");
        }
        for host in [
            "example.com",
            "evil.com:8080",
            "localhost.evil.com",
            "10.0.0.1:8080",
            "[2001:db8::1]:8080",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host} should not be loopback");
        }
    }

    #[test]
    fn constant_time_eq_needs_equal_length_and_bytes() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret1", b"secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
