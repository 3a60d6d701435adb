//! One MLflow REST client with short timeouts (plain HTTP through `ureq`).
use std::time::Duration;

use serde_json::{json, Value};

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

    pub(crate) fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.uri);
        let req = self.agent.request(method, &url).set("Content-Type", "application/json");
        let r = match body {
            Some(b) => req.send_string(&b.to_string()),
            None => req.call(),
        };
        match r {
            Ok(resp) => {
                let text = resp.into_string().map_err(|e| format!("{url}: {e}"))?;
                if text.trim().is_empty() {
                    Ok(json!({}))
                } else {
                    serde_json::from_str(&text).map_err(|e| format!("{url}: not JSON ({e})"))
                }
            }
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                Err(format!(
                    "{url}: HTTP {code}: {}",
                    text.chars().take(300).collect::<String>()
                ))
            }
            Err(e) => Err(format!("{url}: {e}")),
        }
    }

    pub(crate) fn put_file(&self, path: &str, bytes: &[u8]) -> Result<(), String> {
        let url = format!("{}{path}", self.uri);
        match self.agent.put(&url).send_bytes(bytes) {
            Ok(_) => Ok(()),
            Err(ureq::Error::Status(code, resp)) => Err(format!(
                "{url}: HTTP {code}: {}",
                resp.into_string()
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect::<String>()
            )),
            Err(e) => Err(format!("{url}: {e}")),
        }
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
}
