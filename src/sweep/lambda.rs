//! Lambda functions and layers created (or changed) in the window.
//!
//! A function is a backdoor that runs on a schedule or a trigger with its own role, and a layer can
//! slip code into functions that already run. Lambda keeps no creation time for a function, only the
//! last change, so a function changed in the window is a finding too: either way someone with the
//! key's rights touched it. The plan throttles it to zero concurrency, which stops it running and
//! keeps its code and settings as evidence; undo gives back the concurrency it had.

use std::time::SystemTime;

use serde_json::json;

use super::actions::SweepAction;
use super::{Cx, Found, Item, Planned, Problem, finding, rfc3339};
use crate::incident::model::{Action, Severity, Undo};

/// Lambda writes `2026-11-28T12:11:58.123+0000`: an offset without a colon, which RFC 3339 wants.
pub(super) fn lambda_time(s: &str) -> Option<SystemTime> {
    rekey_trail::time::parse(s).or_else(|| {
        let (head, tail) = s.split_at(s.len().checked_sub(5)?);
        let fixed = tail.starts_with(['+', '-']).then(|| format!("{head}{}:{}", &tail[..3], &tail[3..]))?;
        rekey_trail::time::parse(&fixed)
    })
}

pub(super) async fn functions(cx: &Cx) -> Result<Found, Problem> {
    let pages =
        cx.c.lambda
            .list_functions()
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| Problem::sdk("lambda:ListFunctions", &e))?;
    let mut found = Found::default();
    let mut seen = 0;
    let region = cx.region();
    for fc in pages.iter().flat_map(|p| p.functions()) {
        seen += 1;
        let changed = fc.last_modified().and_then(lambda_time);
        if !cx.in_window(changed) {
            found.in_use |= cx.before_window(changed);
            continue;
        }
        let Some(name) = fc.function_name() else { continue };
        let mut f = finding(
            "lambda_function",
            Severity::High,
            region,
            name,
            fc.function_arn().map(str::to_string).unwrap_or_else(|| cx.arn("lambda", &format!("function:{name}"))),
            format!("Lambda function {name} in {region} created or changed in the window"),
            "A function created or changed in the window runs the attacker's code on a trigger or schedule, with \
             its own role, after the key is rotated (Lambda keeps no creation time: this is its last change).",
        );
        f.created = rfc3339(changed);
        f.evidence = json!({
            "last_modified": fc.last_modified(),
            "runtime": fc.runtime().map(|r| r.as_str()),
            "role": fc.role(),
            "handler": fc.handler(),
            "code_size": fc.code_size(),
            "layers": fc.layers().iter().filter_map(|l| l.arn()).collect::<Vec<_>>(),
        });
        // Undo must give back what it had, so read it now.
        let previous = match cx.c.lambda.get_function_concurrency().function_name(name).send().await {
            Ok(o) => Ok(o.reserved_concurrent_executions()),
            Err(e) => Err(crate::aws::error_text(&e)),
        };
        let actions = match previous {
            Ok(previous_reserved) => vec![Planned {
                description: format!("throttle Lambda function {name} in {region} to zero concurrency (code kept)"),
                action: Action::Sweep(SweepAction::ThrottleFunction {
                    region: region.to_string(),
                    function_name: name.to_string(),
                    previous_reserved,
                }),
                undo: Undo::Action {
                    action: Action::Sweep(SweepAction::UnthrottleFunction {
                        region: region.to_string(),
                        function_name: name.to_string(),
                        previous_reserved,
                    }),
                },
            }],
            Err(e) => {
                found.gaps.push(format!("lambda:GetFunctionConcurrency {name}: {e}; no throttle planned for it"));
                Vec::new()
            }
        };
        found.items.push(Item { finding: f, actions });
    }
    found.seen.push(("Lambda functions", seen));
    Ok(found)
}

pub(super) async fn layers(cx: &Cx) -> Result<Found, Problem> {
    let pages =
        cx.c.lambda
            .list_layers()
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| Problem::sdk("lambda:ListLayers", &e))?;
    let mut found = Found::default();
    let mut seen = 0;
    let region = cx.region();
    for layer in pages.iter().flat_map(|p| p.layers()) {
        seen += 1;
        let latest = layer.latest_matching_version();
        let created = latest.and_then(|v| v.created_date()).and_then(lambda_time);
        if !cx.in_window(created) {
            found.in_use |= cx.before_window(created);
            continue;
        }
        let Some(name) = layer.layer_name() else { continue };
        let mut f = finding(
            "lambda_layer",
            Severity::Medium,
            region,
            name,
            layer.layer_arn().map(str::to_string).unwrap_or_else(|| cx.arn("lambda", &format!("layer:{name}"))),
            format!("Lambda layer {name} in {region} has a version published in the window"),
            "A layer version published in the window can carry code into any function that uses it.",
        );
        f.created = rfc3339(created);
        f.evidence = json!({
            "version_arn": latest.and_then(|v| v.layer_version_arn()),
            "version": latest.map(|v| v.version()),
            "created_date": latest.and_then(|v| v.created_date()),
        });
        found.items.push(Item { finding: f, actions: Vec::new() });
    }
    found.seen.push(("Lambda layers", seen));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_offsets_without_a_colon_parse() {
        let a = lambda_time("2026-11-28T12:11:58.123+0000").unwrap();
        assert_eq!(rekey_trail::time::format(a), "2026-11-28T12:11:58Z");
        let b = lambda_time("2026-11-28T14:11:58.123+0200").unwrap();
        assert_eq!(a, b);
        assert!(lambda_time("2026-12-02T00:02:45.079396000Z").is_some());
        assert!(lambda_time("nonsense").is_none());
    }
}
