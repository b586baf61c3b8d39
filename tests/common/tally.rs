//! The attack suites' score: every attack tried, whether it was blocked, and the evidence of
//! any that got through.

/// Attacks tried and blocked in one suite.
#[derive(Default)]
pub struct Tally {
    pub tried: u32,
    pub blocked: u32,
    pub escaped: Vec<String>,
}

impl Tally {
    /// Count one attack; `evidence` is shown when it was not blocked.
    pub fn attack(&mut self, name: &str, blocked: bool, evidence: impl std::fmt::Display) {
        self.tried += 1;
        if blocked {
            self.blocked += 1;
            println!("blocked: {name}");
        } else {
            println!("ESCAPED: {name}: {evidence}");
            self.escaped.push(format!("{name}: {evidence}"));
        }
    }

    /// Print `attack-suite NAME: N tried, N blocked` (what `make attack-test` sums) and fail
    /// the test if any attack got through.
    pub fn finish(&self, suite: &str) {
        println!("attack-suite {suite}: {} tried, {} blocked", self.tried, self.blocked);
        assert!(self.escaped.is_empty(), "attacks that got through: {:#?}", self.escaped);
    }
}
