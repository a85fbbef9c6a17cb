//! Group memberships the attacker added.

use super::event::req;
use super::{Hunter, Look, look};
use crate::incident::model::{Action, Severity, TimelineEvent, Undo};

impl Hunter<'_> {
    pub(super) async fn groups_of(&mut self, user: &str) -> Look<Vec<String>> {
        let r = self.iam.list_groups_for_user().user_name(user).max_items(1000).send().await;
        match look(r, &format!("ListGroupsForUser {user}")) {
            Look::Present(out) => Look::Present(out.groups().iter().map(|g| g.group_name().to_string()).collect()),
            Look::Absent => Look::Absent,
            Look::Unknown(why) => {
                self.note(why.clone());
                Look::Unknown(why)
            }
        }
    }

    pub(super) fn remove_from_group(&mut self, finding: &str, user: &str, group: &str) {
        self.act(
            finding,
            format!("remove {user} from group {group}"),
            Action::RemoveUserFromGroup { user: user.to_string(), group: group.to_string() },
            Undo::Action { action: Action::AddUserToGroup { user: user.to_string(), group: group.to_string() } },
        );
    }

    pub(super) async fn group_membership(&mut self, e: &TimelineEvent) {
        let (Some(user), Some(group)) =
            (req(e, "userName").map(str::to_string), req(e, "groupName").map(str::to_string))
        else {
            return;
        };
        let present = match self.groups_of(&user).await {
            Look::Present(g) => Some(g.contains(&group)),
            Look::Absent => Some(false),
            Look::Unknown(_) => None,
        };
        let f = self.finding(
            "group_membership",
            Severity::High,
            format!("attacker added {user} to group {group}"),
            format!("{user}@{group}"),
            present,
            vec![e.event_id.clone()],
            String::new(),
        );
        if present == Some(true) {
            self.remove_from_group(&f, &user, &group);
        }
    }
}
