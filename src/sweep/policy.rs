//! Which statements of a resource policy (bucket, secret, KMS key) let someone outside the account in.
//!
//! A leaked key's owner can hand data to the attacker's own account with one policy statement, and
//! no later key rotation takes that back. Only `Allow` statements grant anything; a wildcard
//! principal is public unless a condition pins the caller to accounts, an organization or a
//! network, in which case the accounts it names decide.

use serde_json::Value;

/// A statement that grants access to someone outside the account.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub statement: Value,
    pub sid: Option<String>,
    /// Anyone at all (a wildcard principal with no limiting condition, or `NotPrincipal`).
    pub public: bool,
    /// Other accounts it names.
    pub accounts: Vec<String>,
    pub actions: Vec<String>,
}

impl Grant {
    /// `public`, or `account 999999999999`.
    pub fn who(&self) -> String {
        match (self.public, self.accounts.as_slice()) {
            (true, _) => "anyone (public)".to_string(),
            (false, [one]) => format!("account {one}"),
            (false, many) => format!("accounts {}", many.join(", ")),
        }
    }
}

/// Condition keys that tie a wildcard principal to accounts, an organization or a network.
const LIMITING_KEYS: &[&str] = &[
    "aws:principalaccount",
    "aws:sourceaccount",
    "aws:sourceowner",
    "kms:calleraccount",
    "aws:principalorgid",
    "aws:principalorgpaths",
    "aws:sourceorgid",
    "aws:sourceorgpaths",
    "aws:principalarn",
    "aws:sourcearn",
    "aws:sourcevpc",
    "aws:sourcevpce",
    "aws:sourceip",
    "aws:userid",
    "aws:username",
];

/// The statements of `policy` that grant access to anyone outside `own_account`.
pub fn outside_grants(policy: &Value, own_account: &str) -> Vec<Grant> {
    statements(policy).into_iter().filter_map(|s| outside_grant(s, own_account)).collect()
}

pub fn statements(policy: &Value) -> Vec<&Value> {
    match policy.get("Statement") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v @ Value::Object(_)) => vec![v],
        _ => Vec::new(),
    }
}

fn outside_grant(s: &Value, own: &str) -> Option<Grant> {
    if s.get("Effect").and_then(Value::as_str).is_none_or(|e| !e.eq_ignore_ascii_case("allow")) {
        return None;
    }
    let sid = s.get("Sid").and_then(Value::as_str).filter(|v| !v.is_empty()).map(str::to_string);
    let actions = strings(s.get("Action").or_else(|| s.get("NotAction")));
    let grant = |public: bool, accounts: Vec<String>| {
        Some(Grant { statement: s.clone(), sid: sid.clone(), public, accounts, actions: actions.clone() })
    };
    // Allow with NotPrincipal: everyone but the listed principals.
    if s.get("NotPrincipal").is_some() {
        return grant(true, Vec::new());
    }
    let principals = aws_principals(s.get("Principal")?);
    let mut accounts: Vec<String> = Vec::new();
    let mut wildcard = false;
    for p in &principals {
        if p == "*" {
            wildcard = true;
        } else if let Some(a) = account_of(p)
            && a != own
            && !accounts.contains(&a)
        {
            accounts.push(a);
        }
    }
    if wildcard {
        match limiting_accounts(s.get("Condition")) {
            // Pinned to the own account, an organization or a network: not outside.
            Some(pinned) => {
                for a in pinned.into_iter().filter(|a| a != own) {
                    if !accounts.contains(&a) {
                        accounts.push(a);
                    }
                }
            }
            None => return grant(true, accounts),
        }
    }
    if accounts.is_empty() { None } else { grant(false, accounts) }
}

/// The `AWS` principals of a statement (`"*"` included); service, federated and canonical-user
/// principals are AWS's own services, identity providers and CloudFront, not other accounts.
fn aws_principals(p: &Value) -> Vec<String> {
    match p {
        Value::String(s) if s == "*" => vec!["*".to_string()],
        Value::Object(m) => strings(m.get("AWS")),
        _ => Vec::new(),
    }
}

/// The account of `arn:aws:iam::123456789012:…` or a bare account id; none for unique ids and
/// principals that are not accounts (`arn:aws:iam::cloudfront:user/…`).
fn account_of(p: &str) -> Option<String> {
    let candidate = if p.starts_with("arn:") { p.split(':').nth(4)? } else { p };
    (candidate.len() == 12 && candidate.bytes().all(|b| b.is_ascii_digit())).then(|| candidate.to_string())
}

/// When a condition limits a wildcard principal: the accounts it names (possibly none, for an
/// organization or a network). None: nothing limits it.
fn limiting_accounts(condition: Option<&Value>) -> Option<Vec<String>> {
    let ops = condition?.as_object()?;
    let mut limited = false;
    let mut accounts = Vec::new();
    for (op, keys) in ops {
        // A negated operator (StringNotEquals …) excludes, it does not limit.
        if op.contains("Not") {
            continue;
        }
        let Some(keys) = keys.as_object() else { continue };
        for (key, values) in keys {
            if !LIMITING_KEYS.contains(&key.to_ascii_lowercase().as_str()) {
                continue;
            }
            limited = true;
            for v in strings(Some(values)) {
                if let Some(a) = account_of(&v)
                    && !accounts.contains(&a)
                {
                    accounts.push(a);
                }
            }
        }
    }
    limited.then_some(accounts)
}

