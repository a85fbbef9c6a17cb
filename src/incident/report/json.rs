//! `report.json` and `plan.json`: the model as is; its field names are the interface.

use std::io;

use super::{Plan, Report};

pub(super) fn report(report: &Report) -> io::Result<String> {
    Ok(serde_json::to_string_pretty(report).map_err(io::Error::other)? + "\n")
}

pub(super) fn plan(plan: &Plan) -> io::Result<String> {
    Ok(serde_json::to_string_pretty(plan).map_err(io::Error::other)? + "\n")
}
