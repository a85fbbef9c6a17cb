//! Incident response for a leaked access key: identify its owner, fence the attacker out, cut over
//! to a new key without downtime, revoke sessions, investigate what the key did, hunt the backdoors
//! it left, and report with a containment plan.

pub mod contain;
pub mod digest;
pub mod egress;
pub mod fence;
pub mod fence_journal;
pub mod fence_step;
pub mod history;
pub mod hunt;
pub mod identify;
pub mod investigate;
pub mod keys;
pub mod model;
pub mod report;
pub mod revoke;
pub mod run;
pub mod sample;