pub fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

/// `policy` without the statements equal to `statement`; None when none was there.
pub fn without_statement(policy: &Value, statement: &Value) -> Option<Value> {
    let all = statements(policy);
    if !all.contains(&statement) {
        return None;
    }
    let kept: Vec<Value> = all.into_iter().filter(|s| *s != statement).cloned().collect();
    let mut out = policy.clone();
    if let Some(m) = out.as_object_mut() {
        m.insert("Statement".into(), Value::Array(kept));
    }
    Some(out)
}

/// `policy` with `statement` added back (a policy that already holds it is returned unchanged).
pub fn with_statement(policy: &Value, statement: &Value) -> Value {
    let mut all: Vec<Value> = statements(policy).into_iter().cloned().collect();
    if !all.contains(statement) {
        all.push(statement.clone());
    }
    let mut out = policy.clone();
    match out.as_object_mut() {
        Some(m) => {
            m.insert("Statement".into(), Value::Array(all));
        }
        None => out = serde_json::json!({"Version": "2012-10-17", "Statement": all}),
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const OWN: &str = "123456789012";

    #[test]
    fn another_accounts_principal_is_an_outside_grant() {
        let p = json!({"Statement": [
            {"Sid": "own", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "s3:GetObject"},
            {"Sid": "x", "Effect": "Allow", "Principal": {"AWS": ["arn:aws:iam::999999999999:root"]}, "Action": ["s3:GetObject"]},
            {"Effect": "Deny", "Principal": "*", "Action": "*"}
        ]});
        let g = outside_grants(&p, OWN);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].accounts, vec!["999999999999".to_string()]);
        assert_eq!(g[0].sid.as_deref(), Some("x"));
        assert!(!g[0].public);
        assert_eq!(g[0].who(), "account 999999999999");
    }

    #[test]
    fn a_wildcard_is_public_unless_a_condition_pins_it() {
        let public = json!({"Statement": {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject"}});
        assert!(outside_grants(&public, OWN)[0].public);
        let aws_star = json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*"}]});
        assert!(outside_grants(&aws_star, OWN)[0].public);
        // The shape of an AWS-managed KMS key policy: everyone in this account, through one service.
        let managed = json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:Decrypt",
            "Condition": {"StringEquals": {"kms:CallerAccount": "123456789012", "kms:ViaService": "s3.us-east-1.amazonaws.com"}}}]});
        assert!(outside_grants(&managed, OWN).is_empty());
        let org = json!({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
            "Condition": {"StringEquals": {"aws:PrincipalOrgID": "o-abc"}}}]});
        assert!(outside_grants(&org, OWN).is_empty());
        let pinned_out = json!({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
            "Condition": {"StringEquals": {"aws:PrincipalAccount": ["999999999999"]}}}]});
        let g = outside_grants(&pinned_out, OWN);
        assert_eq!((g[0].public, g[0].accounts.clone()), (false, vec!["999999999999".to_string()]));
        let negated = json!({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
            "Condition": {"StringNotEquals": {"aws:PrincipalAccount": "999999999999"}}}]});
        assert!(outside_grants(&negated, OWN)[0].public);
        let not_principal = json!({"Statement": [{"Effect": "Allow", "NotPrincipal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "*"}]});
        assert!(outside_grants(&not_principal, OWN)[0].public);
    }

    #[test]
    fn services_and_cloudfront_are_not_other_accounts() {
        let p = json!({"Statement": [
            {"Effect": "Allow", "Principal": {"Service": "cloudtrail.amazonaws.com"}, "Action": "s3:PutObject"},
            {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::cloudfront:user/CloudFront Origin Access Identity E1"}, "Action": "s3:GetObject"},
            {"Effect": "Allow", "Principal": {"AWS": "AIDAEXAMPLEUNIQUEID"}, "Action": "s3:GetObject"}
        ]});
        assert!(outside_grants(&p, OWN).is_empty());
    }

    #[test]
    fn a_statement_comes_out_and_goes_back_with_the_rest_kept() {
        let keep = json!({"Sid": "own", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "s3:GetObject"});
        let bad =
            json!({"Sid": "x", "Effect": "Allow", "Principal": {"AWS": "999999999999"}, "Action": "s3:GetObject"});
        let policy = json!({"Version": "2012-10-17", "Id": "p1", "Statement": [keep.clone(), bad.clone()]});
        let removed = without_statement(&policy, &bad).unwrap();
        assert_eq!(removed, json!({"Version": "2012-10-17", "Id": "p1", "Statement": [keep]}));
        assert_eq!(without_statement(&removed, &bad), None, "already gone");
        assert_eq!(with_statement(&removed, &bad), policy);
        assert_eq!(with_statement(&policy, &bad), policy, "already back");
    }
}
