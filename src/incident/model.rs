//! What an incident run learns and does, in the shape `report.json` and `plan.json` have. Field
//! names are part of the tool's interface: scripts read them, so they only ever grow.

use rekey_trail::classify::Category;
use serde::{Deserialize, Serialize};

/// How bad it is. A root key is P1 whatever else is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

/// The compromised key's owner, as IAM knows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Owner {
    /// IAM user name; `root` for the account's root user.
    pub user: Option<String>,
    pub arn: Option<String>,
    pub account: Option<String>,
    pub is_root: bool,
    /// Active, Inactive, or unknown (a key IAM no longer has).
    pub key_status: Option<String>,
    pub last_used: Option<String>,
    pub last_used_service: Option<String>,
    pub last_used_region: Option<String>,
    /// AWSCompromisedKeyQuarantine* policies attached to the user or its groups.
    pub quarantine_policies: Vec<String>,
}

/// One event in the timeline.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TimelineEvent {
    pub event_id: String,
    pub time: String,
    pub event_name: String,
    pub event_source: String,
    pub region: Option<String>,
    pub source_ip: Option<String>,
    /// The VPC endpoint the call came through (`vpcEndpointId`), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_endpoint_id: Option<String>,
    pub user_agent: Option<String>,
    /// The key that signed it, and the chain from the compromised key to that key.
    pub signer: Option<String>,
    pub chain: Vec<String>,
    pub arn: Option<String>,
    pub categories: Vec<Category>,
    /// The call failed (`error_code`): an attempt, listed apart from what succeeded.
    pub failed: bool,
    pub error_code: Option<String>,
    pub notes: Vec<String>,
    /// With credential fields (`secretAccessKey`, `sessionToken`) removed.
    pub request_parameters: Option<serde_json::Value>,
    pub response_elements: Option<serde_json::Value>,
    /// Where the event was read (`event history us-east-1`, `s3://bucket/...`, a folder).
    pub seen_in: Vec<String>,
}

/// A key minted by the compromised key or by one of its descendants.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DerivedKeyReport {
    pub key: String,
    pub parent: String,
    pub event_name: String,
    pub event_time: Option<String>,
    /// The role session, federated user or user the key acts as.
    pub principal: Option<String>,
}

/// A source of events and what it covers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceReport {
    /// `event-history`, `trail-logs`, `logs`.
    pub kind: String,
    /// `us-east-1`, `s3://bucket/prefix`, `/path`.
    pub location: String,
    /// What it covers: the window, regions, and what it cannot contain (data events, …).
    pub covers: String,
    /// `ok`, or why it could not be read.
    pub status: String,
    pub events: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlindSpot {
    /// `logging_stopped`, `trail_deleted`, `selectors_changed`, `no_data_events`, `source_unreadable`,
    /// `region_not_logged`, `no_trail`, …
    pub kind: String,
    pub detail: String,
    /// Events that show it, when an event does.
    pub evidence: Vec<String>,
}

/// Something found that a person must act on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finding {
    /// `F1`, `F2`, … in report order.
    pub id: String,
    pub severity: Severity,
    /// `backdoor_user`, `access_key`, `login_profile`, `mfa_device`, `role`, `trust_policy`,
    /// `attached_policy`, `inline_policy`, `policy_version`, `identity_provider`, `alternate_contact`,
    /// `created_in_window`, `root_key`, `quarantine`, `session`, `activity`, …
    pub kind: String,
    pub title: String,
    /// The ARN or name of the thing.
    pub resource: String,
    /// Whether it still exists in the account now (None: not a thing that exists, or not checked).
    pub still_present: Option<bool>,
    /// Event ids that show it.
    pub evidence: Vec<String>,
    pub detail: String,
}

/// One step the containment plan takes, with what reverses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    DeactivateAccessKey {
        user: String,
        access_key_id: String,
    },
    DeleteLoginProfile {
        user: String,
    },
    DetachUserPolicy {
        user: String,
        policy_arn: String,
    },
    DeleteUserPolicy {
        user: String,
        policy_name: String,
    },
    RemoveUserFromGroup {
        user: String,
        group: String,
    },
    DeactivateMfaDevice {
        user: String,
        serial_number: String,
    },
    DetachRolePolicy {
        role: String,
        policy_arn: String,
    },
    DeleteRolePolicy {
        role: String,
        policy_name: String,
    },
    /// Put back the trust policy the role had before the attacker changed it.
    UpdateAssumeRolePolicy {
        role: String,
        policy_document: String,
    },
    /// Make an older version of a managed policy the default again.
    SetDefaultPolicyVersion {
        policy_arn: String,
        version_id: String,
    },
    /// Delete a user once the actions before it emptied it (keys off, policies and groups gone).
    DeleteUser {
        user: String,
    },
    /// Delete a role once its policies are detached and removed.
    DeleteRole {
        role: String,
    },
    DeleteOpenIdConnectProvider {
        arn: String,
    },
    DeleteSamlProvider {
        arn: String,
    },
    /// Set an alternate contact back to the value recorded before the window.
    PutAlternateContact {
        contact_type: String,
        name: String,
        title: String,
        email: String,
        phone: String,
    },
    /// Snapshot a volume the attacker's instance used, tagged with the incident, before deletion.
    SnapshotVolume {
        volume_id: String,
        instance_id: String,
        /// The instance's region (the event's); none: the region rekey runs in.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
    },
    DetachGroupPolicy {
        group: String,
        policy_arn: String,
    },
    DeleteGroupPolicy {
        group: String,
        policy_name: String,
    },
    /// The reverse of `DeactivateAccessKey` (undo).
    ActivateAccessKey {
        user: String,
        access_key_id: String,
    },
    /// The reverse of the detach actions (undo).
    AttachUserPolicy {
        user: String,
        policy_arn: String,
    },
    AttachRolePolicy {
        role: String,
        policy_arn: String,
    },
    AttachGroupPolicy {
        group: String,
        policy_arn: String,
    },
    /// The reverse of `RemoveUserFromGroup` (undo).
    AddUserToGroup {
        user: String,
        group: String,
    },
    /// For a contact that was not set before the attacker set it (and the undo of a restore when
    /// the attacker had deleted it).
    DeleteAlternateContact {
        contact_type: String,
    },
    /// The sweep's steps outside IAM (stop an instance, revoke a rule, …), carried out by
    /// `crate::sweep::contain`; untagged so that they read `{"type": "stop_instance", …}` too.
    #[serde(untagged)]
    Sweep(crate::sweep::actions::SweepAction),
}

