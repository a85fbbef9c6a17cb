//! Alternate contacts: compared with the value the timeline recorded before the window, and set
//! back when the attacker changed them (AWS mails security notices to them).

use rekey_trail::time::parse as parse_time;

use aws_sdk_account::types::AlternateContactType;

use super::Hunter;
use super::event::req;
use crate::incident::model::{Action, Severity, TimelineEvent, Undo};

/// The alternate contact types AWS knows, as `GetAlternateContact` spells them.
pub const CONTACT_TYPES: [&str; 3] = ["BILLING", "OPERATIONS", "SECURITY"];

impl Hunter<'_> {
    pub(super) async fn contacts(&mut self, account: &aws_sdk_account::Client) {
        for kind in CONTACT_TYPES {
            let events: Vec<&TimelineEvent> = self
                .timeline
                .iter()
                .filter(|e| !e.failed && e.error_code.is_none())
                .filter(|e| matches!(e.event_name.as_str(), "PutAlternateContact" | "DeleteAlternateContact"))
                .filter(|e| req(e, "alternateContactType").is_some_and(|t| t.eq_ignore_ascii_case(kind)))
                .collect();
            let (during, before): (Vec<&TimelineEvent>, Vec<&TimelineEvent>) =
                events.into_iter().partition(|e| self.in_window(&e.time));
            let during: Vec<&TimelineEvent> = during.into_iter().filter(|e| self.app_source(e).is_none()).collect();
            let before = before
                .into_iter()
                .filter(|e| parse_time(&e.time).is_some_and(|t| t < self.window.0))
                .max_by_key(|e| parse_time(&e.time));
            let old: Option<Option<Contact>> = before.map(|e| contact_of(e, kind));
            let attacker: Option<Option<Contact>> =
                during.iter().max_by_key(|e| parse_time(&e.time)).map(|e| contact_of(e, kind));
            if attacker.is_none() && old.is_none() {
                continue;
            }
            let r =
                account.get_alternate_contact().alternate_contact_type(AlternateContactType::from(kind)).send().await;
            let current: Option<Contact> = match r {
                Ok(out) => out.alternate_contact().map(|c| Contact {
                    kind: kind.to_string(),
                    name: c.name().unwrap_or_default().to_string(),
                    title: c.title().unwrap_or_default().to_string(),
                    email: c.email_address().unwrap_or_default().to_string(),
                    phone: c.phone_number().unwrap_or_default().to_string(),
                }),
                Err(e)
                    if aws_sdk_account::error::ProvideErrorMetadata::code(&e) == Some("ResourceNotFoundException") =>
                {
                    None
                }
                Err(e) => {
                    self.note(format!(
                        "GetAlternateContact {kind}: {}; the {kind} contact was not checked",
                        aws_sdk_account::error::DisplayErrorContext(&e)
                    ));
                    continue;
                }
            };
            let mut evidence: Vec<String> = during.iter().map(|e| e.event_id.clone()).collect();
            let Some(attacker) = attacker else {
                // No change seen in the window, yet it differs from the recorded value: a change the
                // timeline does not hold, which a person must judge.
                let old = old.flatten();
                if !same_contact(old.as_ref(), current.as_ref()) {
                    evidence.extend(before.map(|e| e.event_id.clone()));
                    self.finding(
                        "alternate_contact",
                        Severity::Medium,
                        format!("{kind} alternate contact differs from the value recorded before the window"),
                        kind.to_string(),
                        Some(true),
                        evidence,
                        format!(
                            "was {}, is {}; no change to it is in the timeline",
                            show(old.as_ref()),
                            show(current.as_ref())
                        ),
                    );
                }
                continue;
            };
            let present = same_contact(attacker.as_ref(), current.as_ref());
            let old_known = old.is_some();
            let old = old.flatten();
            let detail = format!(
                "attacker set it to {}; before the window: {}; now: {}",
                show(attacker.as_ref()),
                if old_known { show(old.as_ref()) } else { "not in the timeline".into() },
                show(current.as_ref())
            );
            let f = self.finding(
                "alternate_contact",
                Severity::High,
                format!("attacker changed the {kind} alternate contact"),
                kind.to_string(),
                Some(present),
                evidence,
                detail,
            );
            if !present || !old_known {
                if present {
                    self.note(format!("{f}: the {kind} contact before the window is unknown: set it back by hand"));
                }
                continue;
            }
            let undo = match attacker {
                Some(a) => Undo::Action { action: a.put() },
                None => Undo::Action { action: Action::DeleteAlternateContact { contact_type: kind.to_string() } },
            };
            match old {
                Some(o) => self.act(&f, format!("set the {kind} alternate contact back to {}", o.email), o.put(), undo),
                None => self.act(
                    &f,
                    format!("remove the {kind} alternate contact the attacker set (it was not set before)"),
                    Action::DeleteAlternateContact { contact_type: kind.to_string() },
                    undo,
                ),
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Contact {
    kind: String,
    name: String,
    title: String,
    email: String,
    phone: String,
}

impl Contact {
    fn put(&self) -> Action {
        Action::PutAlternateContact {
            contact_type: self.kind.clone(),
            name: self.name.clone(),
            title: self.title.clone(),
            email: self.email.clone(),
            phone: self.phone.clone(),
        }
    }
}

/// The contact an event left: `None` for a delete, or for values CloudTrail hid.
fn contact_of(e: &TimelineEvent, kind: &str) -> Option<Contact> {
    if e.event_name == "DeleteAlternateContact" {
        return None;
    }
    let c = Contact {
        kind: kind.to_string(),
        name: req(e, "name").unwrap_or_default().to_string(),
        title: req(e, "title").unwrap_or_default().to_string(),
        email: req(e, "emailAddress").unwrap_or_default().to_string(),
        phone: req(e, "phoneNumber").unwrap_or_default().to_string(),
    };
    let hidden = [&c.name, &c.email, &c.phone].iter().any(|v| v.starts_with("HIDDEN") || v.is_empty());
    (!hidden).then_some(c)
}

fn same_contact(a: Option<&Contact>, b: Option<&Contact>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.email.eq_ignore_ascii_case(&b.email) && a.name == b.name && a.phone == b.phone,
        _ => false,
    }
}

fn show(c: Option<&Contact>) -> String {
    match c {
        Some(c) => format!("{} <{}> {}", c.name, c.email, c.phone),
        None => "not set".into(),
    }
}
