//! What an event means in an investigation: reconnaissance, persistence, privilege escalation,
//! defense evasion, credential access and exfiltration, account-level changes, SES abuse.
//!
//! The event lists come from Prowler's checks, Sigma rules, Pacu's modules, Stratus Red Team's
//! techniques and the AWS incident-response playbooks (summarised in the project's CloudTrail
//! notes). A few events need context to mean something: an access key or password created for
//! *another* user is a backdoor and an escalation, not routine self-service.

use serde::{Deserialize, Serialize};

use crate::record::Record;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Reconnaissance,
    Persistence,
    PrivilegeEscalation,
    DefenseEvasion,
    /// Credential access, data access and exfiltration.
    Exfiltration,
    AccountLevel,
    SesAbuse,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Reconnaissance => "reconnaissance",
            Category::Persistence => "persistence",
            Category::PrivilegeEscalation => "privilege_escalation",
            Category::DefenseEvasion => "defense_evasion",
            Category::Exfiltration => "exfiltration",
            Category::AccountLevel => "account_level",
            Category::SesAbuse => "ses_abuse",
        }
    }
}

use Category::*;

/// (service, event names, category). The service is `eventSource` without `.amazonaws.com`.
const RULES: &[(&str, &[&str], Category)] = &[
    ("sts", &["GetCallerIdentity"], Reconnaissance),
    (
        "iam",
        &[
            "GetAccountAuthorizationDetails",
            "GetAccountSummary",
            "ListUsers",
            "ListRoles",
            "ListAccessKeys",
            "ListAttachedUserPolicies",
            "ListAttachedRolePolicies",
            "ListUserPolicies",
            "GetUserPolicy",
            "GetRolePolicy",
            "GetPolicyVersion",
            "ListPolicyVersions",
            "ListPolicies",
            "ListGroups",
            "ListGroupsForUser",
            "ListInstanceProfiles",
            "GenerateCredentialReport",
            "GetCredentialReport",
            "GetUser",
            "GetRole",
            "ListMFADevices",
            "ListSSHPublicKeys",
        ],
        Reconnaissance,
    ),
    ("s3", &["ListBuckets"], Reconnaissance),
    (
        "ec2",
        &[
            "DescribeInstances",
            "DescribeRegions",
            "DescribeSecurityGroups",
            "DescribeSnapshots",
            "DescribeImages",
            "DescribeVpcs",
        ],
        Reconnaissance,
    ),
    ("cloudtrail", &["DescribeTrails", "LookupEvents", "GetTrailStatus", "GetEventSelectors"], Reconnaissance),
    ("guardduty", &["ListDetectors", "GetDetector", "ListFindings"], Reconnaissance),
    ("organizations", &["ListAccounts", "DescribeOrganization"], Reconnaissance),
    ("ce", &["GetCostAndUsage"], Reconnaissance),
    ("secretsmanager", &["ListSecrets"], Reconnaissance),
    ("ssm", &["DescribeParameters", "DescribeInstanceInformation"], Reconnaissance),
    ("bedrock", &["GetFoundationModelAvailability", "ListFoundationModels"], Reconnaissance),
    (
        "iam",
        &[
            "CreateUser",
            "CreateAccessKey",
            "UpdateAccessKey",
            "CreateLoginProfile",
            "UpdateLoginProfile",
            "CreateRole",
            "UpdateAssumeRolePolicy",
            "AttachUserPolicy",
            "AttachRolePolicy",
            "AttachGroupPolicy",
            "PutUserPolicy",
            "PutRolePolicy",
            "PutGroupPolicy",
            "CreatePolicy",
            "CreatePolicyVersion",
            "SetDefaultPolicyVersion",
            "AddUserToGroup",
            "CreateGroup",
            "CreateInstanceProfile",
            "AddRoleToInstanceProfile",
            "EnableMFADevice",
            "CreateVirtualMFADevice",
            "DeactivateMFADevice",
            "UploadSSHPublicKey",
            "UploadSigningCertificate",
            "CreateServiceSpecificCredential",
            "CreateSAMLProvider",
            "UpdateSAMLProvider",
            "CreateOpenIDConnectProvider",
            "AddClientIDToOpenIDConnectProvider",
            "UpdateOpenIDConnectProviderThumbprint",
        ],
        Persistence,
    ),
    ("sts", &["GetFederationToken", "GetSessionToken"], Persistence),
    ("signin", &["GetSigninToken", "ConsoleLogin"], Persistence),
    ("rolesanywhere", &["CreateTrustAnchor", "CreateProfile"], Persistence),
    (
        "lambda",
        &[
            "CreateFunction",
            "UpdateFunctionCode",
            "UpdateFunctionConfiguration",
            "AddPermission",
            "CreateFunctionUrlConfig",
            "CreateEventSourceMapping",
            "PublishLayerVersion",
        ],
        Persistence,
    ),
    ("events", &["PutRule", "PutTargets"], Persistence),
    ("ec2", &["RunInstances", "ImportKeyPair", "CreateKeyPair", "AuthorizeSecurityGroupIngress"], Persistence),
    ("ec2-instance-connect", &["SendSSHPublicKey", "SendSerialConsoleSSHPublicKey"], Persistence),
    ("ssm", &["SendCommand", "StartSession", "CreateActivation"], Persistence),
    ("ecs", &["RegisterTaskDefinition"], Persistence),
    (
        "iam",
        &[
            "DeleteUserPermissionsBoundary",
            "DeleteRolePermissionsBoundary",
            "PutUserPermissionsBoundary",
            "PutRolePermissionsBoundary",
            "DetachUserPolicy",
            "DetachRolePolicy",
            "DetachGroupPolicy",
        ],
        PrivilegeEscalation,
    ),
    ("ec2", &["AssociateIamInstanceProfile", "ReplaceIamInstanceProfileAssociation"], PrivilegeEscalation),
    ("glue", &["CreateDevEndpoint", "UpdateDevEndpoint"], PrivilegeEscalation),
    ("cloudformation", &["CreateStack"], PrivilegeEscalation),
    ("datapipeline", &["CreatePipeline"], PrivilegeEscalation),
    ("codebuild", &["CreateProject"], PrivilegeEscalation),
    ("sagemaker", &["UpdateNotebookInstance", "CreateProcessingJob"], PrivilegeEscalation),
    ("cognito-identity", &["GetId", "GetCredentialsForIdentity"], PrivilegeEscalation),
    ("eks", &["CreateAccessEntry", "AssociateAccessPolicy"], PrivilegeEscalation),
    ("sts", &["AssumeRole"], PrivilegeEscalation),
    (
        "cloudtrail",
        &[
            "StopLogging",
            "DeleteTrail",
            "UpdateTrail",
            "PutEventSelectors",
            "PutInsightSelectors",
            "DeleteEventDataStore",
        ],
        DefenseEvasion,
    ),
    ("s3", &["PutBucketLifecycle", "PutBucketLifecycleConfiguration", "DeleteBucket"], DefenseEvasion),
    (
        "guardduty",
        &[
            "DeleteDetector",
            "UpdateDetector",
            "CreateIPSet",
            "UpdateIPSet",
            "CreateFilter",
            "DeletePublishingDestination",
            "DisassociateFromAdministratorAccount",
        ],
        DefenseEvasion,
    ),
    (
        "config",
        &["StopConfigurationRecorder", "DeleteConfigurationRecorder", "DeleteDeliveryChannel", "DeleteConfigRule"],
        DefenseEvasion,
    ),
    ("ec2", &["DeleteFlowLogs"], DefenseEvasion),
    ("route53resolver", &["DeleteResolverQueryLogConfig"], DefenseEvasion),
    ("securityhub", &["BatchUpdateFindings", "DeleteInsight", "DisableSecurityHub"], DefenseEvasion),
    ("access-analyzer", &["DeleteAnalyzer"], DefenseEvasion),
    ("organizations", &["LeaveOrganization"], DefenseEvasion),
    ("monitoring", &["DeleteAlarms", "DisableAlarmActions"], DefenseEvasion),
    ("logs", &["DeleteLogGroup"], DefenseEvasion),
    ("iam", &["UpdateAccountPasswordPolicy", "DeleteAccountPasswordPolicy"], DefenseEvasion),
    (
        "s3",
        &[
            "GetObject",
            "ListObjects",
            "ListObjectsV2",
            "CopyObject",
            "PutBucketPolicy",
            "PutBucketAcl",
            "DeleteBucketPublicAccessBlock",
            "PutBucketReplication",
            "PutBucketVersioning",
        ],
        Exfiltration,
    ),
    ("secretsmanager", &["GetSecretValue", "BatchGetSecretValue"], Exfiltration),
    ("ssm", &["GetParameter", "GetParameters", "GetParametersByPath"], Exfiltration),
    ("kms", &["Decrypt", "CreateGrant", "PutKeyPolicy", "ScheduleKeyDeletion", "DisableKey"], Exfiltration),
    (
        "rds",
        &[
            "ModifyDBSnapshotAttribute",
            "ModifyDBClusterSnapshotAttribute",
            "CreateDBSnapshot",
            "CopyDBSnapshot",
            "RestoreDBInstanceFromDBSnapshot",
            "StartExportTask",
        ],
        Exfiltration,
    ),
    (
        "ec2",
        &[
            "ModifySnapshotAttribute",
            "ModifyImageAttribute",
            "CreateSnapshot",
            "CreateInstanceExportTask",
            "GetPasswordData",
        ],
        Exfiltration,
    ),
    ("dynamodb", &["ExportTableToPointInTime"], Exfiltration),
    ("lambda", &["GetFunction"], Exfiltration),
    ("bedrock", &["InvokeModel", "InvokeModelWithResponseStream", "Converse", "ConverseStream"], Exfiltration),
    (
        "account",
        &[
            "PutAlternateContact",
            "DeleteAlternateContact",
            "PutContactInformation",
            "PutAccountName",
            "StartPrimaryEmailUpdate",
            "AcceptPrimaryEmailUpdate",
            "EnableRegion",
            "DisableRegion",
        ],
        AccountLevel,
    ),
    ("organizations", &["CreateAccount", "InviteAccountToOrganization"], AccountLevel),
    ("servicequotas", &["RequestServiceQuotaIncrease"], AccountLevel),
    (
        "ses",
        &[
            "GetSendQuota",
            "GetAccountSendingEnabled",
            "ListIdentities",
            "GetIdentityVerificationAttributes",
            "GetAccount",
            "ListEmailIdentities",
            "GetSendStatistics",
            "VerifyEmailIdentity",
            "VerifyEmailAddress",
            "VerifyDomainIdentity",
            "VerifyDomainDkim",
            "CreateEmailIdentity",
            "PutIdentityPolicy",
            "DeleteIdentity",
            "DeleteIdentityPolicy",
            "UpdateAccountSendingEnabled",
            "PutAccountDetails",
            "CreateReceiptRule",
            "UpdateReceiptRule",
            "DeleteReceiptRule",
            "CreateReceiptRuleSet",
            "DeleteReceiptRuleSet",
        ],
        SesAbuse,
    ),
    ("sns", &["GetSMSAttributes", "GetSMSSandboxAccountStatus"], SesAbuse),
];

