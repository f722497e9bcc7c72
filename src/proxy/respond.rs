//! The one writer of the responses tollgate makes itself.
//!
//! Every [`Reply`] goes out through [`fn@write`], so every one of them carries the same headers:
//! `content-type` (for a body), `content-length`, `cache-control: no-store`,
//! `x-content-type-options: nosniff`, the request id, `retry-after` on a 503, a strict content
//! security policy on an HTML page, and the reply's cookies. A request whose body tollgate did
//! not read (an upload refused before any upstream saw it) is answered with the connection
//! closed, rather than reading an unwanted upload just to keep the connection alive; a `HEAD`
//! gets the head only.

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::request_id;
use crate::reply::Reply;

/// Writes `reply` as the whole response to the request in `session`.
pub(crate) async fn write(
    session: &mut Session,
    reply: &Reply,
    request_id: &str,
    hsts: Option<&http::HeaderValue>,
) -> pingora::Result<()> {
    let (content_type, body) = reply.render(request_id);
    let extra = reply.headers().len() + reply.set_cookies().len();
    let mut resp = ResponseHeader::build(reply.status(), Some(8 + extra))?;
    if let Some(ct) = content_type {
        resp.insert_header("content-type", ct)?;
    }
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    resp.insert_header("x-content-type-options", "nosniff")?;
    resp.insert_header(request_id::HEADER, request_id)?;
    if let Some(hsts) = hsts {
        resp.insert_header("strict-transport-security", hsts)?;
    }
    if reply.status() == 503 {
        // Every 503 tollgate makes is transient (provider metadata loading or unreachable).
        resp.insert_header("retry-after", "5")?;
    }
    if reply.is_page() {
        resp.insert_header(
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'",
        )?;
    }
    for (name, value) in reply.headers() {
        resp.insert_header(*name, value.as_str())?;
    }
    for line in reply.set_cookies() {
        resp.append_header("set-cookie", line.as_str())?;
    }
    let req = session.req_header();
    let unread_body = req.headers.contains_key(TRANSFER_ENCODING)
        || req
            .headers
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let head_only = req.method == http::Method::HEAD || body.is_empty();
    if unread_body {
        session.set_keepalive(None);
    }
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}
