//! How a command ended, and the process exit code for each ending (documented in the README).
//!
//! Commands return a [`Status`]; only `main` turns it into a number, so library code never
//! decides how the process exits.

/// How a command ended. Each maps to one documented exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Done as asked.
    Ok,
    /// A bug or an environment failure rekey cannot explain (exit 1).
    Internal,
    /// Bad input or a precondition not met; nothing was changed (exit 2).
    Refused,
    /// The rotation failed and was rolled back: the old key is in place and Active (exit 3).
    RolledBack,
    /// The rotation failed and could not be fully rolled back: a person must look (exit 4).
    Failed,
    /// `audit`: the account has something that needs action (exit 5).
    NeedsAction,
    /// The targets hold the new key, but the old key is still used by a consumer rekey did not
    /// move, so it was left Active (a rotation or `retire` held on evidence; exit 6).
    Held,
}

impl serde::Serialize for Status {
    /// As the number a script compares, e.g. the fleet summary's `exit_code`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(self.code())
    }
}

impl Status {
    pub const fn code(self) -> i32 {
        match self {
            Status::Ok => 0,
            Status::Internal => 1,
            Status::Refused => 2,
            Status::RolledBack => 3,
            Status::Failed => 4,
            Status::NeedsAction => 5,
            Status::Held => 6,
        }
    }

    /// The worse of two endings, for commands that run several things (the fleet, an incident).
    pub fn worst(self, other: Status) -> Status {
        fn rank(s: Status) -> u8 {
            match s {
                Status::Ok => 0,
                Status::NeedsAction => 1,
                Status::Held => 2,
                Status::RolledBack => 3,
                Status::Refused => 4,
                Status::Failed => 5,
                Status::Internal => 6,
            }
        }
        if rank(other) > rank(self) { other } else { self }
    }
}
