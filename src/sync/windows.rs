//! Sync windows (`syncPolicy.windows`), as Argo CD has them: whether a new
//! revision may be applied at a given time. Pure: the time is an argument.
//!
//! - no windows: always;
//! - an open deny window: never (deny wins over allow);
//! - allow windows: only while one is open.
//!
//! A window is open from each time its schedule matches (in its time zone)
//! for its duration.

use jiff::{Timestamp, Zoned};

use crate::declare::model::{SyncWindow, Window, WindowKind};

/// Whether the windows let a sync through now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Open,
    /// Held back: why (the window, and until when), in one line.
    Closed(String),
}

impl Verdict {
    pub fn is_open(&self) -> bool {
        matches!(self, Verdict::Open)
    }
}

/// When `window` is open at `now`: the end of that opening.
pub fn open_until(window: &Window, now: Timestamp) -> Option<Timestamp> {
    // Open at `now` iff it opened in (now - duration, now].
    let since = now.checked_sub(window.duration).ok()?;
    let since = Zoned::new(since, window.time_zone.clone());
    let opened = window.schedule.find_next_occurrence(&since, false).ok()?;
    let opened = opened.timestamp();
    (opened <= now).then(|| opened.checked_add(window.duration).ok())?
}

/// The next time `window` opens after `now`.
fn next_opening(window: &Window, now: Timestamp) -> Option<Timestamp> {
    let now = Zoned::new(now, window.time_zone.clone());
    window
        .schedule
        .find_next_occurrence(&now, false)
        .ok()
        .map(|z| z.timestamp())
}

/// The verdict of `windows` at `now`. Windows that do not check (the
/// repository was validated, so none here) are ignored.
pub fn verdict(windows: &[SyncWindow], now: Timestamp) -> Verdict {
    let windows: Vec<Window> = windows.iter().filter_map(|w| w.checked().ok()).collect();
    if let Some((w, until)) = windows
        .iter()
        .filter(|w| w.kind == WindowKind::Deny)
        .find_map(|w| Some((w, open_until(w, now)?)))
    {
        return Verdict::Closed(format!(
            "deny window {} is open until {}",
            w.text,
            until.round(jiff::Unit::Second).unwrap_or(until)
        ));
    }
    let allow: Vec<&Window> = windows
        .iter()
        .filter(|w| w.kind == WindowKind::Allow)
        .collect();
    if allow.is_empty() || allow.iter().any(|w| open_until(w, now).is_some()) {
        return Verdict::Open;
    }
    let next = allow.iter().filter_map(|w| next_opening(w, now)).min();
    Verdict::Closed(match next {
        Some(t) => format!("outside its allow windows; the next opens at {t}"),
        None => "outside its allow windows".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(kind: WindowKind, schedule: &str, duration: &str, tz: Option<&str>) -> SyncWindow {
        SyncWindow {
            kind,
            schedule: schedule.into(),
            duration: duration.into(),
            time_zone: tz.map(Into::into),
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn an_allow_window_is_open_from_its_schedule_for_its_duration() {
        // Mondays 00:00-03:00 UTC; 2026-11-30 is a Monday.
        let monday = [window(WindowKind::Allow, "0 0 * * 1", "3h", None)];
        assert!(verdict(&monday, at("2026-11-30T00:00:00Z")).is_open());
        assert!(verdict(&monday, at("2026-11-30T02:59:59Z")).is_open());
        let after = verdict(&monday, at("2026-11-30T03:00:00Z"));
        assert_eq!(
            after,
            Verdict::Closed(
                "outside its allow windows; the next opens at 2026-12-07T00:00:00Z".into()
            )
        );
        assert!(!verdict(&monday, at("2026-12-03T05:00:00Z")).is_open());
        assert!(verdict(&[], at("2026-12-03T05:00:00Z")).is_open());
    }

    #[test]
    fn a_deny_window_wins_over_an_open_allow_window_and_time_zones_count() {
        let windows = [
            window(WindowKind::Allow, "0 * * * *", "1h", None),
            // A freeze over Christmas Day, Berlin time.
            window(
                WindowKind::Deny,
                "0 0 25 12 *",
                "24h",
                Some("Europe/Berlin"),
            ),
        ];
        assert!(verdict(&windows, at("2026-12-24T22:59:00Z")).is_open());
        let frozen = verdict(&windows, at("2026-12-24T23:00:00Z"));
        assert_eq!(
            frozen,
            Verdict::Closed(
                "deny window deny `0 0 25 12 *` for 24h (Europe/Berlin) is open until 2026-12-25T23:00:00Z".into()
            )
        );
        assert!(verdict(&windows, at("2026-12-25T23:00:00Z")).is_open());
    }

    #[test]
    fn bad_windows_name_the_field_and_what_to_write() {
        let bad = |w: SyncWindow| w.checked().unwrap_err();
        assert_eq!(
            bad(window(WindowKind::Allow, "every monday", "3h", None)).0,
            "schedule"
        );
        let (field, why) = bad(window(WindowKind::Allow, "0 0 * * 1", "three hours", None));
        assert_eq!(field, "duration");
        assert!(why.contains("`3h`"), "{why}");
        assert_eq!(
            bad(window(WindowKind::Allow, "0 0 * * 1", "-1h", None)).0,
            "duration"
        );
        assert_eq!(
            bad(window(
                WindowKind::Deny,
                "0 0 * * 1",
                "1h",
                Some("Mars/Olympus")
            ))
            .0,
            "timeZone"
        );
    }
}
