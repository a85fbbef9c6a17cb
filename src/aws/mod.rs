//! Everything that touches the real AWS SDK for the commands: loading its configuration, the one
//! line an SDK error is reported as, and the wiring that puts real clients behind the rotation's
//! traits. Commands get their side effects from here, so that tests can swap them all.

pub mod own_key;
mod wiring;

// One implementation for the adapters and the commands: the adapters crate holds it.
pub use rekey_adapters::{chain, error_text};
pub use wiring::{AwsFactory, Wiring, journals, load_sdk};
