//! The AWS places a key is deployed to, searched by value in one Region: Secrets Manager secrets,
//! SSM parameters, Lambda environments, and the ECS services whose task definitions hold the key
//! or read it from a secret found here. Read-only; every value is wiped once compared.
//!
//! Reading a value is the only way to find a key stored under a name nobody remembers, so every
//! secret and parameter is read once (CloudTrail records each `GetSecretValue`: say so to whoever
//! watches it). Each service is read up to [`MAX_ITEMS`] resources; beyond, the rest is named in
//! the notes, never skipped silently.

use std::sync::Arc;

use aws_sdk_iam::error::ProvideErrorMetadata;
use zeroize::Zeroizing;

use super::matching::{Fields, find_fields, is_secret_shape, key_in, mentions, scrub};
use super::{Found, Place, Target, Unreadable};
use crate::aws::error_text;

/// Resources of one kind read per Region.
pub const MAX_ITEMS: usize = 2000;
/// Secrets read at the same time.
const CONCURRENCY: usize = 8;

/// A secret that holds the key, for the ECS services that read it.
#[derive(Debug, Clone)]
pub struct FoundSecret {
    pub arn: String,
    pub name: String,
    pub fields: Option<Fields>,
}

/// What a JSON-or-plain value says about the keys.
enum Value {
    /// A JSON object with the key at the top level.
    Object(Fields),
    /// The bare key id.
    Bare(String),
    /// The key id somewhere else in it (nested, in text).
    Elsewhere(String),
    Absent,
}

fn classify(text: &str, keys: &[String]) -> Value {
    let Some(mentioned) = mentions(text.as_bytes(), keys) else { return Value::Absent };
    if let Some(k) = key_in(text, keys) {
        return Value::Bare(k.to_string());
    }
    let mut parsed: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => return Value::Elsewhere(mentioned),
    };
    let fields = parsed
        .as_object()
        .and_then(|o| find_fields(o.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.as_str(), s))), keys));
    scrub(&mut parsed);
    match fields {
        Some(f) => Value::Object(f),
        None => Value::Elsewhere(mentioned),
    }
}

fn no_spec(place: &str, kind: &'static str, region: &str, evidence: String, why: impl Into<String>) -> Place {
    Place { place: place.to_string(), kind, region: Some(region.to_string()), evidence, why: why.into() }
}

/// Every secret whose current value holds one of `keys`.
pub async fn secrets(sdk: &aws_types::SdkConfig, region: &str, keys: &[String]) -> (Found, Vec<FoundSecret>) {
    let client = aws_sdk_secretsmanager::Client::new(sdk);
    let mut found = Found::default();
    let mut listed: Vec<(String, String)> = Vec::new();
    let mut next: Option<String> = None;
    loop {
        match client.list_secrets().max_results(100).set_next_token(next.clone()).send().await {
            Ok(out) => {
                listed.extend(
                    out.secret_list()
                        .iter()
                        .filter_map(|s| Some((s.arn()?.to_string(), s.name().unwrap_or_default().to_string()))),
                );
                match out.next_token() {
                    Some(t) if listed.len() < MAX_ITEMS && next.as_deref() != Some(t) => next = Some(t.to_string()),
                    Some(_) => {
                        found.notes.push(format!(
                            "{region}: more than {MAX_ITEMS} secrets; only the first {} were read",
                            listed.len()
                        ));
                        break;
                    }
                    None => break,
                }
            }
            Err(e) => {
                found.unreadable.push(Unreadable {
                    place: format!("secretsmanager (list secrets in {region})"),
                    error: error_text(&e),
                });
                return (found, Vec::new());
            }
        }
    }

    let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut reads = tokio::task::JoinSet::new();
    for (arn, name) in listed {
        let (client, limit, keys) = (client.clone(), limit.clone(), keys.to_vec());
        reads.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let out = client.get_secret_value().secret_id(&arn).version_stage("AWSCURRENT").send().await;
            let value = match out {
                Ok(o) => {
                    let text = o.secret_string().map(|s| Zeroizing::new(s.to_string())).or_else(|| {
                        o.secret_binary()
                            .and_then(|b| std::str::from_utf8(b.as_ref()).ok())
                            .map(|s| Zeroizing::new(s.to_string()))
                    });
                    Ok(text.map(|t| classify(&t, &keys)).unwrap_or(Value::Absent))
                }
                Err(e) => Err(match e.code() {
                    // A secret with no current version holds nothing to find.
                    Some("ResourceNotFoundException") => None,
                    _ => Some(error_text(&e)),
                }),
            };
            (arn, name, value)
        });
    }
    let mut holding = Vec::new();
    while let Some(joined) = reads.join_next().await {
        let Ok((arn, name, value)) = joined else { continue };
        let place = format!("secretsmanager:{name}");
        match value {
            Err(Some(error)) => found.unreadable.push(Unreadable { place: format!("{place} ({region})"), error }),
            Err(None) | Ok(Value::Absent) => {}
            Ok(Value::Object(f)) => {
                let evidence = format!("secret {name} in {region}: {}", f.describe("field"));
                match f.options() {
                    Some(opts) => found.targets.push(Target::new(
                        format!("secretsmanager:{name}{opts}"),
                        rekey_adapters::TargetKind::SecretsManager,
                        Some(region),
                        &f.key_id,
                        evidence,
                    )),
                    None => found.other.push(no_spec(
                        &place,
                        "secretsmanager",
                        region,
                        evidence,
                        f.problem.clone().unwrap_or_else(|| "its field names cannot be written in a spec".into()),
                    )),
                }
                holding.push(FoundSecret { arn, name, fields: Some(f) });
            }
            Ok(Value::Bare(k)) => {
                found.other.push(no_spec(
                    &place,
                    "secretsmanager",
                    region,
                    format!("secret {name} in {region} is the bare key id {k}"),
                    "the secretsmanager: target needs the id and the secret together in one JSON object",
                ));
                holding.push(FoundSecret { arn, name, fields: None });
            }
            Ok(Value::Elsewhere(k)) => found.other.push(no_spec(
                &place,
                "secretsmanager",
                region,
                format!("secret {name} in {region} mentions {k}"),
                "not as a top-level field of a JSON object, which is what the secretsmanager: target rewrites",
            )),
        }
    }
    holding.sort_by(|a, b| a.name.cmp(&b.name));
    (found, holding)
}

