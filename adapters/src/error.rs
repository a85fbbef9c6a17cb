//! One line for any AWS SDK error, the same for every service and every crate of rekey: its code and
//! message when the service answered, the transport problem when it did not. (All SDK crates share
//! these types.) The adapters map the code to the [`ErrorKind`](crate::ErrorKind) they act on;
//! the words come from here, so an adapter's error and a command's error read alike.

use aws_sdk_lambda::error::{ProvideErrorMetadata, SdkError};

use crate::ErrorKind;

pub fn error_text<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err.code() {
        Some(code) => format!("{code}: {}", err.message().unwrap_or("no message")),
        None => chain(err),
    }
}

/// An error and its causes, each once, in one line. (The SDK's `DisplayErrorContext` adds the
/// whole `Debug` dump, kilobytes for a credentials failure: too much for a one-line message.)
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut cause = err.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = e.source();
    }
    parts.join(": ")
}

/// Replaces every value of `secrets` (of four characters or more: shorter ones would blank out
/// ordinary words) in `text`.
pub(crate) fn redact(text: &str, secrets: &[&str]) -> String {
    secrets.iter().filter(|s| s.len() >= 4).fold(text.to_string(), |t, s| t.replace(s, "[redacted]"))
}

/// An SDK error as an adapter words it: the code it branches on, the service's message and the
/// one line for the report, with the values the call had in hand scrubbed (a service may echo
/// the request).
pub(crate) struct SdkFailure {
    /// Empty when the service did not answer (timeout, connection, credentials).
    pub code: String,
    pub message: String,
    /// `<action>: <error_text>`.
    pub line: String,
}

impl SdkFailure {
    pub(crate) fn new<E, R>(action: &str, err: &SdkError<E, R>, secrets: &[&str]) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        SdkFailure {
            code: err.code().unwrap_or_default().to_string(),
            message: redact(err.message().unwrap_or("no message"), secrets),
            line: redact(&format!("{action}: {}", error_text(err)), secrets),
        }
    }

    /// The kind for the codes every service shares: credentials refused, access denied, a KMS
    /// key the caller may not use. Anything else is a backend failure.
    pub(crate) fn common_kind(self) -> ErrorKind {
        match self.code.as_str() {
            "UnrecognizedClientException" | "InvalidClientTokenId" | "UnauthorizedOperation" => {
                ErrorKind::AccessDenied(self.line)
            }
            c if c.starts_with("AccessDenied") || c.starts_with("KMS") => ErrorKind::AccessDenied(self.line),
            _ => ErrorKind::Backend(self.line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner: connection refused")]
    struct Inner;

    #[test]
    fn chain_is_one_line_with_each_cause_once() {
        assert_eq!(chain(&Outer(Inner)), "outer: inner: connection refused");
    }

    #[test]
    fn redact_leaves_short_values_alone() {
        assert_eq!(redact("key abc and s3cr3t-value", &["abc", "s3cr3t-value"]), "key abc and [redacted]");
    }
}
