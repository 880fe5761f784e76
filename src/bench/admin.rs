//! Just enough HTTP/1.1 to call the admin API and scrape `/metrics` on a loopback relay: one
//! request per connection (`Connection: close`), a bounded wait, a bounded body.

use super::BenchError;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest wait for one admin call.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response read (the metrics page of a busy relay is a few tens of KiB).
const MAX_RESPONSE: u64 = 16 << 20;

/// The admin API of one relay.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Its TCP address.
    pub addr: SocketAddr,
    /// The bearer key, when known.
    pub key: Option<String>,
}

impl Admin {
    /// `POST path` with a JSON body; returns the status and the body.
    pub async fn post(&self, path: &str, body: &str) -> Result<(u16, String), BenchError> {
        self.call("POST", path, Some(body)).await
    }

    /// `GET path`; returns the status and the body.
    pub async fn get(&self, path: &str) -> Result<(u16, String), BenchError> {
        self.call("GET", path, None).await
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), BenchError> {
        let what = format!("{method} http://{}{path}", self.addr);
        tokio::time::timeout(TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| BenchError::Admin(format!("{what}: no answer in {TIMEOUT:?}")))?
            .map_err(|e| BenchError::Admin(format!("{what}: {e}")))
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: */*\r\n",
            self.addr
        );
        if let Some(key) = &self.key {
            req.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        if let Some(b) = body {
            req.push_str(b);
        }
        stream.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.take(MAX_RESPONSE).read_to_end(&mut raw).await?;
        parse_response(&raw).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "bad HTTP response")
        })
    }

    /// Puts message types on the app-wide whitelist (always protected).
    pub async fn whitelist_types(&self, types: &[&str]) -> Result<(), BenchError> {
        let body = serde_json::json!({ "types": types }).to_string();
        let (status, text) = self.post("/v1/message-types/whitelist", &body).await?;
        if !(200..300).contains(&status) {
            return Err(BenchError::Admin(format!(
                "whitelisting message types {types:?}: HTTP {status}: {}",
                text.trim()
            )));
        }
        Ok(())
    }

    /// Creates a room; an existing one is fine.
    pub async fn create_room(&self, id: &str) -> Result<(), BenchError> {
        let body = serde_json::json!({ "id": id }).to_string();
        let (status, text) = self.post("/v1/rooms", &body).await?;
        if (200..300).contains(&status) || status == 409 {
            return Ok(());
        }
        Err(BenchError::Admin(format!(
            "creating room {id}: HTTP {status}: {}",
            text.trim()
        )))
    }

    /// The `/metrics` page's samples of one metric, keyed by their label sets (`{a="x",b="y"}`).
    pub async fn metric(&self, name: &str) -> Result<BTreeMap<String, f64>, BenchError> {
        let (status, text) = self.get("/metrics").await?;
        if status != 200 {
            return Err(BenchError::Admin(format!("GET /metrics: HTTP {status}")));
        }
        Ok(parse_metric(&text, name))
    }
}

/// Status and body of a complete HTTP/1.1 response (plain or chunked body).
fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut body = &raw[split + 4..];
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let text = if chunked {
        let mut out = Vec::new();
        loop {
            let line_end = body.windows(2).position(|w| w == b"\r\n")?;
            let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            body = &body[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(body.get(..size)?);
            body = body.get(size + 2..)?;
        }
        out
    } else {
        match header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            Some(n) => body.get(..n)?.to_vec(),
            None => body.to_vec(),
        }
    };
    Some((status, String::from_utf8_lossy(&text).into_owned()))
}

/// Samples of `name` in Prometheus text format: label set (or "") → value.
pub fn parse_metric(text: &str, name: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some(end) = r.find('}') else { continue };
            (format!("{{{}}}", &r[..end]), &r[end + 1..])
        } else if rest.starts_with(' ') {
            (String::new(), rest)
        } else {
            // Another metric that merely starts with this name.
            continue;
        };
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *out.entry(labels).or_insert(0.0) += v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_response(plain), Some((200, "hello".into())));
        let chunked =
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((201, "abcde".into())));
    }

    #[test]
    fn metric_samples_by_label_set() {
        let text = "# HELP roomcast_shed_total x\nroomcast_shed_total{class=\"low\",reason=\"lag\"} 12\n\
                    roomcast_shed_total_other 3\nroomcast_shed_total{class=\"normal\",reason=\"ingress\"} 4\n";
        let m = parse_metric(text, "roomcast_shed_total");
        assert_eq!(m.len(), 2);
        assert_eq!(m["{class=\"low\",reason=\"lag\"}"], 12.0);
    }
}
