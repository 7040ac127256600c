//! A small echo upstream: answers every request with a JSON description of
//! what it received and which server answered. Used by the README's demo and
//! by the tests as a real upstream.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

pub struct Echo {
    pub name: String,
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[async_trait]
impl ServeHttp for Echo {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut body_bytes = 0usize;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            body_bytes += chunk.len();
        }
        let req = session.req_header();
        let headers: Vec<String> = req
            .headers
            .iter()
            .map(|(k, v)| {
                format!(
                    "[{},{}]",
                    json_string(k.as_str()),
                    json_string(&String::from_utf8_lossy(v.as_bytes()))
                )
            })
            .collect();
        let body = format!(
            "{{\"server\":{},\"method\":{},\"path\":{},\"query\":{},\"version\":{},\"headers\":[{}],\"body_bytes\":{}}}\n",
            json_string(&self.name),
            json_string(req.method.as_str()),
            json_string(req.uri.path()),
            json_string(req.uri.query().unwrap_or("")),
            json_string(&format!("{:?}", req.version)),
            headers.join(","),
            body_bytes
        );
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .header("x-echo-server", self.name.as_str())
            .body(body.into_bytes())
            .expect("static response parts are valid")
    }
}
