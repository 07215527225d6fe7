//! Glob matching for repository and tag patterns (`*` any run, `?` one character), shared by
//! access rules, immutability rules and retention policies.

/// `*` matches any run of characters (slashes included), `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("v*", "v1.2"));
        assert!(glob_match("release-?", "release-1"));
        assert!(!glob_match("release-?", "release-10"));
        assert!(glob_match("*/app", "team/app"));
        assert!(!glob_match("v*", "latest"));
    }
}
