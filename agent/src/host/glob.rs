//! Shell-style globs for selectors: executable paths, and Kubernetes
//! namespaces, pod names and owners.

/// `*` any run of characters, `?` any one; everything else literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Backtracking over the last `*` only: linear for practical patterns.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*/python3*", "/usr/bin/python3.11"));
        assert!(glob_match("/usr/sbin/nginx", "/usr/sbin/nginx"));
        assert!(glob_match("*ngin?", "/usr/sbin/nginx"));
        assert!(!glob_match("*/nginx", "/usr/sbin/nginx-debug"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYbZc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
    }
}
