//! Validation of migration ids.

/// Checks that `id` is `YYYYMMDD_HHMM[SS]_name`, with `name` in lowercase snake case.
///
/// Ids sort lexicographically, so the timestamp prefix gives the order in which migrations
/// run; a fixed shape keeps that order meaningful.
pub(crate) fn validate(id: &str) -> Result<(), String> {
    const SHAPE: &str = "expected `YYYYMMDD_HHMM_name` (or `YYYYMMDD_HHMMSS_name`), \
                         e.g. \"20241114_0930_backfill_notification_settings\"";
    if id.len() > 128 {
        return Err(format!(
            "it is {} characters long, at most 128 are allowed",
            id.len()
        ));
    }
    let mut parts = id.splitn(3, '_');
    let (Some(date), Some(time), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SHAPE.to_string());
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if date.len() != 8 || !digits(date) {
        return Err(format!("the date `{date}` is not 8 digits: {SHAPE}"));
    }
    let month: u32 = date[4..6].parse().unwrap_or(0);
    let day: u32 = date[6..8].parse().unwrap_or(0);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(format!("`{date}` is not a date (YYYYMMDD): {SHAPE}"));
    }
    if !(time.len() == 4 || time.len() == 6) || !digits(time) {
        return Err(format!("the time `{time}` is not HHMM or HHMMSS: {SHAPE}"));
    }
    let hour: u32 = time[0..2].parse().unwrap_or(99);
    let minute: u32 = time[2..4].parse().unwrap_or(99);
    let second: u32 = time.get(4..6).map_or(0, |s| s.parse().unwrap_or(99));
    if hour > 23 || minute > 59 || second > 59 {
        return Err(format!("`{time}` is not a time of day: {SHAPE}"));
    }
    let name_ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !name_ok {
        return Err(format!(
            "the name `{name}` must start with a lowercase letter and hold only lowercase \
             letters, digits and underscores: {SHAPE}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_timestamped_snake_case_ids() {
        assert!(validate("20241114_0930_backfill_notification_settings").is_ok());
        assert!(validate("20241114_093015_v2").is_ok());
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "backfill",
            "2024111_0930_x",
            "20241314_0930_x",
            "20241114_2460_x",
            "20241114_0930_",
            "20241114_0930_Backfill",
            "20241114_0930_back-fill",
            "20241114_0930_9lives",
        ] {
            assert!(validate(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