/// Events on another principal that escalate when done to someone else.
const ON_OTHERS_ESCALATE: &[&str] = &[
    "CreateAccessKey",
    "CreateLoginProfile",
    "UpdateLoginProfile",
    "AttachUserPolicy",
    "PutUserPolicy",
    "AddUserToGroup",
    "CreatePolicyVersion",
    "SetDefaultPolicyVersion",
    "AttachRolePolicy",
    "PutRolePolicy",
    "AttachGroupPolicy",
    "PutGroupPolicy",
    "UpdateAssumeRolePolicy",
];

/// The meaning of one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Classification {
    pub categories: Vec<Category>,
    /// The call failed (`errorCode`): an attempt, reported apart from what succeeded.
    pub failed: bool,
    /// Why, when a rule needed context (`on another user`, `root`, …).
    pub notes: Vec<String>,
}

impl Classification {
    pub fn is_notable(&self) -> bool {
        !self.categories.is_empty()
    }
}

fn service(event_source: &str) -> &str {
    event_source.strip_suffix(".amazonaws.com").unwrap_or(event_source)
}

/// Lambda's API-versioned names (`AddPermission20150331v2`) match their base name.
fn base_name<'a>(service: &str, name: &'a str) -> &'a str {
    if service == "lambda" { name.trim_end_matches(|c: char| c.is_ascii_digit() || c == 'v') } else { name }
}

