//! Head sampling, as configured by `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` (OpenTelemetry SDK environment specification).
//!
//! With a `parentbased_*` sampler, a span whose trace came in with a
//! `traceparent` follows that header's sampled flag, and so do its
//! in-process children. Other spans get the root sampler's decision, which
//! depends only on the trace id, so every span of one trace agrees.

use anyhow::bail;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    pub root: Root,
    pub parent_based: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    /// Keeps a trace when the last 8 bytes of its id, read as a big-endian
    /// integer, fall below this bound: the same trace is kept or dropped
    /// by every component that uses the same rule.
    TraceIdRatio {
        ratio: f64,
        bound: u64,
    },
}

impl Sampler {
    /// `name` and `arg` are the two variables' values, if set.
    pub fn from_env(name: Option<&str>, arg: Option<&str>) -> anyhow::Result<Self> {
        let name = name.map(str::trim).unwrap_or("parentbased_always_on");
        let root = match name {
            "always_on" | "parentbased_always_on" => Root::AlwaysOn,
            "always_off" | "parentbased_always_off" => Root::AlwaysOff,
            "traceidratio" | "parentbased_traceidratio" => {
                let ratio = match arg.map(str::trim) {
                    None => 1.0,
                    Some(a) => match a.parse::<f64>() {
                        Ok(r) if (0.0..=1.0).contains(&r) => r,
                        _ => bail!("OTEL_TRACES_SAMPLER_ARG={a:?} is not a ratio between 0 and 1"),
                    },
                };
                Root::ratio(ratio)
            }
            other => bail!(
                "OTEL_TRACES_SAMPLER={other:?} is not supported; use always_on, always_off, \
                 traceidratio or their parentbased_ forms"
            ),
        };
        Ok(Sampler {
            root,
            parent_based: name.starts_with("parentbased_"),
        })
    }

    /// Whether to keep a span of this trace; `remote_sampled` is the flag
    /// of the remote parent its trace came in with, if any.
    pub fn keeps(&self, trace_id: &[u8; 16], remote_sampled: Option<bool>) -> bool {
        match remote_sampled {
            Some(flag) if self.parent_based => flag,
            _ => self.root.keeps(trace_id),
        }
    }
}

impl Root {
    /// The same decision as a bound for the probes, which start traces
    /// themselves when they write `traceparent` headers: keep when the
    /// trace id's last 8 bytes are below it, and `u64::MAX` keeps all.
    pub fn bound(&self) -> u64 {
        match *self {
            Root::AlwaysOn => u64::MAX,
            Root::AlwaysOff => 0,
            Root::TraceIdRatio { bound, .. } => bound,
        }
    }

    fn ratio(ratio: f64) -> Self {
        // 2^64 * ratio, saturating: ratio 1.0 keeps everything.
        let bound = if ratio >= 1.0 {
            u64::MAX
        } else {
            (ratio * 18_446_744_073_709_551_616.0) as u64
        };
        Root::TraceIdRatio { ratio, bound }
    }

    fn keeps(&self, trace_id: &[u8; 16]) -> bool {
        match *self {
            Root::AlwaysOn => true,
            Root::AlwaysOff => false,
            Root::TraceIdRatio { ratio, bound } => {
                let mut low = [0u8; 8];
                low.copy_from_slice(&trace_id[8..]);
                ratio >= 1.0 || u64::from_be_bytes(low) < bound
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_defaults() {
        let default = Sampler::from_env(None, None).unwrap();
        assert_eq!((default.root, default.parent_based), (Root::AlwaysOn, true));
        let off = Sampler::from_env(Some("always_off"), None).unwrap();
        assert_eq!((off.root, off.parent_based), (Root::AlwaysOff, false));
        let pb_off = Sampler::from_env(Some("parentbased_always_off"), None).unwrap();
        assert_eq!((pb_off.root, pb_off.parent_based), (Root::AlwaysOff, true));
        let e = Sampler::from_env(Some("jaeger_remote"), None).unwrap_err();
        assert!(
            e.to_string()
                .contains("OTEL_TRACES_SAMPLER=\"jaeger_remote\""),
            "{e}"
        );
        let e = Sampler::from_env(Some("traceidratio"), Some("1.5")).unwrap_err();
        assert!(
            e.to_string().contains("OTEL_TRACES_SAMPLER_ARG=\"1.5\""),
            "{e}"
        );
    }

    #[test]
    fn ratio_keeps_about_that_share_and_is_deterministic() {
        let s = Sampler::from_env(Some("traceidratio"), Some("0.25")).unwrap();
        let mut kept = 0;
        for _ in 0..20_000 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&crate::spans::ids::span_id());
            id[8..].copy_from_slice(&crate::spans::ids::span_id());
            if s.keeps(&id, None) {
                kept += 1;
                assert!(s.keeps(&id, None), "same id, same decision");
            }
        }
        assert!(
            (4_500..5_500).contains(&kept),
            "kept {kept} of 20000 at 0.25"
        );
        let mut low = [0u8; 16];
        low[15] = 1;
        assert!(s.keeps(&low, None));
        assert!(!s.keeps(&[0xff; 16], None));
        let all = Sampler::from_env(Some("traceidratio"), Some("1")).unwrap();
        assert!(all.keeps(&[0xff; 16], None));
        let none = Sampler::from_env(Some("traceidratio"), Some("0")).unwrap();
        assert!(!none.keeps(&low, None));
    }

    #[test]
    fn parent_based_follows_the_remote_flag_and_plain_samplers_do_not() {
        let pb = Sampler::from_env(Some("parentbased_always_off"), None).unwrap();
        assert!(pb.keeps(&[1; 16], Some(true)));
        assert!(!pb.keeps(&[1; 16], None));
        let pb_on = Sampler::from_env(None, None).unwrap();
        assert!(!pb_on.keeps(&[1; 16], Some(false)));
        let plain = Sampler::from_env(Some("always_on"), None).unwrap();
        assert!(plain.keeps(&[1; 16], Some(false)));
    }
}