/// Every SSM parameter (String or SecureString, decrypted) holding one of `keys`: a JSON object,
/// or the bare id beside another parameter holding the secret.
pub async fn parameters(sdk: &aws_types::SdkConfig, region: &str, keys: &[String]) -> Found {
    let client = aws_sdk_ssm::Client::new(sdk);
    let mut found = Found::default();
    let mut names: Vec<String> = Vec::new();
    let mut next: Option<String> = None;
    loop {
        match client.describe_parameters().max_results(50).set_next_token(next.clone()).send().await {
            Ok(out) => {
                names.extend(out.parameters().iter().filter_map(|p| p.name().map(str::to_string)));
                match out.next_token() {
                    Some(t) if names.len() < MAX_ITEMS && next.as_deref() != Some(t) => next = Some(t.to_string()),
                    Some(_) => {
                        found.notes.push(format!(
                            "{region}: more than {MAX_ITEMS} parameters; only the first {} were read",
                            names.len()
                        ));
                        break;
                    }
                    None => break,
                }
            }
            Err(e) => {
                found.unreadable.push(Unreadable {
                    place: format!("ssm (describe parameters in {region})"),
                    error: error_text(&e),
                });
                return found;
            }
        }
    }

    // Only what each value is, never the value: the key id it holds, or that it looks like a secret.
    let mut bare: Vec<(String, String)> = Vec::new();
    let mut secret_like: Vec<String> = Vec::new();
    let mut note = |found: &mut Found, name: &str, text: &str| match classify(text, keys) {
        Value::Absent => {
            if is_secret_shape(text) {
                secret_like.push(name.to_string());
            }
        }
        Value::Bare(k) => bare.push((name.to_string(), k)),
        Value::Object(f) => {
            let evidence = format!("parameter {name} in {region}: {}", f.describe("field"));
            match f.options() {
                Some(opts) => found.targets.push(Target::new(
                    format!("ssm:{name}{opts}"),
                    rekey_adapters::TargetKind::Ssm,
                    Some(region),
                    &f.key_id,
                    evidence,
                )),
                None => found.other.push(no_spec(
                    &format!("ssm:{name}"),
                    "ssm",
                    region,
                    evidence,
                    f.problem.clone().unwrap_or_else(|| "its field names cannot be written in a spec".into()),
                )),
            }
        }
        Value::Elsewhere(k) => found.other.push(no_spec(
            &format!("ssm:{name}"),
            "ssm",
            region,
            format!("parameter {name} in {region} mentions {k}"),
            "not as a top-level field of a JSON object or as the bare value, the two layouts the ssm: target rewrites",
        )),
    };
    for batch in names.chunks(10) {
        match client.get_parameters().set_names(Some(batch.to_vec())).with_decryption(true).send().await {
            Ok(out) => {
                for p in out.parameters() {
                    let text = Zeroizing::new(p.value().unwrap_or_default().to_string());
                    note(&mut found, p.name().unwrap_or_default(), &text);
                }
                for bad in out.invalid_parameters() {
                    found.unreadable.push(Unreadable {
                        place: format!("ssm:{bad} ({region})"),
                        error: "GetParameters listed it as invalid".into(),
                    });
                }
            }
            // One unreadable parameter (its KMS key, a Deny) fails the batch: read them one by one.
            Err(_) => {
                for name in batch {
                    match client.get_parameter().name(name).with_decryption(true).send().await {
                        Ok(out) => {
                            let text =
                                Zeroizing::new(out.parameter().and_then(|p| p.value()).unwrap_or_default().to_string());
                            note(&mut found, name, &text);
                        }
                        Err(e) => found
                            .unreadable
                            .push(Unreadable { place: format!("ssm:{name} ({region})"), error: error_text(&e) }),
                    }
                }
            }
        }
    }

    for (name, key) in bare {
        let parent = |n: &str| n.rsplit_once('/').map(|(p, _)| p.to_string()).unwrap_or_default();
        let near: Vec<&String> = secret_like.iter().filter(|s| parent(s) == parent(&name)).collect();
        let pool: Vec<&String> = if near.is_empty() { secret_like.iter().collect() } else { near };
        let named: Vec<&String> = pool.iter().copied().filter(|s| s.to_ascii_lowercase().contains("secret")).collect();
        let pick = match (pool.as_slice(), named.as_slice()) {
            ([one], _) | (_, [one]) => Some(*one),
            _ => None,
        };
        let evidence = format!("parameter {name} in {region} is the bare key id {key}");
        match pick {
            Some(secret) if !secret.contains(['&', '=', '?', '#']) => found.targets.push(Target::new(
                format!("ssm:{name}?secret-param={secret}"),
                rekey_adapters::TargetKind::Ssm,
                Some(region),
                &key,
                format!("{evidence}; parameter {secret} has the shape of its secret"),
            )),
            _ => found.other.push(no_spec(
                &format!("ssm:{name}"),
                "ssm",
                region,
                evidence,
                if pool.is_empty() {
                    "no parameter holds a value shaped like its secret".to_string()
                } else {
                    format!(
                        "its secret could be in any of {}; name it with ssm:{name}?secret-param=<name>",
                        pool.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    )
                },
            )),
        }
    }
    found
}

