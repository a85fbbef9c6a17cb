//! One line for any AWS SDK error, the same for every service: its code and message when the
//! service answered, the transport problem when it did not. (All SDK crates share these types.)

use aws_sdk_iam::error::{ProvideErrorMetadata, SdkError};

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
