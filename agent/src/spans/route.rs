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

/// Does this path segment look like an identifier rather than a name?
fn looks_like_id(seg: &str) -> bool {
    let digits = seg.bytes().filter(u8::is_ascii_digit).count();
    let hex = seg.bytes().all(|b| b.is_ascii_hexdigit());
    let token = seg
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let uuid = seg.len() == 36
        && seg.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    (digits == seg.len() && digits > 0)
        || uuid
        || (hex && seg.len() >= 8 && digits > 0)
        || (token && seg.len() >= 16 && digits > 0)
        || seg.len() > 64
        || seg.contains('%')
        || seg.contains('@')
}

/// The guessed template of `path`: `/users/42/orders/9f8e…` becomes
/// `/users/{id}/orders/{id}`. A trailing slash is kept.
pub fn guess(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for seg in segments(path) {
        out.push('/');
        out.push_str(if looks_like_id(seg) { "{id}" } else { seg });
    }
    if out.is_empty() || (path.ends_with('/') && path.len() > 1) {
        out.push('/');
    }
    out
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
    fn guesses_replace_identifiers_only() {
        assert_eq!(guess("/users/42"), "/users/{id}");
        assert_eq!(
            guess("/orders/3f2a9c1e-7b4d-4e8a-9c1e-0123456789ab/items"),
            "/orders/{id}/items"
        );
        assert_eq!(guess("/blobs/deadbeef01"), "/blobs/{id}");
        assert_eq!(guess("/reset/aZ9kQ2mX7pL4vB8n"), "/reset/{id}");
        assert_eq!(guess("/mail/a%40b.c"), "/mail/{id}");
        assert_eq!(guess("/api/v1/health"), "/api/v1/health");
        assert_eq!(guess("/cafe"), "/cafe", "short hex words stay");
        assert_eq!(guess("/index.html"), "/index.html");
        assert_eq!(guess("/"), "/");
        assert_eq!(guess(""), "/");
        assert_eq!(guess("/docs/"), "/docs/");
        assert_eq!(guess("//a//1"), "/a/{id}");
    }
}