/// Data that reverses an action (`rekey contain --undo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Undo {
    /// The action is reversed by another action.
    Action {
        action: Action,
    },
    /// Recreate what was deleted from its description.
    RecreateUser {
        user: String,
        path: Option<String>,
        tags: Vec<(String, String)>,
    },
    RecreateRole {
        role: String,
        path: Option<String>,
        assume_role_policy_document: String,
        description: Option<String>,
    },
    PutUserPolicy {
        user: String,
        policy_name: String,
        policy_document: String,
    },
    PutRolePolicy {
        role: String,
        policy_name: String,
        policy_document: String,
    },
    PutGroupPolicy {
        group: String,
        policy_name: String,
        policy_document: String,
    },
    /// A password cannot be read back: undo creates a login profile with a new temporary password
    /// that must be reset at first sign-in, and says so.
    RecreateLoginProfile {
        user: String,
        password_reset_required: bool,
    },
    /// Some actions cannot be reversed by rekey (say why).
    None {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanAction {
    /// `A1`, `A2`, … in the order they run; undo runs in reverse.
    pub id: String,
    /// The finding it answers.
    pub finding: String,
    pub description: String,
    pub action: Action,
    pub undo: Undo,
}

/// `plan.json`: what `rekey contain --plan … --apply` does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub incident: String,
    pub access_key_id: String,
    pub account: Option<String>,
    pub created_at: String,
    pub actions: Vec<PlanAction>,
}

/// The cutover's outcome, from the rotation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CutoverReport {
    /// `rotated`, `rolled_back`, `failed`, `deactivated_now`, `skipped`.
    pub outcome: String,
    pub new_key_id: Option<String>,
    pub targets: Vec<String>,
    pub detail: Option<String>,
}

/// A principal whose sessions were revoked, or could not be.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokedSessions {
    /// `user` or `role`.
    pub kind: String,
    pub name: String,
    pub policy_name: String,
    /// Sessions issued before this time are denied.
    pub issued_before: String,
    /// `revoked`, or why not.
    pub status: String,
}

/// An allowed source of the fence policy, with the evidence for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FenceSource {
    /// `ip`, `vpc`, `vpce`.
    pub kind: String,
    pub value: String,
    /// How often the key was used from it before the attack, first and last time.
    pub events: u64,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FenceReport {
    /// `applied`, `removed`, `lifted` (taken off before the cutover because the application failed
    /// behind it), `skipped`, `not_possible`, `failed`.
    pub status: String,
    pub policy_name: Option<String>,
    pub allowed: Vec<FenceSource>,
    pub excluded: Vec<String>,
    pub detail: Option<String>,
    /// What the allowed sources were learnt from: the bounded sample, `--allow-source`, and how
    /// long the sample took (it is bounded in requests and seconds, never the whole history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learnt_from: Option<String>,
    /// Sources added after the probes failed behind the fence, from the full history, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub widened: Vec<FenceSource>,
    /// Plain-words notes on the fence's life: widened, lifted, why it skipped IP conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Seconds from the start of `rekey incident` to each milestone; None when it did not happen.
/// Time to containment (`fence_applied_s`) is the figure responders quote.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timings {
    pub fence_applied_s: Option<f64>,
    pub cutover_done_s: Option<f64>,
    pub investigation_done_s: Option<f64>,
}

/// An access key of the user other than the leaked one: in incident mode it is never deleted
/// (evidence), so its metadata is recorded whether or not it blocks the cutover.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KeyMetadata {
    pub access_key_id: String,
    pub status: String,
    pub created: Option<String>,
    pub last_used: Option<String>,
    pub last_used_service: Option<String>,
    pub last_used_region: Option<String>,
    /// The user's tags about this key (the console keeps a key's description as a tag keyed by it).
    pub tags: Vec<(String, String)>,
}

/// `report.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub access_key_id: String,
    pub owner: Owner,
    pub severity: Severity,
    /// When the report was made and the window investigated.
    pub generated_at: String,
    pub window_start: String,
    pub window_end: String,
    pub fence: Option<FenceReport>,
    pub cutover: Option<CutoverReport>,
    pub sessions_revoked: Vec<RevokedSessions>,
    pub sources: Vec<SourceReport>,
    pub derived_keys: Vec<DerivedKeyReport>,
    pub timeline: Vec<TimelineEvent>,
    pub findings: Vec<Finding>,
    pub blind_spots: Vec<BlindSpot>,
    /// What rekey did, in order, in plain words.
    pub actions_taken: Vec<String>,
    /// What is left for a person.
    pub todo: Vec<String>,
    /// The post-incident checklist, answered by the live sweep (`crate::sweep`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<crate::sweep::review::Review>,
    #[serde(default)]
    pub timings: Timings,
    /// The user's other access keys, never deleted in incident mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_keys: Vec<KeyMetadata>,
}
