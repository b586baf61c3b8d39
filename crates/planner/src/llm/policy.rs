//! The judge model policy: candidates are the primary then the fallbacks, minus those denied,
//! restricted to the allowed when the allow list is not empty. Order is kept; deny wins.

use machina_core::config::{ModelPattern, ModelRef};

use super::decision::{Skip, SkipReason};

/// The allow and deny lists, parsed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    pub(crate) allow: Vec<ModelPattern>,
    pub(crate) deny: Vec<ModelPattern>,
}

impl Policy {
    /// The candidates the policy lets through, in order; the others go to `skipped` with why.
    pub(crate) fn filter(&self, candidates: &[ModelRef], skipped: &mut Vec<Skip>) -> Vec<ModelRef> {
        let mut kept = Vec::new();
        for c in candidates {
            let reason = if self.deny.iter().any(|p| p.matches(c)) {
                Some(SkipReason::Denied)
            } else if !self.allow.is_empty() && !self.allow.iter().any(|p| p.matches(c)) {
                Some(SkipReason::NotAllowed)
            } else {
                None
            };
            match reason {
                Some(reason) => skipped.push(Skip { candidate: c.to_string(), reason, detail: None }),
                None => kept.push(c.clone()),
            }
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(list: &[&str]) -> Vec<ModelRef> {
        list.iter().map(|s| ModelRef::parse(s).unwrap()).collect()
    }

    fn policy(allow: &[&str], deny: &[&str]) -> Policy {
        let parse = |l: &[&str]| l.iter().map(|s| ModelPattern::parse(s).unwrap()).collect();
        Policy { allow: parse(allow), deny: parse(deny) }
    }

    fn run(p: &Policy, cands: &[&str]) -> (Vec<String>, Vec<(String, &'static str)>) {
        let mut skipped = Vec::new();
        let kept = p.filter(&refs(cands), &mut skipped);
        (
            kept.iter().map(|m| m.to_string()).collect(),
            skipped.into_iter().map(|s| (s.candidate, s.reason.as_str())).collect(),
        )
    }

    const CANDS: [&str; 4] = ["openai/a", "anthropic/b", "openai/c", "router/x/y"];

    #[test]
    fn no_lists_keep_every_candidate_in_order() {
        let (kept, skipped) = run(&Policy::default(), &CANDS);
        assert_eq!(kept, CANDS);
        assert!(skipped.is_empty());
    }

    #[test]
    fn deny_removes_exact_and_whole_providers() {
        let (kept, skipped) = run(&policy(&[], &["openai/a", "router/*"]), &CANDS);
        assert_eq!(kept, ["anthropic/b", "openai/c"]);
        assert_eq!(skipped, [("openai/a".into(), "denied"), ("router/x/y".into(), "denied")]);
    }

    #[test]
    fn allow_restricts_and_deny_wins_over_allow() {
        let (kept, skipped) = run(&policy(&["openai/*", "router/x/y"], &["openai/c"]), &CANDS);
        assert_eq!(kept, ["openai/a", "router/x/y"]);
        assert_eq!(skipped, [("anthropic/b".into(), "not in allow list"), ("openai/c".into(), "denied")]);
    }

    #[test]
    fn an_exact_pattern_does_not_match_a_longer_model() {
        let (kept, _) = run(&policy(&["router/x"], &[]), &CANDS);
        assert!(kept.is_empty(), "router/x must not match router/x/y");
    }

    #[test]
    fn everything_filtered_leaves_nothing() {
        let (kept, skipped) = run(&policy(&["anthropic/z"], &["anthropic/*"]), &CANDS);
        assert!(kept.is_empty());
        assert_eq!(skipped.len(), 4);
    }
}