/// Every Lambda function whose environment holds one of `keys`.
pub async fn functions(sdk: &aws_types::SdkConfig, region: &str, keys: &[String]) -> Found {
    let client = aws_sdk_lambda::Client::new(sdk);
    let mut found = Found::default();
    let mut seen = 0usize;
    let mut marker: Option<String> = None;
    loop {
        let out = match client.list_functions().max_items(50).set_marker(marker.clone()).send().await {
            Ok(o) => o,
            Err(e) => {
                found
                    .unreadable
                    .push(Unreadable { place: format!("lambda (list functions in {region})"), error: error_text(&e) });
                return found;
            }
        };
        for f in out.functions() {
            seen += 1;
            let name = f.function_name().unwrap_or_default();
            let Some(env) = f.environment() else { continue };
            if let Some(err) = env.error() {
                found.unreadable.push(Unreadable {
                    place: format!("lambda:{name} ({region})"),
                    error: format!(
                        "{}: {}",
                        err.error_code().unwrap_or("environment not readable"),
                        err.message().unwrap_or("no message")
                    ),
                });
                continue;
            }
            let Some(vars) = env.variables() else { continue };
            let Some(fields) = find_fields(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())), keys) else {
                if let Some(k) = vars.values().find_map(|v| mentions(v.as_bytes(), keys)) {
                    found.other.push(no_spec(
                        &format!("lambda:{name}"),
                        "lambda",
                        region,
                        format!("function {name} in {region} mentions {k} in an environment variable"),
                        "not as a variable's whole value",
                    ));
                }
                continue;
            };
            let evidence = format!("function {name} in {region}: {}", fields.describe("variable"));
            match fields.options() {
                Some(opts) => found.targets.push(Target::new(
                    format!("lambda:{name}{opts}"),
                    rekey_adapters::TargetKind::Lambda,
                    Some(region),
                    &fields.key_id,
                    evidence,
                )),
                None => found.other.push(no_spec(
                    &format!("lambda:{name}"),
                    "lambda",
                    region,
                    evidence,
                    fields.problem.clone().unwrap_or_else(|| "its variable names cannot be written in a spec".into()),
                )),
            }
        }
        match out.next_marker() {
            Some(m) if seen < MAX_ITEMS && marker.as_deref() != Some(m) => marker = Some(m.to_string()),
            Some(_) => {
                found.notes.push(format!("{region}: more than {MAX_ITEMS} functions; only the first {seen} were read"));
                break;
            }
            None => break,
        }
    }
    found
}

