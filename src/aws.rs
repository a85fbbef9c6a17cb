//! One line for any AWS SDK error, the same for every service: its code and message when the
//! service answered, the transport problem when it did not. (All SDK crates share these types.)

use aws_sdk_iam::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

pub fn error_text<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err.code() {
        Some(code) => format!("{code}: {}", err.message().unwrap_or("no message")),
        None => DisplayErrorContext(err).to_string(),
    }
}
