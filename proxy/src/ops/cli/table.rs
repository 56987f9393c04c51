//! Output of the reporting commands: aligned tables for people, CSV for spreadsheets.

/// A table: a header row and data rows of the same width; numeric columns right-aligned.
pub struct Table {
    headers: Vec<&'static str>,
    numeric: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with `columns` as (header, right-aligned).
    pub fn new(columns: &[(&'static str, bool)]) -> Table {
        Table {
            headers: columns.iter().map(|c| c.0).collect(),
            numeric: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (cells past the header width are dropped, missing ones are empty).
    pub fn push(&mut self, mut row: Vec<String>) {
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    /// Rows so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table with columns padded to their widest cell, two spaces apart.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
            let mut first = true;
            let mut text = String::new();
            for (i, cell) in cells.enumerate() {
                if !first {
                    text.push_str("  ");
                }
                first = false;
                let pad = widths[i].saturating_sub(cell.chars().count());
                if self.numeric[i] {
                    text.push_str(&" ".repeat(pad));
                    text.push_str(cell);
                } else {
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&mut out, &mut self.headers.iter().copied());
        for row in &self.rows {
            line(&mut out, &mut row.iter().map(String::as_str));
        }
        out
    }

    /// The table as CSV (RFC 4180 quoting; a cell that a spreadsheet would run as a formula
    /// gets a leading `'`).
    pub fn csv(&self, headers: &[&str]) -> String {
        let mut out = String::new();
        let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
            let cells: Vec<String> = cells.map(csv_field).collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        };
        line(&mut out, &mut headers.iter().copied());
        for row in &self.rows {
            line(&mut out, &mut row.iter().map(String::as_str));
        }
        out
    }
}

fn csv_field(cell: &str) -> String {
    let safe = if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) && cell.parse::<f64>().is_err()
    {
        format!("'{cell}")
    } else {
        cell.to_string()
    };
    if safe.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", safe.replace('"', "\"\""))
    } else {
        safe
    }
}

/// A unix time in milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn utc(ms: u64) -> String {
    let s = ms / 1000;
    let (y, m, d) = sluice_core::limits::civil_date(s);
    let t = s % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_csv_quotes() {
        let mut t = Table::new(&[("NAME", false), ("COST", true)]);
        t.push(vec!["a".into(), "1.5".into()]);
        t.push(vec!["longer, name".into(), "10.25".into()]);
        t.push(vec!["=cmd()".into(), "-1".into()]);
        assert_eq!(
            t.render(),
            "NAME           COST\na               1.5\nlonger, name  10.25\n=cmd()           -1\n"
        );
        assert_eq!(
            t.csv(&["name", "cost"]),
            "name,cost\na,1.5\n\"longer, name\",10.25\n'=cmd(),-1\n"
        );
        assert_eq!(utc(1_710_504_000_123), "2024-03-15 12:00:00");
    }
}
