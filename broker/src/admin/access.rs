//! Who may call what: the admin token, and the content-type rule that keeps
//! web pages from making a browser call the API.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The admin token, if one is configured.
#[derive(Clone)]
pub struct Token(Option<Arc<str>>);

impl Token {
    pub fn new(token: Option<String>) -> Token {
        Token(token.map(Arc::from))
    }

    /// Whether `presented` is the token. The comparison takes as long for
    /// a near miss as for a far one, so timing does not reveal the token.
    fn accepts(&self, presented: &str) -> bool {
        let Some(token) = &self.0 else {
            return false;
        };
        let (a, b) = (token.as_bytes(), presented.as_bytes());
        let differences = a
            .iter()
            .zip(b)
            .fold(a.len() ^ b.len(), |acc, (x, y)| acc | usize::from(x ^ y));
        differences == 0
    }
}

/// The bearer token of `Authorization: Bearer <token>`, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Lets a call through only with the admin token: 403 while none is
/// configured (the calls are off), 401 without the right one.
pub async fn require_token(State(token): State<Token>, request: Request, next: Next) -> Response {
    if token.0.is_none() {
        return (
            StatusCode::FORBIDDEN,
            "this call needs the admin token, and none is configured: set admin.token_file or STARLING_ADMIN_TOKEN\n",
        )
            .into_response();
    }
    match bearer(request.headers()) {
        Some(presented) if token.accepts(presented) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "missing or wrong admin token (Authorization: Bearer <token>)\n",
        )
            .into_response(),
    }
}

/// Refuses a POST whose body is not declared JSON (415). A web page can
/// make a browser send a form or plain-text POST anywhere without asking;
/// a JSON one needs a CORS preflight, which this API never grants.
pub async fn refuse_non_json_posts(request: Request, next: Next) -> Response {
    if request.method() == Method::POST && !declares_json(request.headers()) {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST needs Content-Type: application/json\n",
        )
            .into_response();
    }
    next.run(request).await
}

fn declares_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn only_the_whole_token_is_accepted() {
        let token = Token::new(Some("0123456789abcdef".into()));
        assert!(token.accepts("0123456789abcdef"));
        assert!(!token.accepts("0123456789abcde"));
        assert!(!token.accepts("0123456789abcdefg"));
        assert!(!token.accepts("0123456789abcdeF"));
        assert!(!token.accepts(""));
        assert!(!Token::new(None).accepts(""));
    }

    #[test]
    fn bearer_and_json_are_read_from_the_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        assert!(!declares_json(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(declares_json(&headers));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!declares_json(&headers));
    }
}