/// Every ECS service whose current task definition holds one of `keys` in a container's
/// `environment`, or reads it with `secrets[].valueFrom` from one of `secrets`.
pub async fn services(sdk: &aws_types::SdkConfig, region: &str, keys: &[String], secrets: &[FoundSecret]) -> Found {
    let client = aws_sdk_ecs::Client::new(sdk);
    let mut found = Found::default();
    let mut clusters = Vec::new();
    let mut next: Option<String> = None;
    loop {
        match client.list_clusters().set_next_token(next.clone()).send().await {
            Ok(out) => {
                clusters.extend(out.cluster_arns().iter().cloned());
                match out.next_token() {
                    Some(t) if next.as_deref() != Some(t) => next = Some(t.to_string()),
                    _ => break,
                }
            }
            Err(e) => {
                found
                    .unreadable
                    .push(Unreadable { place: format!("ecs (list clusters in {region})"), error: error_text(&e) });
                return found;
            }
        }
    }
    let mut services_seen = 0usize;
    let mut task_defs: std::collections::HashMap<String, Option<aws_sdk_ecs::types::TaskDefinition>> =
        std::collections::HashMap::new();
    for cluster_arn in clusters {
        let cluster = cluster_arn.rsplit('/').next().unwrap_or(&cluster_arn).to_string();
        let mut arns = Vec::new();
        let mut next: Option<String> = None;
        loop {
            match client.list_services().cluster(&cluster_arn).set_next_token(next.clone()).send().await {
                Ok(out) => {
                    arns.extend(out.service_arns().iter().cloned());
                    match out.next_token() {
                        Some(t) if next.as_deref() != Some(t) => next = Some(t.to_string()),
                        _ => break,
                    }
                }
                Err(e) => {
                    found
                        .unreadable
                        .push(Unreadable { place: format!("ecs cluster {cluster} ({region})"), error: error_text(&e) });
                    break;
                }
            }
        }
        for batch in arns.chunks(10) {
            if services_seen >= MAX_ITEMS {
                found.notes.push(format!("{region}: more than {MAX_ITEMS} ECS services; the rest were not read"));
                return found;
            }
            let out = match client
                .describe_services()
                .cluster(&cluster_arn)
                .set_services(Some(batch.to_vec()))
                .send()
                .await
            {
                Ok(o) => o,
                Err(e) => {
                    found.unreadable.push(Unreadable {
                        place: format!("ecs services of {cluster} ({region})"),
                        error: error_text(&e),
                    });
                    continue;
                }
            };
            for svc in out.services() {
                services_seen += 1;
                let service = svc.service_name().unwrap_or_default().to_string();
                let Some(td_arn) = svc.task_definition().map(str::to_string) else { continue };
                if !task_defs.contains_key(&td_arn) {
                    let td = match client.describe_task_definition().task_definition(&td_arn).send().await {
                        Ok(o) => o.task_definition().cloned(),
                        Err(e) => {
                            found.unreadable.push(Unreadable {
                                place: format!("ecs:{cluster}/{service} task definition {td_arn} ({region})"),
                                error: error_text(&e),
                            });
                            None
                        }
                    };
                    task_defs.insert(td_arn.clone(), td);
                }
                let Some(Some(td)) = task_defs.get(&td_arn) else { continue };
                service_place(&mut found, region, &cluster, &service, td, keys, secrets);
            }
        }
    }
    found
}

