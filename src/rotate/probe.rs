//! Health probes: the application's own word that it works after the change.

use std::time::Duration;

use async_trait::async_trait;

#[async_trait]
pub trait Probe: Send + Sync {
    /// The URL as reports, logs and the journal may show it: without a password.
    fn name(&self) -> &str;
    async fn check(&self) -> Result<(), String>;
}

/// `GET url` must answer 2xx. Redirects are not followed: a login page is not health.
///
/// Every request is bounded by `timeout`, connecting included: a server that accepts the
/// connection and never answers fails the check instead of holding the rotation.
pub struct HttpProbe {
    url: String,
    shown: String,
    client: reqwest::Client,
}

impl HttpProbe {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let shown = redact_url(url);
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| format!("bad probe URL {shown:?}: {e}; give an http:// or https:// URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("bad probe URL {shown:?}: scheme {:?} is not http or https", parsed.scheme()));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpProbe { url: url.to_string(), shown, client })
    }
}

#[async_trait]
impl Probe for HttpProbe {
    fn name(&self) -> &str {
        &self.shown
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
            format!("{}: {kind}", self.shown)
        })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("{}: HTTP {}", self.shown, resp.status().as_u16()))
        }
    }
}

/// `url` with the password of a `user:password@` part replaced, or the whole part when it has no
/// password (a bare token). Done on the text, so that a URL too broken to parse is redacted too.
pub fn redact_url(url: &str) -> String {
    let Some((start, end)) = userinfo(url) else { return url.to_string() };
    let shown_userinfo = match url[start..end].split_once(':') {
        Some((user, _password)) => format!("{user}:{REDACTED}"),
        None => REDACTED.to_string(),
    };
    format!("{}{shown_userinfo}{}", &url[..start], &url[end..])
}

/// Whether `url` carries a `user[:password]@` part (redacted or not).
pub fn has_userinfo(url: &str) -> bool {
    userinfo(url).is_some()
}

/// Where the part before `@` of the authority is, as byte offsets.
fn userinfo(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    Some((start, start + at))
}

const REDACTED: &str = "redacted";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_bare_tokens_in_urls_are_redacted() {
        assert_eq!(redact_url("https://ops:hunter2@app.internal/health"), "https://ops:redacted@app.internal/health");
        assert_eq!(redact_url("http://t0k3n@app:8080/h?x=a@b"), "http://redacted@app:8080/h?x=a@b");
        assert_eq!(redact_url("http://a:b:c@host"), "http://a:redacted@host");
        assert_eq!(redact_url("http://app/health?to=me@x"), "http://app/health?to=me@x");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn the_probe_names_itself_without_the_password() {
        let p = HttpProbe::new("http://ops:s3cr3t-pass@127.0.0.1:9/health", Duration::from_secs(1)).unwrap();
        assert_eq!(p.name(), "http://ops:redacted@127.0.0.1:9/health");
        let e = HttpProbe::new("ftp://ops:s3cr3t-pass@host/", Duration::from_secs(1)).err().unwrap();
        assert!(!e.contains("s3cr3t-pass"), "{e}");
    }
}
