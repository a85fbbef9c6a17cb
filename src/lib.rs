//! rekey: rotate AWS IAM access keys of deployed applications with zero downtime, and take a team
//! through the first hours after a key leaks.
//!
//! One folder per command, so the tree shows the architecture:
//! - [`rotate`]: one user's rotation, a crash-safe state machine whose side effects (IAM, the
//!   targets in `rekey_adapters`, the probe, the clock) are traits that tests drive through faults;
//! - [`fleet`]: `plan`/`run`/`audit` over the rotations of a `rekey.toml`;
//! - [`trace`]: `rekey trace`, a key's CloudTrail records (the engine is the `rekey_trail` crate);
//! - [`incident`]: `identify → fence → cut over → investigate → report` for a leaked key;
//! - [`sweep`]: `rekey sweep`, a live read of every Region for what an attacker leaves outside IAM
//!   (also run by `investigate` and `incident`).
//! - [`discover`]: where a user's keys are deployed and who uses them, as targets `rotate` accepts.
//!
//! Around them: [`cli`] parses and prints, [`aws`] loads the SDK and renders its errors as one line,
//! [`exit`] says how a command ended, [`progress`] is the shared progress display.

pub mod aws;
pub mod cli;
pub mod discover;
pub mod exit;
pub mod fleet;
pub mod incident;
pub mod progress;
pub mod rotate;
pub mod sweep;
pub mod trace;
