//! Health probes: the application's own word that it works after the change.

use std::time::Duration;

use async_trait::async_trait;

#[async_trait]
pub trait Probe: Send + Sync {
    fn name(&self) -> &str;
    async fn check(&self) -> Result<(), String>;
}

/// `GET url` must answer 2xx. Redirects are not followed: a login page is not health.
pub struct HttpProbe {
    url: String,
    client: reqwest::Client,
}

impl HttpProbe {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| format!("bad probe URL {url:?}: {e}; give an http:// or https:// URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("bad probe URL {url:?}: scheme {:?} is not http or https", parsed.scheme()));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpProbe { url: url.to_string(), client })
    }
}

#[async_trait]
impl Probe for HttpProbe {
    fn name(&self) -> &str {
        &self.url
    }

    async fn check(&self) -> Result<(), String> {
        let resp = self.client.get(&self.url).send().await.map_err(|e| {
            let kind = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            format!("{}: {kind}", self.url)
        })?;
        if resp.status().is_success() { Ok(()) } else { Err(format!("{}: HTTP {}", self.url, resp.status().as_u16())) }
    }
}
