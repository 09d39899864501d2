//! The text `btfs info file.torrent` prints.
//!
//! Names, URLs and comments come from the torrent and go to a terminal, so control characters
//! are printed escaped: a hostile name must not move the cursor or rewrite the screen.

use std::fmt::Write;

use super::Torrent;

pub fn summary(t: &Torrent) -> String {
    let info = &t.info;
    let g = &info.geometry;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let mut line = |label: &str, value: &str| {
        let label = if label.is_empty() {
            String::new()
        } else {
            format!("{label}:")
        };
        let _ = writeln!(out, "{label:<14}{}", printable(value));
    };
    line("name", &info.name);
    line("info-hash", &t.info_hash.to_string());
    let total = g.total_length();
    let padding: u64 = info
        .files
        .iter()
        .filter(|f| f.padding)
        .map(|f| f.length)
        .sum();
    let of_them = if padding > 0 {
        format!(", {padding} of them padding")
    } else {
        String::new()
    };
    line(
        "total size",
        &format!("{} ({total} bytes{of_them})", human(total)),
    );
    let pl = u64::from(g.piece_length());
    line("piece length", &format!("{} ({pl} bytes)", human(pl)));
    line("pieces", &g.piece_count().to_string());
    line("private", if info.private { "yes" } else { "no" });
    if t.trackers.is_empty() {
        line("trackers", "none");
    }
    for (i, tier) in t.trackers.iter().enumerate() {
        for (j, url) in tier.iter().enumerate() {
            let label = if (i, j) == (0, 0) { "trackers" } else { "" };
            let tier = if j == 0 {
                format!("tier {}", i + 1)
            } else {
                String::new()
            };
            line(label, &format!("{tier:<8}{url}"));
        }
    }
    for (i, url) in t.url_list.iter().enumerate() {
        line(if i == 0 { "web seeds" } else { "" }, url);
    }
    if let Some(by) = &t.created_by {
        line("created by", by);
    }
    if let Some(date) = t.creation_date {
        line("created on", &utc_date(date));
    }
    if let Some(comment) = &t.comment {
        line("comment", comment);
    }
    let visible: Vec<_> = info.files.iter().filter(|f| !f.padding).collect();
    let _ = writeln!(out, "files ({}):", visible.len());
    for f in visible {
        let _ = writeln!(
            out,
            "  {:>10}  {}",
            human(f.length),
            printable(&f.path.join("/"))
        );
    }
    out
}

/// Binary units with one decimal, e.g. `1.5 MiB`; plain bytes below 1 KiB.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `YYYY-MM-DD HH:MM:SS UTC` for years 0 to 9999, else the raw number of seconds.
fn utc_date(secs: i64) -> String {
    const MAX: i64 = 253_402_300_799; // 9999-12-31 23:59:59
    const MIN: i64 = -62_167_219_200; // 0000-01-01 00:00:00
    if !(MIN..=MAX).contains(&secs) {
        return format!("{secs} seconds since 1970");
    }
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to civil date, after Howard Hinnant's `civil_from_days` (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The text with control characters (newlines, escapes) shown as escapes.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_ls_h() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1024), "1.0 KiB");
        assert_eq!(human(1536 * 1024), "1.5 MiB");
        assert_eq!(human(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn dates_are_utc_and_absurd_ones_stay_numbers() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc_date(951_825_600), "2000-02-29 12:00:00 UTC");
        assert_eq!(utc_date(-1), "1969-12-31 23:59:59 UTC");
        assert_eq!(
            utc_date(i64::MAX),
            format!("{} seconds since 1970", i64::MAX)
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("a\nb\x1b[2J"), "a\\nb\\u{1b}[2J");
        assert_eq!(printable("ünï"), "ünï");
    }
}
