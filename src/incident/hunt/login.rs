//! Console passwords and MFA devices: what lets the attacker sign in as a user.

use super::event::{req, resp};
use super::{Hunter, Look, look};
use crate::incident::model::{Action, Severity, TimelineEvent, Undo};

impl Hunter<'_> {
    pub(super) async fn login_profile(&mut self, e: &TimelineEvent) {
        let Some(user) = self.target_user(e) else { return };
        self.passwords_seen.insert(user.clone());
        let r = self.iam.get_login_profile().user_name(&user).send().await;
        let present = match look(r, &format!("GetLoginProfile {user}")) {
            Look::Present(_) => Some(true),
            Look::Absent => Some(false),
            Look::Unknown(why) => {
                self.note(why);
                None
            }
        };
        let verb = if e.event_name == "CreateLoginProfile" { "created" } else { "changed" };
        let f = self.finding(
            "login_profile",
            Severity::High,
            format!("attacker {verb} the console password of {user}"),
            user.clone(),
            present,
            vec![e.event_id.clone()],
            "the attacker knows this password".into(),
        );
        if present == Some(true) {
            self.delete_login_profile(&f, &user);
        }
    }

    pub(super) fn delete_login_profile(&mut self, finding: &str, user: &str) {
        self.act(
            finding,
            format!("delete the console login profile of {user}"),
            Action::DeleteLoginProfile { user: user.to_string() },
            Undo::RecreateLoginProfile { user: user.to_string(), password_reset_required: true },
        );
    }

    pub(super) async fn mfa_devices(&mut self, user: &str) -> Look<Vec<String>> {
        match look(self.iam.list_mfa_devices().user_name(user).send().await, &format!("ListMFADevices {user}")) {
            Look::Present(out) => {
                Look::Present(out.mfa_devices().iter().map(|d| d.serial_number().to_string()).collect())
            }
            Look::Absent => Look::Absent,
            Look::Unknown(why) => {
                self.note(why.clone());
                Look::Unknown(why)
            }
        }
    }

    pub(super) fn deactivate_mfa(&mut self, finding: &str, user: &str, serial: &str) {
        self.act(
            finding,
            format!("deactivate MFA device {serial} of {user}"),
            Action::DeactivateMfaDevice { user: user.to_string(), serial_number: serial.to_string() },
            Undo::None { reason: "re-enabling an MFA device needs two consecutive codes from the device".into() },
        );
    }

    pub(super) async fn mfa_enabled(&mut self, e: &TimelineEvent) {
        let (Some(user), Some(serial)) = (self.target_user(e), req(e, "serialNumber").map(str::to_string)) else {
            return;
        };
        let devices = self.mfa_devices(&user).await;
        let present = match &devices {
            Look::Present(d) => Some(d.contains(&serial)),
            Look::Absent => Some(false),
            Look::Unknown(_) => None,
        };
        let f = self.finding(
            "mfa_device",
            Severity::High,
            format!("attacker enabled MFA device {serial} on {user}"),
            serial.clone(),
            present,
            vec![e.event_id.clone()],
            "an attacker's MFA device secures their access to the user".into(),
        );
        if present == Some(true) {
            self.deactivate_mfa(&f, &user, &serial);
        }
    }

    pub(super) async fn virtual_mfa(&mut self, e: &TimelineEvent) {
        let Some(serial) = resp(e, &["virtualMFADevice", "serialNumber"]).map(str::to_string) else { return };
        let r = self.iam.list_virtual_mfa_devices().send().await;
        let (present, user) = match look(r, "ListVirtualMFADevices") {
            Look::Present(out) => match out.virtual_mfa_devices().iter().find(|d| d.serial_number() == serial) {
                Some(d) => (Some(true), d.user().map(|u| u.user_name().to_string())),
                None => (Some(false), None),
            },
            Look::Absent => (Some(false), None),
            Look::Unknown(why) => {
                self.note(why);
                (None, None)
            }
        };
        let detail = match &user {
            Some(u) => format!("assigned to {u}"),
            None if present == Some(true) => {
                format!("not assigned; delete it with `aws iam delete-virtual-mfa-device --serial-number {serial}`")
            }
            None => String::new(),
        };
        let f = self.finding(
            "mfa_device",
            Severity::Medium,
            format!("attacker created virtual MFA device {serial}"),
            serial.clone(),
            present,
            vec![e.event_id.clone()],
            detail,
        );
        if let Some(u) = user {
            self.deactivate_mfa(&f, &u, &serial);
        }
    }
}
