//! `http.route`: the low-cardinality template of a request path.
//!
//! Two sources, in order:
//! - patterns the user configures (`--http-route /users/{id}`), which are
//!   real routes: the server span gets `http.route` and is named
//!   `GET /users/{id}`, as the semantic conventions ask;
//! - for metrics only, when no pattern matches, a guess from the path
//!   itself: segments that look like identifiers (numbers, UUIDs, long hex
//!   or mixed tokens) become `{id}`. A guess is not put on spans: the
//!   conventions reserve `http.route` for the application's own routes.

#[derive(Debug, thiserror::Error)]
#[error("http route {pattern:?}: {why}")]
pub struct RouteError {
    pattern: String,
    why: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}` or `*`: exactly one segment.
    One,
    /// `**` at the end: any number of segments, none included.
    Rest,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

/// The configured route patterns, tried in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    patterns: Vec<Pattern>,
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

impl Routes {
    pub fn parse(patterns: &[String]) -> Result<Self, RouteError> {
        let mut out = Vec::with_capacity(patterns.len());
        for text in patterns {
            let error = |why| RouteError {
                pattern: text.clone(),
                why,
            };
            if !text.starts_with('/') {
                return Err(error("must start with /"));
            }
            let parts: Vec<&str> = segments(text).collect();
            let mut segs = Vec::with_capacity(parts.len());
            for (i, part) in parts.iter().enumerate() {
                segs.push(match *part {
                    "**" if i + 1 == parts.len() => Segment::Rest,
                    "**" => return Err(error("** may only end a pattern")),
                    "*" => Segment::One,
                    p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => Segment::One,
                    p if p.contains(['{', '}', '*']) => {
                        return Err(error(
                            "a segment is a literal, {name}, * or a final **, not a mix",
                        ))
                    }
                    p => Segment::Literal(p.to_owned()),
                });
            }
            out.push(Pattern {
                text: text.clone(),
                segments: segs,
            });
        }
        Ok(Routes { patterns: out })
    }

    /// The first pattern `path` (without its query) matches.
    pub fn matching(&self, path: &str) -> Option<&str> {
        self.patterns
            .iter()
            .find(|p| p.matches(path))
            .map(|p| p.text.as_str())
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        let mut parts = segments(path);
        for seg in &self.segments {
            match seg {
                Segment::Rest => return true,
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

/// Segments and bytes a guessed template may have; a longer path has no
/// guess (its metrics say `_OTHER`).
const MAX_SEGMENTS: usize = 8;
const MAX_TEMPLATE_BYTES: usize = 128;

/// Is this path segment a plain name, safe and stable enough to keep? Only
/// short lowercase words qualify (`api`, `v1`, `index.html`,
/// `.well-known`): anything else (numbers, UUIDs, hex, mixed case, tokens,
/// encoded or unusual characters) may be an identifier or a secret, and is
/// replaced. A lowercase name in a path (`/users/alice`) still looks like
/// a word: give a `--http-route` pattern for such paths.
fn is_word(seg: &str) -> bool {
    let b = seg.as_bytes();
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    let hexish = b.len() >= 8 && b.iter().all(u8::is_ascii_hexdigit);
    (1..=32).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0] == b'.')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
        && digits <= 2
        && !hexish
}

/// The guessed template of `path`: `/users/42/orders/9f8e…` becomes
/// `/users/{id}/orders/{id}`. A trailing slash is kept. `None` for a path
/// too long to template.
pub fn guess(path: &str) -> Option<String> {
    let mut out = String::with_capacity(path.len().min(MAX_TEMPLATE_BYTES));
    for (i, seg) in segments(path).enumerate() {
        if i == MAX_SEGMENTS {
            return None;
        }
        out.push('/');
        out.push_str(if is_word(seg) { seg } else { "{id}" });
    }
    if out.is_empty() || (path.ends_with('/') && path.len() > 1) {
        out.push('/');
    }
    (out.len() <= MAX_TEMPLATE_BYTES).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(p: &[&str]) -> Routes {
        Routes::parse(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn patterns_match_whole_paths_in_order() {
        let r = routes(&["/users/{id}", "/users/{id}/orders/*", "/static/**", "/"]);
        assert_eq!(r.matching("/users/42"), Some("/users/{id}"));
        assert_eq!(r.matching("/users/42/"), Some("/users/{id}"));
        assert_eq!(
            r.matching("/users/42/orders/7"),
            Some("/users/{id}/orders/*")
        );
        assert_eq!(r.matching("/users/42/orders"), None);
        assert_eq!(r.matching("/users"), None);
        assert_eq!(r.matching("/static/css/a.css"), Some("/static/**"));
        assert_eq!(r.matching("/static"), Some("/static/**"));
        assert_eq!(r.matching("/"), Some("/"));
        assert_eq!(r.matching("/other"), None);
    }

    #[test]
    fn bad_patterns_are_named() {
        for (p, why) in [
            ("users", "start with /"),
            ("/a/**/b", "only end"),
            ("/a/x{id}", "not a mix"),
        ] {
            let e = Routes::parse(&[p.to_string()]).unwrap_err().to_string();
            assert!(e.contains(p) && e.contains(why), "{e}");
        }
    }

    #[test]
    fn guesses_keep_only_plain_words() {
        let g = |p: &str| guess(p).unwrap();
        assert_eq!(g("/users/42"), "/users/{id}");
        assert_eq!(
            g("/orders/3f2a9c1e-7b4d-4e8a-9c1e-0123456789ab/items"),
            "/orders/{id}/items"
        );
        assert_eq!(g("/blobs/deadbeef01"), "/blobs/{id}");
        assert_eq!(
            g("/blobs/deadbeef"),
            "/blobs/{id}",
            "hex, even without digits"
        );
        assert_eq!(g("/reset/aZ9kQ2mX7pL4vB8n"), "/reset/{id}");
        assert_eq!(
            g("/reset/AbCdEfGhIjKlMnOpQrSt"),
            "/reset/{id}",
            "mixed case"
        );
        assert_eq!(g("/share/Zm9v+YmFy="), "/share/{id}");
        assert_eq!(g("/mail/a%40b.c"), "/mail/{id}");
        assert_eq!(
            g("/u/alice.smith"),
            "/u/alice.smith",
            "a name is a word: see is_word"
        );
        assert_eq!(g("/order12345"), "/{id}");
        assert_eq!(g("/api/v1/health"), "/api/v1/health");
        assert_eq!(
            g("/.well-known/openid-configuration"),
            "/.well-known/openid-configuration"
        );
        assert_eq!(g("/cafe"), "/cafe", "short hex words stay");
        assert_eq!(g("/index.html"), "/index.html");
        assert_eq!(g("/"), "/");
        assert_eq!(g(""), "/");
        assert_eq!(g("/docs/"), "/docs/");
        assert_eq!(g("//a//1"), "/a/{id}");
        assert_eq!(g("/ünïcode/ok"), "/{id}/ok");
    }

    #[test]
    fn long_paths_have_no_guess() {
        assert_eq!(
            guess(&"/a".repeat(MAX_SEGMENTS)).as_deref(),
            Some("/a/a/a/a/a/a/a/a")
        );
        assert_eq!(guess(&"/a".repeat(MAX_SEGMENTS + 1)), None);
        let long = format!("/{}", ["abcdefghijklmnopqrstuvwxyz"; 5].join("/"));
        assert_eq!(guess(&long), None, "{} bytes", long.len());
    }
}
