//! How a command that ran to completion judged what it saw. The ground floor:
//! every subsystem returns it and it imports nothing, so no subsystem has to
//! reach up to the crate root for it.

/// How a command that ran to completion judged what it saw: exit 0 or 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Healthy,
    /// The command worked but found a problem (lag over threshold, a table
    /// that could not be brought up to date, an unreachable endpoint).
    Problem,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Healthy => 0,
            Outcome::Problem => 1,
        }
    }

    pub fn and(self, other: Outcome) -> Outcome {
        if self == Outcome::Healthy && other == Outcome::Healthy {
            Outcome::Healthy
        } else {
            Outcome::Problem
        }
    }
}
