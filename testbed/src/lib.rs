//! The emulator test bed for rekey.
//!
//! - [`moto`]: a patched moto server per test (auth enforcement that matches AWS), plus
//!   [`moto::seed`] for the admin and app users every scenario starts from.
//! - [`app`]: a live HTTP service that consumes the rotated key the way real deployments do
//!   (dotenv file, Secrets Manager with a cache, ECS tasks).
//! - [`load`]: steady traffic against the app, so "zero downtime" is measured, not assumed.

pub mod app;
pub mod load;
pub mod moto;

pub use moto::{Creds, Moto, MotoOptions, Seeded, seed};
