//! Calendar windows: fixed windows aligned to the calendar of an IANA time
//! zone ("100k tokens per month, reset on the 1st at midnight in Berlin").
//!
//! The arithmetic is a pure function of an instant, [`Calendar::window_at`], and
//! lives here in the service, which has the time-zone database; the script
//! that counts is handed the boundaries around the service's now and picks the
//! window by the Redis clock, as every other limit does (see `ratelimit.lua`).
//!
//! A window starts where the zone's civil time reaches an aligned value:
//! - multiples of seconds, minutes, hours and months count from the start of
//!   the next larger unit, so they must divide it (15 minutes: :00, :15, :30,
//!   :45; 3 months: quarters);
//! - multiples of days count from the 1st of each month, whose last window is
//!   cut short at the month's end (7 days: the 1st, 8th, 15th, 22nd, 29th);
//! - weeks start on Monday, multiples counted from Monday 1970-01-05;
//! - multiples of years start in years divisible by the multiple.
//!
//! Across a change of the zone's offset, a window ends where civil time reaches
//! its end: a day is 23 or 25 hours long on the days clocks change. Where civil
//! time jumps over a boundary (02:00 on a spring-forward night) the window
//! starts at the jump. Where civil time repeats (an autumn night), windows of an
//! hour or less start at each instant civil time reaches their start, so every
//! real hour is an hourly window; days and longer start at the first.

use std::fmt;

use jiff::{
    Timestamp,
    civil::{Date, DateTime, date},
    tz::{AmbiguousOffset, TimeZone},
};

/// The unit a calendar window is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CalendarUnit {
    /// Seconds of the minute.
    Second,
    /// Minutes of the hour.
    Minute,
    /// Hours of the day.
    Hour,
    /// Days of the month.
    Day,
    /// Weeks, Monday to Sunday.
    Week,
    /// Months of the year.
    Month,
    /// Years.
    Year,
}

impl CalendarUnit {
    /// Every unit, shortest first.
    pub const ALL: [CalendarUnit; 7] = [
        CalendarUnit::Second,
        CalendarUnit::Minute,
        CalendarUnit::Hour,
        CalendarUnit::Day,
        CalendarUnit::Week,
        CalendarUnit::Month,
        CalendarUnit::Year,
    ];

    /// Its name in configuration files and keys.
    pub fn name(self) -> &'static str {
        match self {
            CalendarUnit::Second => "second",
            CalendarUnit::Minute => "minute",
            CalendarUnit::Hour => "hour",
            CalendarUnit::Day => "day",
            CalendarUnit::Week => "week",
            CalendarUnit::Month => "month",
            CalendarUnit::Year => "year",
        }
    }

    /// The multipliers it takes, as a sentence for an error message, and
    /// whether `multiplier` is one of them.
    fn allows(self, multiplier: u32) -> Result<(), &'static str> {
        let divides = |whole: u32| multiplier >= 1 && whole.is_multiple_of(multiplier);
        let (fits, rule) = match self {
            CalendarUnit::Second => (
                divides(60),
                "must divide 60 (seconds count from the start of the minute)",
            ),
            CalendarUnit::Minute => (divides(60), "must divide 60 (minutes count from the start of the hour)"),
            CalendarUnit::Hour => (divides(24), "must divide 24 (hours count from the start of the day)"),
            CalendarUnit::Day => (
                (1..=31).contains(&multiplier),
                "must be from 1 to 31 (days count from the 1st)",
            ),
            CalendarUnit::Week => ((1..=520).contains(&multiplier), "must be from 1 to 520"),
            CalendarUnit::Month => (divides(12), "must divide 12 (months count from January)"),
            CalendarUnit::Year => ((1..=100).contains(&multiplier), "must be from 1 to 100"),
        };
        if fits { Ok(()) } else { Err(rule) }
    }

    /// Whether civil time repeated by a change of offset starts a window at
    /// each of its instants (an hour or less) or at the first only.
    fn short(self) -> bool {
        matches!(self, CalendarUnit::Second | CalendarUnit::Minute | CalendarUnit::Hour)
    }

    /// The longest window of `multiplier` units on the calendar, in seconds (a
    /// change of clocks may add an hour to it in real time).
    fn longest_seconds(self, multiplier: u32) -> u64 {
        const DAY: u64 = 24 * 3600;
        let multiplier = u64::from(multiplier);
        match self {
            CalendarUnit::Second => multiplier,
            CalendarUnit::Minute => 60 * multiplier,
            CalendarUnit::Hour => 3600 * multiplier,
            CalendarUnit::Day => DAY * multiplier,
            CalendarUnit::Week => 7 * DAY * multiplier,
            CalendarUnit::Month => 31 * DAY * multiplier,
            CalendarUnit::Year => 366 * DAY * multiplier,
        }
    }
}

