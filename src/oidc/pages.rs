//! Error pages for the login flow: HTML for a person, JSON for a program.
//!
//! A failed login ends in front of a person, so the default is a small HTML page that says
//! what happened in words, shows the provider's error code and the request id, and links to
//! start again. A client that asks for `application/json` gets the same facts as JSON.

use serde::Serialize;

/// A finished response produced by an endpoint handler, written by the proxy layer.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Page {
    pub fn redirect(location: &str) -> Page {
        Page {
            status: 302,
            headers: vec![
                ("location", location.to_string()),
                ("cache-control", "no-store".to_string()),
            ],
            body: Vec::new(),
        }
    }

    pub fn with_cookies(mut self, set_cookies: Vec<String>) -> Page {
        self.headers
            .extend(set_cookies.into_iter().map(|c| ("set-cookie", c)));
        self
    }
}

#[derive(Serialize)]
struct ErrorJson<'a> {
    error: &'a str,
    message: &'a str,
    login: &'a str,
    request_id: &'a str,
}

/// A login error: `code` is a stable identifier (or the provider's error code), `message`
/// a sentence for people.
pub fn login_error(status: u16, code: &str, message: &str, request_id: &str, json: bool) -> Page {
    if json {
        let body = serde_json::to_vec(&ErrorJson {
            error: code,
            message,
            login: "/login",
            request_id,
        })
        .unwrap_or_default();
        return Page {
            status,
            headers: vec![
                ("content-type", "application/json".into()),
                ("cache-control", "no-store".into()),
            ],
            body,
        };
    }
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width\"><title>Sign-in failed</title></head>\
<body style=\"font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem\">\
<h1>Sign-in failed</h1><p>{}</p><p>Error: <code>{}</code></p>\
<p><a href=\"/login\">Start again</a></p>\
<p style=\"color:#666;font-size:.85rem\">Request id: <code>{}</code></p></body></html>\n",
        escape(message),
        escape(code),
        escape(request_id)
    );
    Page {
        status,
        headers: vec![
            ("content-type", "text/html; charset=utf-8".into()),
            ("cache-control", "no-store".into()),
            (
                "content-security-policy",
                "default-src 'none'; style-src 'unsafe-inline'".into(),
            ),
        ],
        body: body.into_bytes(),
    }
}

/// Whether the request prefers JSON (`Accept: application/json`).
pub fn wants_json(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/json") && !a.contains("text/html"))
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped_and_json_is_json() {
        let p = login_error(400, "<script>", "a & b", "rid", false);
        let html = String::from_utf8(p.body).unwrap();
        assert!(html.contains("&lt;script&gt;") && html.contains("a &amp; b"));
        assert!(!html.contains("<script>"));
        assert!(html.contains("href=\"/login\""));
        let p = login_error(400, "access_denied", "no", "rid", true);
        let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["error"], "access_denied");
        assert!(wants_json(Some("application/json")));
        assert!(!wants_json(Some("text/html,application/json;q=0.9")));
        assert!(!wants_json(None));
    }
}