/// Where one service's task definition takes the key from.
fn service_place(
    found: &mut Found,
    region: &str,
    cluster: &str,
    service: &str,
    td: &aws_sdk_ecs::types::TaskDefinition,
    keys: &[String],
    secrets: &[FoundSecret],
) {
    let place = format!("ecs:{cluster}/{service}");
    let revision = td.task_definition_arn().and_then(|a| a.rsplit('/').next()).unwrap_or("?");
    for c in td.container_definitions() {
        let container = c.name().unwrap_or("?");
        let env = c.environment();
        let pairs = env.iter().filter_map(|kv| Some((kv.name()?, kv.value()?)));
        if let Some(fields) = find_fields(pairs, keys) {
            let evidence = format!(
                "service {cluster}/{service} in {region}: task definition {revision}, container {container}: environment {}",
                fields.describe("variable")
            );
            match fields.options() {
                Some(opts) => found.targets.push(Target::new(
                    format!("{place}{opts}"),
                    rekey_adapters::TargetKind::Ecs,
                    Some(region),
                    &fields.key_id,
                    evidence,
                )),
                None => found.other.push(no_spec(
                    &place,
                    "ecs",
                    region,
                    evidence,
                    fields.problem.clone().unwrap_or_else(|| "its variable names cannot be written in a spec".into()),
                )),
            }
            return;
        }
        // `arn:…:secret:<name>-<6 chars>:<json-key>:<stage>:<version>`: which found secret, which field.
        let mut id_var = None;
        let mut secret_var = None;
        let mut from = None;
        for s in c.secrets() {
            let Some((secret, rest)) =
                secrets.iter().find_map(|f| after_secret_arn(s.value_from(), &f.arn).map(|r| (f, r)))
            else {
                continue;
            };
            let json_key = rest.split(':').next().unwrap_or("");
            from = Some(secret);
            match &secret.fields {
                Some(f) if json_key == f.id_field => id_var = Some(s.name().to_string()),
                Some(f) if Some(json_key) == f.secret_field.as_deref() => secret_var = Some(s.name().to_string()),
                _ => {}
            }
        }
        let Some(secret) = from else { continue };
        let evidence = format!(
            "service {cluster}/{service} in {region}: task definition {revision}, container {container} reads secret {} \
             (secrets[].valueFrom)",
            secret.name
        );
        match (id_var, secret_var) {
            (Some(id), Some(sec)) if !id.contains(['&', '=', '?', '#']) && !sec.contains(['&', '=', '?', '#']) => {
                let f = Fields { id_field: id, key_id: String::new(), secret_field: Some(sec), problem: None };
                let opts = f.options().unwrap_or_default();
                let key = secret.fields.as_ref().map(|f| f.key_id.as_str()).unwrap_or_default();
                found.targets.push(Target::new(
                    format!("{place}{opts}"),
                    rekey_adapters::TargetKind::Ecs,
                    Some(region),
                    key,
                    evidence,
                ));
            }
            _ => found.other.push(no_spec(
                &place,
                "ecs",
                region,
                evidence,
                "its containers do not take the id and the secret as two variables from the secret's JSON keys \
                 (arn:…:secret:NAME:JSON_KEY::), which is what the ecs: target redeploys for",
            )),
        }
        return;
    }
}

/// What follows the secret in a `valueFrom` (`json-key:stage:version`), when it names `arn`: in
/// full, or as the partial ARN without the 6-character suffix Secrets Manager appends.
fn after_secret_arn<'v>(value_from: &'v str, arn: &str) -> Option<&'v str> {
    let partial = match arn.rsplit_once('-') {
        Some((head, tail)) if tail.len() == 6 && tail.bytes().all(|b| b.is_ascii_alphanumeric()) => head,
        _ => arn,
    };
    [arn, partial].into_iter().find_map(|prefix| match value_from.strip_prefix(prefix) {
        Some("") => Some(""),
        Some(rest) => rest.strip_prefix(':'),
        None => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_from_names_a_secret_by_full_or_partial_arn() {
        let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:billing/creds-AbC123";
        assert_eq!(after_secret_arn(&format!("{arn}:svc_id::"), arn), Some("svc_id::"));
        let partial = "arn:aws:secretsmanager:us-east-1:123456789012:secret:billing/creds";
        assert_eq!(after_secret_arn(&format!("{partial}:svc_pw::"), arn), Some("svc_pw::"));
        assert_eq!(after_secret_arn(arn, arn), Some(""));
        assert_eq!(after_secret_arn(&format!("{partial}-other:k::"), arn), None, "another secret");
    }

    #[test]
    fn values_are_told_apart_without_being_kept() {
        let keys = vec!["AKIAEXAMPLE000000001".to_string()];
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        assert!(matches!(classify("AKIAEXAMPLE000000001", &keys), Value::Bare(_)));
        let json = format!(r#"{{"login":"AKIAEXAMPLE000000001","pw":"{secret}"}}"#);
        assert!(matches!(classify(&json, &keys), Value::Object(f) if f.secret_field.as_deref() == Some("pw")));
        let nested = r#"{"aws":{"id":"AKIAEXAMPLE000000001"}}"#;
        assert!(matches!(classify(nested, &keys), Value::Elsewhere(_)));
        assert!(matches!(classify(r#"{"id":"AKIAOTHER00000000002"}"#, &keys), Value::Absent));
    }
}
