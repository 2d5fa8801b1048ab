//! The fault schedule: `--faults` parsed into [`FaultPlan`]s, and durations like `3s`.
//!
//! Syntax: a comma-separated list of faults, each a kind and colon-separated settings:
//!
//! ```text
//! kill:every=3s                  SIGKILL the worker every 3 s
//! stop:every=20s:for=3s          SIGSTOP it for 3 s (SIGCONT after, if still there)
//! delete-socket:every=30s        remove its socket file
//! slow-start:every=45s:delay=2s  SIGKILL it, and make the next start 2 s slower
//! ```
//!
//! Every fault also takes `after=DUR` (the first injection; default: `every`) and
//! `count=N` (at most N injections). Faults never overlap: one is injected only while the
//! worker serves, and the next waits until service is back.

use std::{fmt, str::FromStr, time::Duration};

use serde::Serialize;

/// What is done to the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum FaultKind {
    /// SIGKILL the worker process.
    Kill,
    /// SIGSTOP the worker for a while, then SIGCONT.
    Stop,
    /// Remove the worker's socket file.
    DeleteSocket,
    /// SIGKILL the worker and delay the next start-up.
    SlowStart,
}

impl FaultKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Stop => "stop",
            FaultKind::DeleteSocket => "delete-socket",
            FaultKind::SlowStart => "slow-start",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One `--faults` entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct FaultPlan {
    pub(crate) kind: FaultKind,
    /// Time between injections (from the previous injection of this kind).
    #[serde(serialize_with = "secs")]
    pub(crate) every: Duration,
    /// Time of the first injection, from the start of the load.
    #[serde(serialize_with = "secs")]
    pub(crate) after: Duration,
    /// `stop`: how long the worker stays stopped.
    #[serde(serialize_with = "secs")]
    pub(crate) hold: Duration,
    /// `slow-start`: the extra start-up delay.
    #[serde(serialize_with = "secs")]
    pub(crate) delay: Duration,
    /// Most injections of this fault.
    pub(crate) count: Option<u32>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Parses a whole `--faults` value.
pub(crate) fn parse_faults(text: &str) -> Result<Vec<FaultPlan>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect()
}

impl FromStr for FaultPlan {
    type Err = String;

    fn from_str(entry: &str) -> Result<Self, String> {
        let mut parts = entry.split(':');
        let kind = match parts.next().unwrap_or_default().trim() {
            "kill" => FaultKind::Kill,
            "stop" => FaultKind::Stop,
            "delete-socket" => FaultKind::DeleteSocket,
            "slow-start" => FaultKind::SlowStart,
            other => {
                return Err(format!(
                    "unknown fault {other:?} in {entry:?} (kinds: kill, stop, delete-socket, slow-start)"
                ));
            }
        };
        let mut plan = FaultPlan {
            kind,
            every: Duration::ZERO,
            after: Duration::ZERO,
            hold: Duration::from_secs(3),
            delay: Duration::from_secs(2),
            count: None,
        };
        let mut every = None;
        let mut after = None;
        for setting in parts {
            let (key, value) = setting
                .split_once('=')
                .ok_or_else(|| format!("{entry:?}: expected key=value, got {setting:?}"))?;
            let bad = |e: String| format!("{entry:?}: {key}: {e}");
            match (key.trim(), kind) {
                ("every", _) => every = Some(parse_duration(value).map_err(bad)?),
                ("after", _) => after = Some(parse_duration(value).map_err(bad)?),
                ("count", _) => {
                    plan.count = Some(
                        value
                            .trim()
                            .parse()
                            .map_err(|e| bad(format!("{e}: {value:?}")))?,
                    );
                }
                ("for", FaultKind::Stop) => plan.hold = parse_duration(value).map_err(bad)?,
                ("delay", FaultKind::SlowStart) => {
                    plan.delay = parse_duration(value).map_err(bad)?;
                }
                (key, kind) => {
                    return Err(format!(
                        "{entry:?}: {kind} takes no setting {key:?} (all take every=, after=, count=; \
                         stop takes for=, slow-start takes delay=)"
                    ));
                }
            }
        }
        plan.every = every.ok_or_else(|| format!("{entry:?}: every=DURATION is required"))?;
        if plan.every.is_zero() {
            return Err(format!("{entry:?}: every must be above zero"));
        }
        plan.after = after.unwrap_or(plan.every);
        Ok(plan)
    }
}

/// Parses `1.5s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?} (try 500ms, 3s, 2m)"))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit {other:?} in {text:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_examples() -> Result<(), String> {
        let plans = parse_faults(
            "kill:every=3s, stop:every=20s:for=1500ms,delete-socket:every=30s:after=5s:count=2,slow-start:every=1m:delay=2s",
        )?;
        assert_eq!(plans.len(), 4);
        assert_eq!(plans[0].kind, FaultKind::Kill);
        assert_eq!(plans[0].every, Duration::from_secs(3));
        assert_eq!(plans[0].after, Duration::from_secs(3));
        assert_eq!(plans[1].hold, Duration::from_millis(1500));
        assert_eq!(plans[2].after, Duration::from_secs(5));
        assert_eq!(plans[2].count, Some(2));
        assert_eq!(plans[3].every, Duration::from_secs(60));
        assert_eq!(plans[3].delay, Duration::from_secs(2));
        Ok(())
    }

    #[test]
    fn mistakes_are_named() {
        let err = |s: &str| parse_faults(s).err().unwrap_or_default();
        assert!(err("explode:every=1s").contains("unknown fault"));
        assert!(err("kill").contains("every=DURATION is required"));
        assert!(err("kill:every=3x").contains("unknown unit"));
        assert!(err("kill:every=3s:for=1s").contains("takes no setting"));
        assert!(err("stop:every").contains("key=value"));
        assert!(err("kill:every=0s").contains("above zero"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
    }
}
