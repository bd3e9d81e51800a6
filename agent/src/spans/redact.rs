//! Redaction of values that may hold secrets, applied before a span exists.

/// What OpenTelemetry's conventions put in place of a redacted value.
pub const REDACTED: &str = "REDACTED";

/// Replaces every value in a query string: `a=1&b` becomes `a=REDACTED&b`.
/// Keys stay, because they tell what the request did without what it said.
pub fn query(q: &str) -> String {
    let mut out = String::with_capacity(q.len());
    for (i, pair) in q.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((k, _)) => {
                out.push_str(k);
                out.push('=');
                out.push_str(REDACTED);
            }
            None => out.push_str(pair),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_values_and_keeps_keys() {
        assert_eq!(query("q=secret&x=1&flag"), "q=REDACTED&x=REDACTED&flag");
        assert_eq!(query("token="), "token=REDACTED");
        assert_eq!(query(""), "");
        assert_eq!(query("a=b=c"), "a=REDACTED");
    }
}