fn request_field(rec: &Record, field: &str) -> Option<String> {
    let raw = rec.request_parameters?;
    let v: serde_json::Value = serde_json::from_str(raw.get()).ok()?;
    v.get(field)?.as_str().map(str::to_string)
}

pub fn classify(rec: &Record) -> Classification {
    let mut out = Classification { categories: Vec::new(), failed: rec.failed(), notes: Vec::new() };
    let (Some(source), Some(name)) = (rec.event_source.get(), rec.event_name.get()) else {
        return out;
    };
    let service = service(source);
    let name = base_name(service, name);
    for (svc, names, category) in RULES {
        if *svc == service && names.contains(&name) && !out.categories.contains(category) {
            out.categories.push(*category);
        }
    }
    // Context that changes the meaning.
    if service == "iam" && ON_OTHERS_ESCALATE.contains(&name) {
        let target = request_field(rec, "userName").or_else(|| request_field(rec, "roleName"));
        let actor = rec.user_identity.as_ref().and_then(|u| u.user_name.get()).map(str::to_string);
        if let Some(target) = target.filter(|t| Some(t) != actor.as_ref()) {
            out.categories.push(PrivilegeEscalation);
            out.notes.push(format!("on another principal ({target})"));
        }
    }
    if service == "iam"
        && name == "CreateUser"
        && request_field(rec, "userName").is_some_and(|u| u.starts_with("ses-smtp-user."))
    {
        out.categories.push(SesAbuse);
        out.notes.push("SES SMTP user".into());
    }
    if service == "ec2"
        && name == "RunInstances"
        && rec.request_parameters.is_some_and(|r| r.get().contains("iamInstanceProfile"))
    {
        out.categories.push(PrivilegeEscalation);
        out.notes.push("instance launched with an instance profile".into());
    }
    if service == "ec2"
        && matches!(name, "ModifyInstanceAttribute" | "DescribeInstanceAttribute")
        && rec.request_parameters.is_some_and(|r| r.get().contains("userData"))
    {
        out.categories.push(if name == "ModifyInstanceAttribute" { Persistence } else { Reconnaissance });
        out.notes.push("instance user data".into());
    }
    if rec.identity_type() == Some("Root") && !out.categories.contains(&AccountLevel) {
        out.categories.push(AccountLevel);
        out.notes.push("root user".into());
    }
    out.categories.sort();
    out.categories.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn classify_json(text: &str) -> Classification {
        let raw: &RawValue = serde_json::from_str(text).unwrap();
        classify(&Record::parse(raw).unwrap())
    }

    #[test]
    fn a_key_for_another_user_is_a_backdoor_and_an_escalation() {
        let other = classify_json(
            r#"{"eventSource":"iam.amazonaws.com","eventName":"CreateAccessKey","userIdentity":{"userName":"app"},"requestParameters":{"userName":"backdoor"}}"#,
        );
        assert_eq!(other.categories, vec![Persistence, PrivilegeEscalation]);
        let own = classify_json(
            r#"{"eventSource":"iam.amazonaws.com","eventName":"CreateAccessKey","userIdentity":{"userName":"app"},"requestParameters":{"userName":"app"}}"#,
        );
        assert_eq!(own.categories, vec![Persistence]);
    }

    #[test]
    fn lambda_versioned_names_failed_calls_and_root() {
        let c = classify_json(
            r#"{"eventSource":"lambda.amazonaws.com","eventName":"AddPermission20150331v2","errorCode":"AccessDenied"}"#,
        );
        assert_eq!(c.categories, vec![Persistence]);
        assert!(c.failed);
        let c = classify_json(
            r#"{"eventSource":"s3.amazonaws.com","eventName":"ListBuckets","userIdentity":{"type":"Root"}}"#,
        );
        assert_eq!(c.categories, vec![Reconnaissance, AccountLevel]);
        let c = classify_json(r#"{"eventSource":"ec2.amazonaws.com","eventName":"DescribeVolumes"}"#);
        assert!(!c.is_notable());
    }
}
