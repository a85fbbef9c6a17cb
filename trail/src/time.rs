//! The one way rekey reads and writes instants: RFC 3339, as AWS APIs, CloudTrail records and
//! rekey's own journals and reports use it.
//!
//! AWS writes `2026-11-28T12:11:58Z`, `…58.123Z` and (some SDKs, the emulator) `…58+00:00`;
//! people write offsets (`…12:00+02:00`). All of them parse; output is always UTC to the second,
//! so that journals and reports compare as strings.

use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// An RFC 3339 instant with any offset (`Z`, `+02:00`), with or without fractions; a space may
/// stand for the `T`, and a missing offset means UTC (some AWS APIs drop it).
pub fn parse(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let mut text = s.replacen(' ', "T", 1);
    if let Some(t) = text.get_mut(10..11) {
        t.make_ascii_uppercase();
    }
    let has_offset =
        text.get(19..).is_some_and(|tail| tail.ends_with(['Z', 'z']) || tail.contains('+') || tail.contains('-'));
    if !has_offset {
        text.push('Z');
    }
    OffsetDateTime::parse(&text, &Rfc3339).ok().map(SystemTime::from)
}

/// `2026-11-28T12:11:58Z`: UTC, whole seconds.
pub fn format(t: SystemTime) -> String {
    let t = OffsetDateTime::from(t).replace_nanosecond(0).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    t.format(&Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn aws_and_human_spellings_parse_to_the_same_instant() {
        let noon = at(1_764_331_200); // 2025-11-28T12:00:00Z
        for s in [
            "2025-11-28T12:00:00Z",
            "2025-11-28T12:00:00z",
            "2025-11-28t12:00:00Z",
            "2025-11-28T12:00:00+00:00",
            "2025-11-28T14:00:00+02:00",
            "2025-11-28T07:30:00-04:30",
            "2025-11-28 12:00:00Z",
            "2025-11-28T12:00:00",
            " 2025-11-28T12:00:00Z ",
        ] {
            assert_eq!(parse(s), Some(noon), "{s}");
        }
        assert_eq!(parse("2025-11-28T12:00:00.250Z"), Some(noon + Duration::from_millis(250)));
    }

    #[test]
    fn nonsense_does_not_parse() {
        for s in
            ["", "yesterday", "2025-11-28", "2025-13-01T00:00:00Z", "2025-11-28T25:00:00Z", "2025-11-28T12:00:00+24:00"]
        {
            assert_eq!(parse(s), None, "{s}");
        }
    }

    #[test]
    fn format_is_utc_to_the_second_and_round_trips() {
        let t = at(1_764_331_200) + Duration::from_millis(999);
        assert_eq!(format(t), "2025-11-28T12:00:00Z");
        assert_eq!(parse(&format(t)), Some(at(1_764_331_200)));
    }
}
