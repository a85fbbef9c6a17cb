//! rekey: rotate AWS IAM access keys of deployed applications with zero downtime.
//!
//! - [`rotation`] is the state machine, readable top to bottom;
//! - [`journal`] makes it crash-safe;
//! - [`iam`], [`probe`], [`clock`] and the target adapters (crate `rekey_adapters`) are the side
//!   effects, each behind a trait so that tests can drive every step through its failures.

pub mod athena;
pub mod audit;
pub mod aws;
pub mod cli;
pub mod clock;
pub mod config;
pub mod fleet;
pub mod iam;
pub mod incident;
pub mod journal;
pub mod lock;
pub mod logs;
pub mod probe;
pub mod progress;
pub mod rotation;
pub mod trace;
pub mod wait;

#[cfg(test)]
mod testing;
