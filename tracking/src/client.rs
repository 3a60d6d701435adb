//! One MLflow REST client with short timeouts (plain HTTP through `ureq`).
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::state::without_credentials;

/// One MLflow REST client with short timeouts.
pub(crate) struct Client {
    agent: ureq::Agent,
    uri: String,
}

impl Client {
    pub(crate) fn new(uri: &str) -> Self {
        Client {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(2))
                .timeout_read(Duration::from_secs(15))
                .timeout_write(Duration::from_secs(30))
                .build(),
            uri: uri.to_string(),
        }
    }

    pub(crate) fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}{path}", self.uri);
        let req = self.agent.request(method, &url).set("Content-Type", "application/json");
        let r = match body {
            Some(b) => req.send_string(&b.to_string()),
            None => req.call(),
        };
        let text = answer(&url, r)?.into_string().map_err(|e| unreachable(&url, e))?;
        if text.trim().is_empty() {
            Ok(json!({}))
        } else {
            serde_json::from_str(&text).map_err(|source| Error::NotJson {
                url: without_credentials(&url),
                source,
            })
        }
    }

    pub(crate) fn put_file(&self, path: &str, bytes: &[u8]) -> Result<()> {
        let url = format!("{}{path}", self.uri);
        answer(&url, self.agent.put(&url).send_bytes(bytes)).map(drop)
    }
}

/// A request's answer, or why there is none: refused (its status and the start of its
/// body), or the server not reached.
fn answer(url: &str, r: std::result::Result<ureq::Response, ureq::Error>) -> Result<ureq::Response> {
    match r {
        Ok(resp) => Ok(resp),
        Err(ureq::Error::Status(status, resp)) => Err(Error::Refused {
            url: without_credentials(url),
            status,
            body: resp.into_string().unwrap_or_default().chars().take(300).collect(),
        }),
        Err(ureq::Error::Transport(t)) => Err(Error::Unreachable {
            url: without_credentials(url),
            source: transport_cause(&t).into(),
        }),
    }
}

/// ureq's transport error as text without the URL it names (which may carry the server's
/// credentials): its kind, its message and its own cause. Text, because ureq lends its
/// cause but never gives it up.
fn transport_cause(t: &ureq::Transport) -> String {
    let mut why = t.kind().to_string();
    for part in [
        t.message().map(str::to_string),
        std::error::Error::source(t).map(ToString::to_string),
    ]
    .into_iter()
    .flatten()
    {
        why = format!("{why}: {part}");
    }
    why
}

fn unreachable(url: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Unreachable {
        url: without_credentials(url),
        source: Box::new(e),
    }
}

pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_percent_encoded() {
        assert_eq!(urlencode("nodule exp/1"), "nodule%20exp%2F1");
    }

    /// A server that cannot be reached is `Unreachable`, its cause ureq's (kind, message,
    /// the OS error) and no URL in either that carries credentials.
    #[test]
    fn an_unreachable_server_keeps_the_cause_and_not_the_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port"); // the listener is dropped: nothing listens there
        let c = Client::new(&format!("http://user:secret@127.0.0.1:{port}"));
        let e = c
            .call("GET", "/api/2.0/mlflow/experiments/list", None)
            .expect_err("no server");
        assert!(
            matches!(&e, Error::Unreachable { url, .. } if url.ends_with("/experiments/list")),
            "{e:?}"
        );
        let cause = std::error::Error::source(&e)
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            cause.starts_with("Connection Failed") && cause.contains("refused"),
            "{cause}"
        );
        assert!(!format!("{e} {e:?}").contains("secret"), "{e:?}");
        // A password with a raw '/' makes a URL ureq refuses: that error shows none of it.
        let e = Client::new("http://user:pa/secret@127.0.0.1:1")
            .call("GET", "/x", None)
            .expect_err("no server");
        assert!(!format!("{e} {e:?}").contains("secret"), "{e:?}");
    }

    /// A refusal is `Refused` with its status and the start of the server's answer.
    #[test]
    fn a_refusal_keeps_its_status_and_answer() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            // The whole request (headers, then the body ureq writes apart) is read before
            // the answer: closing on unread bytes would reset the connection.
            let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
            while !got.ends_with(b"\r\n\r\nbytes") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let body = format!("{{\"error_code\": \"RESOURCE_DOES_NOT_EXIST\"}}{}", "x".repeat(400));
            let _ = write!(
                s,
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        });
        let e = Client::new(&format!("http://127.0.0.1:{port}"))
            .put_file("/api/2.0/mlflow-artifacts/artifacts/x", b"bytes")
            .expect_err("refused");
        server.join().expect("server");
        match &e {
            Error::Refused { status, body, .. } => {
                assert_eq!(*status, 404);
                assert!(
                    body.starts_with("{\"error_code\": \"RESOURCE_DOES_NOT_EXIST\"}"),
                    "{body}"
                );
                assert_eq!(body.chars().count(), 300);
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains(": HTTP 404: {"), "{e}");
    }
}