impl fmt::Display for CalendarUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a calendar cannot be built, and which of its parts is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalendarError {
    /// The multiplier does not fit the unit: the rule.
    Multiplier(&'static str),
    /// The time zone is not in the database: its name.
    TimeZone(String),
}

impl fmt::Display for CalendarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalendarError::Multiplier(rule) => f.write_str(rule),
            CalendarError::TimeZone(name) => write!(
                f,
                "'{name}' is not a time zone this service knows: give an IANA name such as Europe/Berlin"
            ),
        }
    }
}

/// One window, from `start` (included) to `end` (excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Its first instant.
    pub start: Timestamp,
    /// The first instant after it: the next window's start.
    pub end: Timestamp,
}

/// Windows of `multiplier` `unit`s on the calendar of one time zone.
#[derive(Debug, Clone)]
pub struct Calendar {
    unit: CalendarUnit,
    multiplier: u32,
    zone_name: String,
    zone: TimeZone,
}

impl PartialEq for Calendar {
    fn eq(&self, other: &Calendar) -> bool {
        (self.unit, self.multiplier, &self.zone_name) == (other.unit, other.multiplier, &other.zone_name)
    }
}

impl Eq for Calendar {}

impl std::hash::Hash for Calendar {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.unit, self.multiplier, &self.zone_name).hash(state);
    }
}

/// Monday 1970-01-05, from which multiples of weeks are counted.
const FIRST_MONDAY: Date = date(1970, 1, 5);

impl Calendar {
    /// Windows of `multiplier` (0 meaning 1) `unit`s in the IANA zone `zone`
    /// ("" meaning UTC).
    ///
    /// # Errors
    /// A multiplier the unit does not take, or a zone not in the database.
    pub fn new(unit: CalendarUnit, multiplier: u32, zone: &str) -> Result<Calendar, CalendarError> {
        let multiplier = multiplier.max(1);
        unit.allows(multiplier).map_err(CalendarError::Multiplier)?;
        let zone_name = if zone.is_empty() { "UTC" } else { zone };
        let time_zone = TimeZone::get(zone_name).map_err(|_| CalendarError::TimeZone(zone_name.to_owned()))?;
        // The database's own spelling, so that "europe/berlin" and
        // "Europe/Berlin" count under one key.
        let canonical = time_zone.iana_name().unwrap_or(zone_name).to_owned();
        Ok(Calendar {
            unit,
            multiplier,
            zone_name: canonical,
            zone: time_zone,
        })
    }

    /// The unit.
    pub fn unit(&self) -> CalendarUnit {
        self.unit
    }

    /// How many units a window holds.
    pub fn multiplier(&self) -> u32 {
        self.multiplier
    }

    /// The time zone's IANA name.
    pub fn zone_name(&self) -> &str {
        &self.zone_name
    }

