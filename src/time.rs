//! Timestamp reading for normalisers (docs/schema.md section 2.4): offsets are authoritative,
//! naive local strings are resolved in the source's zone through the tz database, epochs are
//! seconds unless said otherwise, and every time is checked against a plausibility window.

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::model::{Reject, RejectCode};

/// Readings further ahead than this are refused: it catches milliseconds sent as seconds.
pub const MAX_FUTURE_MS: i64 = 10 * 60 * 1000;
/// 2000-01-01T00:00:00Z: older readings are refused; it catches seconds sent as milliseconds.
pub const MIN_TIME_MS: i64 = 946_684_800_000;

/// Reads an RFC 3339 time with an offset, or a naive `YYYY-MM-DD[T ]HH:MM:SS[.fff]` in `zone`.
/// Sub-millisecond digits are truncated.
pub fn parse_time(field: &str, text: &str, zone: Tz) -> Result<i64, Reject> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    // RFC 3339 with a space instead of T, as the Paris open-data API sometimes returns.
    if let Ok(t) = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Ok(t.timestamp_millis());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return local_to_utc(field, naive, zone);
        }
    }
    Err(Reject::new(
        RejectCode::MalformedPayload,
        format!("field {field}: {text:?} is not an RFC 3339 or YYYY-MM-DD HH:MM:SS time"),
    ))
}

/// Resolves a naive local time in `zone`; a fall-back hour is ambiguous, a spring-forward gap
/// does not exist: both are refused rather than guessed.
pub fn local_to_utc(field: &str, naive: NaiveDateTime, zone: Tz) -> Result<i64, Reject> {
    match zone.from_local_datetime(&naive) {
        LocalResult::Single(t) => Ok(t.with_timezone(&Utc).timestamp_millis()),
        LocalResult::Ambiguous(a, b) => Err(Reject::new(
            RejectCode::AmbiguousLocalTime,
            format!(
                "field {field}: local time {naive} in {zone} is either {} or {}",
                a.with_timezone(&Utc).to_rfc3339(),
                b.with_timezone(&Utc).to_rfc3339()
            ),
        )),
        LocalResult::None => Err(Reject::new(
            RejectCode::NonexistentLocalTime,
            format!("field {field}: local time {naive} does not exist in {zone} (DST gap)"),
        )),
    }
}

/// Refuses times more than ten minutes ahead of `now` or before 2000.
pub fn check_window(field: &str, time_ms: i64, now: DateTime<Utc>) -> Result<i64, Reject> {
    if time_ms > now.timestamp_millis() + MAX_FUTURE_MS {
        return Err(Reject::new(
            RejectCode::TimestampInFuture,
            format!(
                "field {field}: {} is more than 10 min ahead of now ({})",
                format_ms(time_ms),
                now.to_rfc3339()
            ),
        ));
    }
    if time_ms < MIN_TIME_MS {
        return Err(Reject::new(
            RejectCode::TimestampTooOld,
            format!("field {field}: {} is before 2000-01-01", format_ms(time_ms)),
        ));
    }
    Ok(time_ms)
}

pub fn format_ms(time_ms: i64) -> String {
    match Utc.timestamp_millis_opt(time_ms) {
        LocalResult::Single(t) => t.to_rfc3339(),
        _ => format!("{time_ms} ms since epoch (out of calendar range)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_naive_paris_time_is_resolved_with_the_tz_database() {
        let ms = parse_time("t_1h", "2025-03-14 09:00:00", chrono_tz::Europe::Paris).unwrap();
        assert_eq!(format_ms(ms), "2025-03-14T08:00:00+00:00");
        // summer time: UTC+2
        let ms = parse_time("t_1h", "2025-07-14 09:00:00", chrono_tz::Europe::Paris).unwrap();
        assert_eq!(format_ms(ms), "2025-07-14T07:00:00+00:00");
    }

    #[test]
    fn the_fall_back_hour_is_ambiguous_and_the_spring_gap_does_not_exist() {
        let paris = chrono_tz::Europe::Paris;
        let err = parse_time("t", "2025-10-26 02:30:00", paris).unwrap_err();
        assert_eq!(err.code, RejectCode::AmbiguousLocalTime);
        let err = parse_time("t", "2025-03-30 02:30:00", paris).unwrap_err();
        assert_eq!(err.code, RejectCode::NonexistentLocalTime);
    }

    #[test]
    fn an_offset_wins_over_the_zone_and_sub_milliseconds_are_truncated() {
        let ms = parse_time(
            "time",
            "2025-03-14T08:15:02.482913+00:00",
            chrono_tz::America::Los_Angeles,
        )
        .unwrap();
        assert_eq!(ms % 1000, 482);
    }

    #[test]
    fn milliseconds_sent_as_seconds_land_in_the_future() {
        let now = Utc::now();
        let t = 1_741_963_290_000 * 1000; // ms read as s, in ms
        assert_eq!(
            check_window("last_reported", t, now).unwrap_err().code,
            RejectCode::TimestampInFuture
        );
        let t = 1_741_963_290; // s read as ms
        assert_eq!(
            check_window("last_reported", t, now).unwrap_err().code,
            RejectCode::TimestampTooOld
        );
    }
}
