//! The session's history: what the operator said, what it was understood as, and how it
//! ended. Kept in memory only, bounded, shown by `history` and given to the model as context.

use serde::Serialize;
use std::collections::VecDeque;
use std::fmt::Write;

/// Most turns a session keeps; older ones are forgotten first.
const TURNS_MAX: usize = 100;
/// Longest message kept per turn (a pasted document should not crowd out the rest).
const SAID_MAX_CHARS: usize = 500;

/// One message and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Turn {
    /// What the operator typed.
    pub said: String,
    /// What it was understood as, in the pattern grammar's words.
    pub action: String,
    /// The summary shown (or why nothing was done).
    pub outcome: String,
}

/// The turns of one session, oldest first.
#[derive(Debug, Default)]
pub struct History {
    turns: VecDeque<Turn>,
}

impl History {
    /// Records a turn, forgetting the oldest past [`TURNS_MAX`].
    pub fn push(&mut self, said: &str, action: String, outcome: String) {
        if self.turns.len() == TURNS_MAX {
            self.turns.pop_front();
        }
        self.turns.push_back(Turn { said: truncate(said, SAID_MAX_CHARS), action, outcome });
    }

    /// The last `n` turns, oldest first.
    pub fn recent(&self, n: usize) -> Vec<&Turn> {
        self.turns.iter().skip(self.turns.len().saturating_sub(n)).collect()
    }

    /// What `history` prints: one numbered block per turn.
    pub fn render(&self) -> String {
        if self.turns.is_empty() {
            return "no messages yet\n".into();
        }
        let mut out = String::new();
        for (i, t) in self.turns.iter().enumerate() {
            let _ =
                writeln!(out, "{:>3}. {}\n     understood: {}\n     outcome: {}", i + 1, t.said, t.action, t.outcome);
        }
        out
    }
}

/// `text` cut to `max` characters, with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_recent_is_oldest_first() {
        let mut h = History::default();
        for i in 0..TURNS_MAX + 5 {
            h.push(&format!("m{i}"), "list".into(), "ok".into());
        }
        assert_eq!(h.turns.len(), TURNS_MAX);
        assert_eq!(h.turns[0].said, "m5");
        let said: Vec<&str> = h.recent(2).iter().map(|t| t.said.as_str()).collect();
        assert_eq!(said, [format!("m{}", TURNS_MAX + 3), format!("m{}", TURNS_MAX + 4)]);
        assert_eq!(History::default().recent(6).len(), 0);
    }

    #[test]
    fn renders_numbered_turns_and_cuts_long_messages() {
        let mut h = History::default();
        assert_eq!(h.render(), "no messages yet\n");
        h.push(&"x".repeat(600), "list".into(), "0 runs".into());
        let text = h.render();
        assert!(text.starts_with(&format!("  1. {}…\n", "x".repeat(SAID_MAX_CHARS))), "{text}");
        assert!(text.ends_with("     understood: list\n     outcome: 0 runs\n"), "{text}");
        assert_eq!(truncate("héllo", 2), "hé…");
    }
}
