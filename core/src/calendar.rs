//! The proleptic Gregorian calendar in UTC: dates to and from days since 1970-01-01, and
//! `YYYY-MM-DD` parsing that refuses dates that do not exist (`2025-02-31`, `2023-02-29`).
//!
//! The day-count conversions are Howard Hinnant's `days_from_civil` / `civil_from_days`
//! (<https://howardhinnant.github.io/date_algorithms.html>), exact for every `i64` year range
//! used here. Budget periods (`limits::period_start`) and the admin API's date bounds
//! both go through this module.

use std::fmt;

/// Seconds in a day.
pub const DAY_S: u64 = 86_400;

/// A date that exists: month 1-12, day within the month's length (leap years counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    year: i64,
    month: u32,
    day: u32,
}

impl Date {
    /// The date, if it exists.
    pub fn new(year: i64, month: u32, day: u32) -> Option<Date> {
        let valid = (1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month);
        valid.then_some(Date { year, month, day })
    }

    /// Reads `YYYY-MM-DD`: exactly four, two and two ASCII digits, and a date that exists.
    pub fn parse(s: &str) -> Option<Date> {
        let b = s.as_bytes();
        if b.len() != 10 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
            return None;
        }
        let num = |from: usize, to: usize| -> Option<u32> {
            let digits = b.get(from..to)?;
            digits.iter().try_fold(0u32, |n, &c| {
                c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
            })
        };
        Date::new(i64::from(num(0, 4)?), num(5, 7)?, num(8, 10)?)
    }

    /// The date `days` days after 1970-01-01 (before it when negative).
    pub fn from_days(days: i64) -> Date {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Date {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
        }
    }

    /// The UTC date of a unix second.
    pub fn from_unix_s(unix_s: u64) -> Date {
        Date::from_days((unix_s / DAY_S) as i64)
    }

    /// Days since 1970-01-01 (negative before it).
    pub fn days(self) -> i64 {
        let y = if self.month <= 2 {
            self.year - 1
        } else {
            self.year
        };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (i64::from(self.month) + 9) % 12;
        let doy = (153 * mp + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The unix second at which the date starts, `None` before 1970.
    pub fn unix_s(self) -> Option<u64> {
        u64::try_from(self.days()).ok()?.checked_mul(DAY_S)
    }

    /// The first day of the date's month.
    pub fn month_start(self) -> Date {
        Date { day: 1, ..self }
    }

    /// The first day of the next month.
    pub fn next_month_start(self) -> Date {
        if self.month == 12 {
            Date {
                year: self.year + 1,
                month: 1,
                day: 1,
            }
        } else {
            Date {
                month: self.month + 1,
                day: 1,
                ..self
            }
        }
    }

    /// The year.
    pub fn year(self) -> i64 {
        self.year
    }

    /// The month, 1-12.
    pub fn month(self) -> u32 {
        self.month
    }

    /// The day of the month, from 1.
    pub fn day(self) -> u32 {
        self.day
    }
}

impl fmt::Display for Date {
    /// `YYYY-MM-DD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// Whether `year` has a February 29th.
pub fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Days in `month` (1-12) of `year`; 0 for a month that does not exist.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_dates() {
        assert_eq!(Date::new(1970, 1, 1).map(Date::days), Some(0));
        assert_eq!(Date::parse("2024-03-15").map(Date::days), Some(19_797));
        assert_eq!(
            Date::parse("2024-03-15").and_then(Date::unix_s),
            Some(1_710_460_800)
        );
        assert_eq!(Date::from_days(-1).to_string(), "1969-12-31");
        assert_eq!(Date::from_unix_s(1_710_504_000).to_string(), "2024-03-15");
        assert_eq!(Date::parse("1969-12-31").and_then(Date::unix_s), None);
        let dec = Date::parse("2023-12-31").unwrap();
        assert_eq!(dec.month_start().to_string(), "2023-12-01");
        assert_eq!(dec.next_month_start().to_string(), "2024-01-01");
        assert_eq!(
            Date::parse("2024-02-10")
                .unwrap()
                .next_month_start()
                .to_string(),
            "2024-03-01"
        );
    }

    #[test]
    fn leap_years() {
        assert!(is_leap_year(2024) && is_leap_year(2000) && is_leap_year(1600));
        assert!(!is_leap_year(2023) && !is_leap_year(1900) && !is_leap_year(2100));
        assert!(Date::parse("2024-02-29").is_some());
        assert!(Date::parse("2000-02-29").is_some());
        assert!(Date::parse("2023-02-29").is_none());
        assert!(Date::parse("1900-02-29").is_none());
    }

    #[test]
    fn refuses_dates_that_do_not_exist_or_are_misspelt() {
        for bad in [
            "2025-02-31",
            "2025-04-31",
            "2025-00-10",
            "2025-13-01",
            "2025-01-00",
            "2025-01-32",
            "2025-1-05",
            "2025-01-5",
            "25-01-05",
            "+025-01-05",
            "2025-+1-05",
            "2025/01/05",
            "2025-01-05 ",
            "2025-01-05T00:00:00Z",
            "",
            "yesterday",
            "２０２５-01-05",
        ] {
            assert_eq!(Date::parse(bad), None, "{bad}");
        }
    }

    /// Every day from 1600 to 2400: days -> date -> days and date -> text -> date round-trip,
    /// and consecutive days are consecutive dates.
    #[test]
    fn every_day_round_trips() {
        let first = Date::new(1600, 1, 1).unwrap().days();
        let last = Date::new(2400, 12, 31).unwrap().days();
        let mut prev = Date::from_days(first - 1);
        for n in first..=last {
            let d = Date::from_days(n);
            assert_eq!(d.days(), n);
            assert_eq!(Date::new(d.year(), d.month(), d.day()), Some(d));
            assert_eq!(Date::parse(&d.to_string()), Some(d));
            let next_of_prev = if prev.day() == days_in_month(prev.year(), prev.month()) {
                prev.next_month_start()
            } else {
                Date {
                    day: prev.day() + 1,
                    ..prev
                }
            };
            assert_eq!(d, next_of_prev);
            prev = d;
        }
    }

    proptest! {
        /// A date exists exactly when its day is within its month's length, and existing dates
        /// round-trip through the day count and the text form.
        #[test]
        fn valid_exactly_within_month_length(y in 0i64..=9999, m in 0u32..=13, d in 0u32..=32) {
            let exists = (1..=12).contains(&m) && (1..=days_in_month(y, m)).contains(&d);
            let date = Date::new(y, m, d);
            prop_assert_eq!(date.is_some(), exists);
            let text = format!("{y:04}-{m:02}-{d:02}");
            prop_assert_eq!(Date::parse(&text), date);
            if let Some(date) = date {
                prop_assert_eq!(Date::from_days(date.days()), date);
            }
        }

        /// Any string either fails to parse or is the canonical text of the date it parses to.
        #[test]
        fn parse_accepts_only_canonical_text(s in "[0-9+-]{0,12}") {
            if let Some(d) = Date::parse(&s) {
                prop_assert_eq!(d.to_string(), s);
            }
        }
    }
}
