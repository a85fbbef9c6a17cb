//! `rekey rotate`: one user's key, rotated before the old one is blocked.
//!
//! - [`machine`] is the state machine, readable top to bottom;
//! - [`journal`] makes it crash-safe (a local file or a shared DynamoDB table);
//! - [`evidence`] decides whether the old key may be turned off: not while someone rekey did not
//!   move still uses it (the same check backs `rekey retire`);
//! - [`iam`], [`probe`], [`wait`] and [`clock`] are its side effects and pacing, each behind a
//!   trait so that [`fakes`] can drive every step through its failures;
//! - [`trust`] decides what `resume` may take from a journal it reads back;
//! - the targets it writes the new key to live in the `rekey_adapters` crate.

pub mod clock;
pub mod evidence;
pub mod iam;
pub mod journal;
pub mod machine;
pub mod probe;
pub mod trust;
pub mod wait;

#[cfg(test)]
pub(crate) mod fakes;
