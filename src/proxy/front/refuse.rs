//! Answers the front door makes itself, before Pingora has a session for the request (a head
//! over the limits: `431`): rendered from the one [`Fault`](crate::reply::Fault) table like
//! every other refusal, with the headers `proxy::respond` gives every reply, then written raw
//! on an HTTP/1 connection or as the response of an HTTP/2 stream.

use bytes::Bytes;
use pingora::http::ResponseHeader;

use crate::proxy::request_id;
use crate::reply::Reply;

/// `reply` as a whole raw HTTP/1.1 response that closes its connection: status line,
/// `content-type`, `content-length`, `cache-control: no-store`, `x-content-type-options:
/// nosniff`, the request id, the reply's own headers and cookies, `connection: close`, body.
pub(crate) fn http1(reply: &Reply, request_id: &str) -> Vec<u8> {
    let (content_type, body) = reply.render(request_id);
    let reason = http::StatusCode::from_u16(reply.status())
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", reply.status());
    if let Some(ct) = content_type {
        head.push_str(&format!("content-type: {ct}\r\n"));
    }
    head.push_str(&format!(
        "content-length: {}\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\n\
         {}: {request_id}\r\n",
        body.len(),
        request_id::HEADER
    ));
    for (name, value) in reply.headers() {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    for line in reply.set_cookies() {
        head.push_str(&format!("set-cookie: {line}\r\n"));
    }
    head.push_str("connection: close\r\n\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    out
}

/// `reply` as an HTTP/2 stream's response head and body, with the same headers as
/// [`http1`]'s but `connection` (which HTTP/2 does not have).
pub(crate) fn h2(reply: &Reply, request_id: &str) -> pingora::Result<(ResponseHeader, Bytes)> {
    let (content_type, body) = reply.render(request_id);
    let extra = reply.headers().len() + reply.set_cookies().len();
    let mut resp = ResponseHeader::build(reply.status(), Some(6 + extra))?;
    if let Some(ct) = content_type {
        resp.insert_header("content-type", ct)?;
    }
    resp.insert_header("cache-control", "no-store")?;
    resp.insert_header("x-content-type-options", "nosniff")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header(request_id::HEADER, request_id)?;
    for (name, value) in reply.headers() {
        resp.insert_header(*name, value.as_str())?;
    }
    for line in reply.set_cookies() {
        resp.append_header("set-cookie", line.as_str())?;
    }
    Ok((resp, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::{Fault, HeadLimit};

    /// What the front door wrote by hand before the `431` was a `Fault`, byte for byte.
    fn before_http1(limit: &str, request_id: &str) -> String {
        let body = format!(
            r#"{{"error":"request_header_fields_too_large","message":"the request head is over the {} limit","request_id":"{request_id}"}}"#,
            match limit {
                "header_count" => "server.max_headers",
                _ => "server.max_header_bytes",
            }
        );
        format!(
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n\
             content-length: {}\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\n\
             x-request-id: {request_id}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn the_http1_431_is_what_was_written_by_hand() {
        let rid = "0123456789abcdef0123456789abcdef";
        for (limit, head_limit) in [
            ("header_count", HeadLimit::Fields),
            ("header_bytes", HeadLimit::Bytes),
        ] {
            let got = http1(&Reply::from(Fault::HeaderFieldsTooLarge(head_limit)), rid);
            assert_eq!(String::from_utf8(got).unwrap(), before_http1(limit, rid));
        }
    }

    #[test]
    fn the_h2_431_is_what_was_written_by_hand() {
        let rid = "0123456789abcdef0123456789abcdef";
        let reply = Reply::from(Fault::HeaderFieldsTooLarge(HeadLimit::H2Fields));
        let (resp, body) = h2(&reply, rid).unwrap();
        let before = format!(
            r#"{{"error":"request_header_fields_too_large","message":"the request has more header fields than server.max_headers","request_id":"{rid}"}}"#
        );
        assert_eq!(std::str::from_utf8(&body).unwrap(), before);
        assert_eq!(resp.status.as_u16(), 431);
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let want = [
            ("content-type", "application/json".to_string()),
            ("cache-control", "no-store".to_string()),
            ("x-content-type-options", "nosniff".to_string()),
            ("content-length", before.len().to_string()),
            ("x-request-id", rid.to_string()),
        ];
        assert_eq!(headers.len(), want.len(), "{headers:?}");
        for (n, v) in want {
            assert!(
                headers.contains(&(n.to_string(), v.clone())),
                "{n}: {headers:?}"
            );
        }
    }

    #[test]
    fn any_reply_serializes_with_its_own_headers() {
        let reply = Reply::redirect(302, "/x").with_cookies(["a=b".to_string()]);
        let got = String::from_utf8(http1(&reply, "rid")).unwrap();
        assert_eq!(
            got,
            "HTTP/1.1 302 Found\r\ncontent-length: 0\r\ncache-control: no-store\r\n\
             x-content-type-options: nosniff\r\nx-request-id: rid\r\nlocation: /x\r\n\
             set-cookie: a=b\r\nconnection: close\r\n\r\n"
        );
    }
}