    /// The longest any of its windows can be on the calendar (31 days for a
    /// month); a change of clocks may add an hour.
    pub fn longest(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.unit.longest_seconds(self.multiplier))
    }

    /// What tells it apart from every other calendar, for keys: `month*1@Europe/Berlin`.
    pub fn identity(&self) -> String {
        format!("{}*{}@{}", self.unit, self.multiplier, self.zone_name)
    }

    /// The window holding `instant`.
    pub fn window_at(&self, instant: Timestamp) -> Window {
        let civil = self.zone.to_datetime(instant);
        let start_civil = self.align(civil);
        let start = self
            .instants(start_civil)
            .into_iter()
            .filter(|candidate| *candidate <= instant)
            .max()
            // The aligned time is at or before the instant's own civil time, so one
            // of its instants is too; the instant itself is the safe answer if not.
            .unwrap_or(instant);
        // The end: the first instant after `instant` where civil time reaches a
        // boundary; a repeated start counts too (the second 01:00 of an autumn night).
        let mut end = None;
        let mut boundary = start_civil;
        for _ in 0..4 {
            let after = self
                .instants(boundary)
                .into_iter()
                .filter(|candidate| *candidate > instant)
                .min();
            end = match (end, after) {
                (Some(end), Some(after)) => Some(std::cmp::min(end, after)),
                (end, after) => end.or(after),
            };
            if end.is_some() && boundary != start_civil {
                break;
            }
            boundary = self.next(boundary);
        }
        let mut end = end.unwrap_or_else(|| instant + jiff::SignedDuration::from_secs(1));
        // A change of offset before that end may set civil time back to times the
        // window has passed (an autumn night): from the change on, the windows
        // count again from where civil time then stands.
        if let Some(change) = self.zone.following(instant).next().map(|change| change.timestamp())
            && change > instant
            && change < end
        {
            let civil = self.zone.to_datetime(change);
            let aligned = self.align(civil);
            // Only a boundary reached at the change itself: one a long window counts
            // at its first instant only (Havana's 01:00 back to midnight) is not.
            let restart = if aligned == civil && self.instants(aligned).contains(&change) {
                Some(change)
            } else {
                self.instants(self.next(aligned))
                    .into_iter()
                    .filter(|candidate| *candidate > change)
                    .min()
            };
            if let Some(restart) = restart {
                end = end.min(restart);
            }
        }
        Window { start, end }
    }

    /// The boundaries of the windows around `instant`: the starts of the two
    /// windows before its window, that window's start and end, and the ends of
    /// the two after it.
    pub fn boundaries(&self, instant: Timestamp) -> [Timestamp; 6] {
        let window = self.window_at(instant);
        let before = |window: Window| self.window_at(window.start - jiff::SignedDuration::from_micros(1));
        let previous = before(window);
        let first = before(previous);
        let next = self.window_at(window.end);
        let last = self.window_at(next.end);
        [
            first.start,
            previous.start,
            window.start,
            window.end,
            next.end,
            last.end,
        ]
    }

    /// The aligned civil time at or before `civil`.
    fn align(&self, civil: DateTime) -> DateTime {
        let multiple = |value: i32| value - value.rem_euclid(i32::try_from(self.multiplier).unwrap_or(1));
        let day = civil.date();
        let midnight = |day: Date| day.to_datetime(jiff::civil::Time::midnight());
        let at = |hour: i32, minute: i32, second: i32| {
            let time = jiff::civil::Time::new(
                i8::try_from(hour).unwrap_or(0),
                i8::try_from(minute).unwrap_or(0),
                i8::try_from(second).unwrap_or(0),
                0,
            )
            .unwrap_or(jiff::civil::Time::midnight());
            day.to_datetime(time)
        };
        let (hour, minute, second) = (
            i32::from(civil.hour()),
            i32::from(civil.minute()),
            i32::from(civil.second()),
        );
        match self.unit {
            CalendarUnit::Second => at(hour, minute, multiple(second)),
            CalendarUnit::Minute => at(hour, multiple(minute), 0),
            CalendarUnit::Hour => at(multiple(hour), 0, 0),
            CalendarUnit::Day => {
                let first = i32::from(day.day()) - 1;
                midnight(
                    day.first_of_month()
                        .saturating_add(jiff::Span::new().days(multiple(first))),
                )
            }
            CalendarUnit::Week => {
                let days = (day - FIRST_MONDAY).get_days();
                let weeks = days.div_euclid(7);
                midnight(FIRST_MONDAY.saturating_add(jiff::Span::new().weeks(multiple(weeks))))
            }
            CalendarUnit::Month => {
                let month = multiple(i32::from(day.month()) - 1) + 1;
                midnight(date(day.year(), i8::try_from(month).unwrap_or(1), 1))
            }
            CalendarUnit::Year => {
                let year = multiple(i32::from(day.year()));
                midnight(date(i16::try_from(year).unwrap_or(day.year()), 1, 1))
            }
        }
    }

    /// The aligned civil time after `aligned`.
    fn next(&self, aligned: DateTime) -> DateTime {
        let count = i64::from(self.multiplier);
        let span = match self.unit {
            CalendarUnit::Second => jiff::Span::new().seconds(count),
            CalendarUnit::Minute => jiff::Span::new().minutes(count),
            CalendarUnit::Hour => jiff::Span::new().hours(count),
            CalendarUnit::Day => {
                let later = aligned.saturating_add(jiff::Span::new().days(count));
                let next_month = aligned
                    .date()
                    .first_of_month()
                    .saturating_add(jiff::Span::new().months(1))
                    .to_datetime(jiff::civil::Time::midnight());
                return later.min(next_month);
            }
            CalendarUnit::Week => jiff::Span::new().weeks(count),
            CalendarUnit::Month => jiff::Span::new().months(count),
            CalendarUnit::Year => jiff::Span::new().years(count),
        };
        aligned.saturating_add(span)
    }

    /// The instants at which the zone's civil time reaches `civil`: one, two where
    /// it repeats (the first only for windows longer than an hour), and the end of
    /// the jump where it is skipped.
    fn instants(&self, civil: DateTime) -> Vec<Timestamp> {
        let stamp = |offset: jiff::tz::Offset| offset.to_timestamp(civil).ok();
        match self.zone.to_ambiguous_timestamp(civil).offset() {
            AmbiguousOffset::Unambiguous { offset } => stamp(offset).into_iter().collect(),
            AmbiguousOffset::Fold { before, after } => {
                if self.unit.short() {
                    [stamp(before), stamp(after)].into_iter().flatten().collect()
                } else {
                    stamp(before).into_iter().collect()
                }
            }
            AmbiguousOffset::Gap { before, .. } => {
                // Read with the offset before the jump, `civil` lies past it by as
                // much as it lies inside the skipped time: the jump is the last
                // transition up to there.
                let Some(past) = stamp(before) else {
                    return Vec::new();
                };
                let probe = past + jiff::SignedDuration::from_micros(1);
                self.zone
                    .preceding(probe)
                    .next()
                    .map(|transition| transition.timestamp())
                    .into_iter()
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn window(calendar: &Calendar, instant: &str) -> (String, String) {
        let window = calendar.window_at(at(instant));
        (window.start.to_string(), window.end.to_string())
    }

    fn calendar(unit: CalendarUnit, multiplier: u32, zone: &str) -> Calendar {
        Calendar::new(unit, multiplier, zone).unwrap()
    }

    fn pair(start: &str, end: &str) -> (String, String) {
        (start.to_owned(), end.to_owned())
    }

    #[test]
    fn months_end_where_the_month_does() {
        let month = calendar(CalendarUnit::Month, 1, "UTC");
        assert_eq!(
            window(&month, "2026-01-31T23:59:59.999999Z"),
            pair("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")
        );
        assert_eq!(
            window(&month, "2026-02-01T00:00:00Z"),
            pair("2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z")
        );
        assert_eq!(
            window(&month, "2026-04-30T12:00:00Z"),
            pair("2026-04-01T00:00:00Z", "2026-05-01T00:00:00Z")
        );
        assert_eq!(
            window(&month, "2026-12-31T23:00:00Z"),
            pair("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z")
        );
        let quarter = calendar(CalendarUnit::Month, 3, "UTC");
        assert_eq!(
            window(&quarter, "2026-05-17T08:00:00Z"),
            pair("2026-04-01T00:00:00Z", "2026-07-01T00:00:00Z")
        );
        // Midnight of the 1st in Berlin is 23:00 or 22:00 UTC the day before.
        let berlin = calendar(CalendarUnit::Month, 1, "Europe/Berlin");
        assert_eq!(
            window(&berlin, "2026-02-28T22:59:59Z"),
            pair("2026-01-31T23:00:00Z", "2026-02-28T23:00:00Z")
        );
        assert_eq!(
            window(&berlin, "2026-03-31T21:59:59Z"),
            pair("2026-02-28T23:00:00Z", "2026-03-31T22:00:00Z")
        );
    }

    #[test]
    fn leap_days_and_leap_years() {
        let month = calendar(CalendarUnit::Month, 1, "UTC");
        assert_eq!(
            window(&month, "2028-02-29T23:59:59Z"),
            pair("2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z")
        );
        let day = calendar(CalendarUnit::Day, 1, "America/New_York");
        assert_eq!(
            window(&day, "2028-02-29T12:00:00Z"),
            pair("2028-02-29T05:00:00Z", "2028-03-01T05:00:00Z")
        );
        let year = calendar(CalendarUnit::Year, 1, "UTC");
        let leap = year.window_at(at("2028-07-01T00:00:00Z"));
        assert_eq!(leap.end.duration_since(leap.start).as_secs(), 366 * 86_400);
        let plain = year.window_at(at("2027-07-01T00:00:00Z"));
        assert_eq!(plain.end.duration_since(plain.start).as_secs(), 365 * 86_400);
        // Weeks of days restart on the 1st: the last one is cut short, by a day
        // less in a leap February.
        let week_of_days = calendar(CalendarUnit::Day, 7, "UTC");
        assert_eq!(
            window(&week_of_days, "2028-02-29T00:00:00Z"),
            pair("2028-02-29T00:00:00Z", "2028-03-01T00:00:00Z")
        );
        assert_eq!(
            window(&week_of_days, "2027-02-28T00:00:00Z"),
            pair("2027-02-22T00:00:00Z", "2027-03-01T00:00:00Z")
        );
        let decade = calendar(CalendarUnit::Year, 10, "UTC");
        assert_eq!(
            window(&decade, "2026-06-01T00:00:00Z"),
            pair("2020-01-01T00:00:00Z", "2030-01-01T00:00:00Z")
        );
    }

    #[test]
    fn berlin_days_are_23_and_25_hours_long_when_the_clocks_change() {
        let day = calendar(CalendarUnit::Day, 1, "Europe/Berlin");
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST.
        let spring = day.window_at(at("2026-03-29T10:00:00Z"));
        assert_eq!(spring.start, at("2026-03-28T23:00:00Z"));
        assert_eq!(spring.end, at("2026-03-29T22:00:00Z"));
        assert_eq!(spring.end.duration_since(spring.start).as_hours(), 23);
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET.
        let autumn = day.window_at(at("2026-10-25T10:00:00Z"));
        assert_eq!(autumn.start, at("2026-10-24T22:00:00Z"));
        assert_eq!(autumn.end, at("2026-10-25T23:00:00Z"));
        assert_eq!(autumn.end.duration_since(autumn.start).as_hours(), 25);
    }

    #[test]
    fn berlin_hours_across_both_changes() {
        let hour = calendar(CalendarUnit::Hour, 1, "Europe/Berlin");
        // Spring: 01:00-02:00 CET is followed at once by 03:00-04:00 CEST.
        assert_eq!(
            window(&hour, "2026-03-29T00:59:59Z"),
            pair("2026-03-29T00:00:00Z", "2026-03-29T01:00:00Z")
        );
        assert_eq!(
            window(&hour, "2026-03-29T01:00:00Z"),
            pair("2026-03-29T01:00:00Z", "2026-03-29T02:00:00Z")
        );
        // Autumn: 02:00-03:00 happens twice, and each is an hour of its own.
        assert_eq!(
            window(&hour, "2026-10-25T00:30:00Z"),
            pair("2026-10-25T00:00:00Z", "2026-10-25T01:00:00Z")
        );
        assert_eq!(
            window(&hour, "2026-10-25T01:30:00Z"),
            pair("2026-10-25T01:00:00Z", "2026-10-25T02:00:00Z")
        );
        // Six-hour windows from midnight: the one holding the jump is 5 hours long,
        // the one holding the repeat 7.
        let quarter_day = calendar(CalendarUnit::Hour, 6, "Europe/Berlin");
        let short = quarter_day.window_at(at("2026-03-29T02:00:00Z"));
        assert_eq!(
            (short.start, short.end),
            (at("2026-03-28T23:00:00Z"), at("2026-03-29T04:00:00Z"))
        );
        let long = quarter_day.window_at(at("2026-10-25T02:00:00Z"));
        assert_eq!(
            (long.start, long.end),
            (at("2026-10-24T22:00:00Z"), at("2026-10-25T05:00:00Z"))
        );
    }

    #[test]
    fn new_york_across_both_changes() {
        let day = calendar(CalendarUnit::Day, 1, "America/New_York");
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT.
        let spring = day.window_at(at("2026-03-08T12:00:00Z"));
        assert_eq!(
            (spring.start, spring.end),
            (at("2026-03-08T05:00:00Z"), at("2026-03-09T04:00:00Z"))
        );
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST.
        let autumn = day.window_at(at("2026-11-01T12:00:00Z"));
        assert_eq!(
            (autumn.start, autumn.end),
            (at("2026-11-01T04:00:00Z"), at("2026-11-02T05:00:00Z"))
        );
        let hour = calendar(CalendarUnit::Hour, 1, "America/New_York");
        // The skipped 02:00: the hour from 01:00 EST ends at the jump (07:00 UTC),
        // where 03:00 EDT begins.
        assert_eq!(
            window(&hour, "2026-03-08T06:59:59Z"),
            pair("2026-03-08T06:00:00Z", "2026-03-08T07:00:00Z")
        );
        assert_eq!(
            window(&hour, "2026-03-08T07:00:00Z"),
            pair("2026-03-08T07:00:00Z", "2026-03-08T08:00:00Z")
        );
        // The repeated 01:00: once in EDT, once in EST.
        assert_eq!(
            window(&hour, "2026-11-01T05:59:59Z"),
            pair("2026-11-01T05:00:00Z", "2026-11-01T06:00:00Z")
        );
        assert_eq!(
            window(&hour, "2026-11-01T06:00:00Z"),
            pair("2026-11-01T06:00:00Z", "2026-11-01T07:00:00Z")
        );
        // Fifteen minutes inside the repeated hour, the second time round.
        let quarter = calendar(CalendarUnit::Minute, 15, "America/New_York");
        assert_eq!(
            window(&quarter, "2026-11-01T06:20:00Z"),
            pair("2026-11-01T06:15:00Z", "2026-11-01T06:30:00Z")
        );
        // A month holding the autumn change: from midnight EDT to midnight EST.
        let month = calendar(CalendarUnit::Month, 1, "America/New_York");
        assert_eq!(
            window(&month, "2026-11-15T00:00:00Z"),
            pair("2026-11-01T04:00:00Z", "2026-12-01T05:00:00Z")
        );
    }

    #[test]
    fn short_multiples_and_weeks_align_to_the_larger_unit() {
        let two_seconds = calendar(CalendarUnit::Second, 2, "UTC");
        assert_eq!(
            window(&two_seconds, "2026-12-05T10:00:59.5Z"),
            pair("2026-12-05T10:00:58Z", "2026-12-05T10:01:00Z")
        );
        let quarter_hour = calendar(CalendarUnit::Minute, 15, "Asia/Kolkata");
        // +05:30: a quarter hour of local time starts at :00 or :30 UTC too.
        assert_eq!(
            window(&quarter_hour, "2026-12-05T10:07:00Z"),
            pair("2026-12-05T10:00:00Z", "2026-12-05T10:15:00Z")
        );
        let week = calendar(CalendarUnit::Week, 1, "UTC");
        // 2026-12-05 is a Saturday; its week began on Monday the 30th of November.
        assert_eq!(
            window(&week, "2026-12-05T10:00:00Z"),
            pair("2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z")
        );
    }

    #[test]
    fn consecutive_windows_tile_time_without_gaps() {
        for (unit, multiplier, zone) in [
            (CalendarUnit::Hour, 1, "Europe/Berlin"),
            (CalendarUnit::Minute, 30, "America/New_York"),
            (CalendarUnit::Day, 1, "America/New_York"),
            (CalendarUnit::Day, 10, "Europe/Berlin"),
            (CalendarUnit::Hour, 1, "America/New_York"),
            (CalendarUnit::Minute, 15, "Europe/Berlin"),
            (CalendarUnit::Hour, 4, "Europe/Berlin"),
            // Clocks go back from 01:00 to midnight.
            (CalendarUnit::Day, 1, "America/Havana"),
            (CalendarUnit::Month, 1, "America/Havana"),
            (CalendarUnit::Day, 1, "Atlantic/Azores"),
            (CalendarUnit::Hour, 1, "Atlantic/Azores"),
            // Half-hour changes.
            (CalendarUnit::Hour, 1, "Australia/Lord_Howe"),
            (CalendarUnit::Day, 1, "Australia/Lord_Howe"),
        ] {
            let calendar = calendar(unit, multiplier, zone);
            let mut window = calendar.window_at(at("2026-03-01T00:00:00Z"));
            while window.end < at("2026-11-30T00:00:00Z") {
                let next = calendar.window_at(window.end);
                assert_eq!(next.start, window.end, "{unit}×{multiplier} in {zone}");
                assert!(next.end > next.start);
                let inside = calendar.window_at(next.end - jiff::SignedDuration::from_micros(1));
                assert_eq!(inside, next, "{unit}×{multiplier} in {zone}");
                window = next;
            }
        }
    }

    #[test]
    fn bad_multipliers_and_zones_are_named() {
        assert!(matches!(
            Calendar::new(CalendarUnit::Minute, 7, "UTC"),
            Err(CalendarError::Multiplier(_))
        ));
        assert!(matches!(
            Calendar::new(CalendarUnit::Month, 5, "UTC"),
            Err(CalendarError::Multiplier(_))
        ));
        assert!(matches!(
            Calendar::new(CalendarUnit::Day, 1, "Mars/Olympus_Mons"),
            Err(CalendarError::TimeZone(_))
        ));
        assert_eq!(calendar(CalendarUnit::Day, 0, "").identity(), "day*1@UTC");
    }
}
