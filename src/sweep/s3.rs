//! S3 buckets: policies and ACLs that grant public or foreign-account access, and buckets created in
//! the window.
//!
//! One bucket-policy statement naming the attacker's account is enough to keep reading the data
//! after the key is rotated; S3 keeps no time for it, so every such grant is a finding whenever it
//! was made. The plan removes that statement and keeps the whole policy for undo. ACL grants are
//! findings too (an ACL is rewritten whole, so rekey leaves the change to a person). Buckets are a
//! global listing; each is read in its own Region, several at once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::SystemTime;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::Type;
use serde_json::{Value, json};

use super::actions::PolicyHolder;
use super::clients::s3_client;
use super::resource_policies::grant_items;
use super::{Cx, Found, Item, Problem, finding, rfc3339, time_of};
use crate::incident::model::Severity;

/// Buckets read at once (three requests each).
const PARALLEL_BUCKETS: usize = 8;

pub(super) async fn buckets(cx: Arc<Cx>) -> Result<Found, Problem> {
    let out = cx.c.s3.list_buckets().send().await.map_err(|e| Problem::sdk("s3:ListBuckets", &e))?;
    let owner = out.owner().and_then(|o| o.id()).map(str::to_string);
    let mut buckets: Vec<(String, Option<SystemTime>, Option<String>)> = out
        .buckets()
        .iter()
        .filter_map(|b| {
            Some((b.name()?.to_string(), time_of(b.creation_date()), b.bucket_region().map(str::to_string)))
        })
        .collect();
    let mut found = Found::default();
    found.seen.push(("buckets", buckets.len() as u64));
    buckets.sort_by_key(|b| std::cmp::Reverse(b.1));
    let total = buckets.len();
    if total > cx.max_items {
        found.gaps.push(format!("only the newest {} of {total} buckets were checked", cx.max_items));
        buckets.truncate(cx.max_items);
    }
    let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL_BUCKETS));
    let mut tasks = tokio::task::JoinSet::new();
    for (name, created, region) in buckets {
        let (cx, limit, owner) = (cx.clone(), limit.clone(), owner.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            if !cx.time_left() {
                return Err(format!("{name}: not read before the deadline"));
            }
            bucket(&cx, &name, created, region, owner.as_deref()).await
        });
    }
    let mut used: BTreeSet<String> = BTreeSet::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(b)) => {
                if b.used_before {
                    used.insert(b.region);
                }
                found.items.extend(b.items);
                found.gaps.extend(b.gaps);
            }
            Ok(Err(gap)) => found.gaps.push(gap),
            Err(_) => found.gaps.push("a bucket check stopped unexpectedly (a bug in rekey)".into()),
        }
    }
    found.used_regions = used.into_iter().collect();
    Ok(found)
}

struct Bucket {
    region: String,
    used_before: bool,
    items: Vec<Item>,
    gaps: Vec<String>,
}

async fn bucket(
    cx: &Cx,
    name: &str,
    created: Option<SystemTime>,
    region: Option<String>,
    owner: Option<&str>,
) -> Result<Bucket, String> {
    let region = match region {
        Some(r) => r,
        None => match cx.c.s3.get_bucket_location().bucket(name).send().await {
            // No constraint is us-east-1; `EU` is the old name of eu-west-1.
            Ok(o) => match o.location_constraint().map(|c| c.as_str()) {
                None | Some("") => "us-east-1".to_string(),
                Some("EU") => "eu-west-1".to_string(),
                Some(r) => r.to_string(),
            },
            Err(e) => return Err(format!("s3:GetBucketLocation {name}: {}", crate::aws::error_text(&e))),
        },
    };
    let s3 = s3_client(&cx.sdk, &region, &cx.c.counter);
    let arn = format!("arn:aws:s3:::{name}");
    let mut out =
        Bucket { region: region.clone(), used_before: cx.before_window(created), items: Vec::new(), gaps: Vec::new() };
    if cx.in_window(created) {
        let mut f = finding(
            "bucket_created",
            Severity::Low,
            &region,
            name,
            arn.clone(),
            format!("bucket {name} created in {region} in the window"),
            "A bucket created in the window may be where data was staged for taking out; check what it holds and \
             who can read it.",
        );
        f.created = rfc3339(created);
        f.evidence = json!({"creation_date": f.created});
        out.items.push(Item { finding: f, actions: Vec::new() });
    }
    match s3.get_bucket_policy().bucket(name).send().await {
        Ok(o) => {
            if let Some(policy) = o.policy().and_then(|p| serde_json::from_str::<Value>(p).ok()) {
                let mut items = grant_items(
                    cx,
                    "bucket_policy",
                    PolicyHolder::Bucket { bucket: name.to_string(), region: region.clone() },
                    name,
                    arn.clone(),
                    &policy,
                    "A bucket policy that grants another account (or anyone) access lets it read or change the data \
                     with its own credentials, whatever happens to the leaked key.",
                );
                for i in &mut items {
                    i.finding.created = rfc3339(created);
                }
                out.items.extend(items);
            }
        }
        Err(e) if e.code() == Some("NoSuchBucketPolicy") => {}
        Err(e) => out.gaps.push(format!("s3:GetBucketPolicy {name}: {}", crate::aws::error_text(&e))),
    }
    match s3.get_bucket_acl().bucket(name).send().await {
        Ok(acl) => {
            let owner = acl.owner().and_then(|o| o.id()).or(owner);
            for g in acl.grants() {
                let Some(grantee) = g.grantee() else { continue };
                let uri = grantee.uri().unwrap_or_default();
                let who = match grantee.r#type() {
                    Type::Group if uri.ends_with("/AllUsers") => "anyone (public)".to_string(),
                    Type::Group if uri.ends_with("/AuthenticatedUsers") => {
                        "any AWS account (authenticated users)".to_string()
                    }
                    Type::CanonicalUser if grantee.id().is_some() && grantee.id() != owner => {
                        format!("canonical user {}", grantee.id().unwrap_or_default())
                    }
                    Type::AmazonCustomerByEmail => {
                        format!("the account of {}", grantee.email_address().unwrap_or("an email address"))
                    }
                    _ => continue,
                };
                let permission = g.permission().map(|p| p.as_str().to_string()).unwrap_or_default();
                let public = who.starts_with("any");
                let mut f = finding(
                    "bucket_acl",
                    if public { Severity::Critical } else { Severity::High },
                    &region,
                    name,
                    arn.clone(),
                    format!("bucket {name}: ACL grants {permission} to {who}"),
                    "An ACL grant to anyone or to another account's canonical user exposes the bucket outside the \
                     account. rekey plans no step (an ACL is replaced whole): set the ACL back to private with \
                     `aws s3api put-bucket-acl --acl private --bucket NAME` once reviewed.",
                );
                f.created = rfc3339(created);
                f.evidence =
                    json!({"grantee": who, "permission": permission, "grantee_type": grantee.r#type().as_str()});
                out.items.push(Item { finding: f, actions: Vec::new() });
            }
        }
        Err(e) => out.gaps.push(format!("s3:GetBucketAcl {name}: {}", crate::aws::error_text(&e))),
    }
    Ok(out)
}
