//! Access keys the attacker minted or re-activated: a finding each, and the key deactivated (the
//! compromised user's own keys are the cutover's, never the plan's).

use super::event::{req, resp};
use super::{Hunter, Look, look};
use crate::incident::model::{Action, Severity, TimelineEvent, Undo};

impl Hunter<'_> {
    pub(super) async fn access_key_created(&mut self, e: &TimelineEvent) {
        let user = resp(e, &["accessKey", "userName"]).map(str::to_string).or_else(|| self.target_user(e));
        let (Some(user), Some(key)) = (user, resp(e, &["accessKey", "accessKeyId"]).map(str::to_string)) else {
            self.note(format!("{}: CreateAccessKey without a user or key id in the event; not checked", e.event_id));
            return;
        };
        self.attacker_keys.insert(key.clone());
        let on_compromised = Some(&user) == self.compromised.as_ref();
        let title = if on_compromised {
            format!("attacker created access key {key} on the compromised user {user}")
        } else {
            format!("attacker created access key {key} for user {user}")
        };
        let status = self.key_status(&user, &key).await;
        let (present, detail) = match &status {
            Look::Present(Some(s)) => (Some(true), format!("the key exists now and is {s}")),
            Look::Present(None) | Look::Absent => (Some(false), "the key no longer exists".to_string()),
            Look::Unknown(why) => (None, format!("could not check: {why}")),
        };
        let f = self.finding(
            "access_key",
            Severity::Critical,
            title,
            key.clone(),
            present,
            vec![e.event_id.clone()],
            detail,
        );
        if matches!(&status, Look::Present(Some(s)) if s == "Active") {
            self.deactivate_key(&f, &user, &key);
        }
    }

    pub(super) fn deactivate_key(&mut self, finding: &str, user: &str, key: &str) {
        self.act(
            finding,
            format!("deactivate access key {key} of {user}"),
            Action::DeactivateAccessKey { user: user.to_string(), access_key_id: key.to_string() },
            Undo::Action {
                action: Action::ActivateAccessKey { user: user.to_string(), access_key_id: key.to_string() },
            },
        );
    }

    /// `Present(None)`: the user exists but not the key.
    pub(super) async fn key_status(&mut self, user: &str, key: &str) -> Look<Option<String>> {
        match look(self.iam.list_access_keys().user_name(user).send().await, &format!("ListAccessKeys {user}")) {
            Look::Present(out) => Look::Present(
                out.access_key_metadata()
                    .iter()
                    .find(|k| k.access_key_id() == Some(key))
                    .map(|k| k.status().map(|s| s.as_str().to_string()).unwrap_or_else(|| "unknown".into())),
            ),
            Look::Absent => Look::Absent,
            Look::Unknown(why) => {
                self.note(why.clone());
                Look::Unknown(why)
            }
        }
    }

    pub(super) async fn access_key_updated(&mut self, e: &TimelineEvent) {
        let Some(key) = req(e, "accessKeyId").map(str::to_string) else { return };
        if !req(e, "status").is_some_and(|s| s.eq_ignore_ascii_case("active")) || self.attacker_keys.contains(&key) {
            return;
        }
        let Some(user) = self.target_user(e) else { return };
        let status = self.key_status(&user, &key).await;
        let active = matches!(&status, Look::Present(Some(s)) if s == "Active");
        let present = match &status {
            Look::Unknown(_) => None,
            _ => Some(active),
        };
        let on_compromised = Some(&user) == self.compromised.as_ref();
        let detail = if on_compromised {
            "a key of the compromised user: the cutover deactivates it, the containment plan does not touch it".into()
        } else if active {
            "re-activated by the attacker and still active".into()
        } else {
            "no longer active".into()
        };
        let f = self.finding(
            "access_key",
            Severity::High,
            format!("attacker re-activated access key {key} of {user}"),
            key.clone(),
            present,
            vec![e.event_id.clone()],
            detail,
        );
        if active && !on_compromised {
            self.deactivate_key(&f, &user, &key);
        }
    }
}
