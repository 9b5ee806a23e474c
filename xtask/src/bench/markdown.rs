//! Writing results into BENCHMARKS.md: a section between `<!-- NAME:begin -->` and
//! `<!-- NAME:end -->` is replaced and the rest of the file kept; tables; and the number
//! formats the sections use.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

/// `x` rounded to `digits` decimals and printed in its shortest form (`1`, `0.5`, `35.9`);
/// `n/a` for none.
pub fn num(x: Option<f64>, digits: i32) -> String {
    match x {
        Some(x) if x.is_finite() => {
            let m = 10f64.powi(digits);
            let r = (x * m).round() / m;
            // -0 prints as 0.
            format!("{}", if r == 0.0 { 0.0 } else { r })
        }
        _ => "n/a".to_owned(),
    }
}

/// A byte count in binary units: `2.49 GiB`, `1.2 MiB`, `412 KiB`, `512 B`; `n/a` for none.
pub fn bytes(b: Option<f64>) -> String {
    let Some(b) = b else { return "n/a".to_owned() };
    let sign = if b < 0.0 { "-" } else { "" };
    let v = b.abs();
    if v >= 1073741824.0 {
        format!("{sign}{} GiB", num(Some(v / 1073741824.0), 2))
    } else if v >= 1048576.0 {
        format!("{sign}{} MiB", num(Some(v / 1048576.0), 1))
    } else if v >= 1024.0 {
        format!("{sign}{} KiB", num(Some(v / 1024.0), 0))
    } else {
        format!("{sign}{} B", num(Some(v), 3))
    }
}

/// How a column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A markdown table.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(columns: impl IntoIterator<Item = (S, Align)>) -> Table {
        Table { columns: columns.into_iter().map(|(h, a)| (h.into(), a)).collect(), rows: Vec::new() }
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// The table, each line ending in a newline.
    pub fn render(&self) -> String {
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut s = String::from("|");
            for c in cells {
                if c.is_empty() {
                    s.push_str(" |");
                } else {
                    let _ = write!(s, " {c} |");
                }
            }
            s.push('\n');
            s
        };
        let mut out = line(&mut self.columns.iter().map(|(h, _)| h.as_str()));
        out.push('|');
        for (_, align) in &self.columns {
            out.push_str(if *align == Align::Right { "---:|" } else { "---|" });
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(&mut row.iter().map(String::as_str)));
        }
        out
    }
}

/// The begin and end markers of a section.
pub fn markers(name: &str) -> (String, String) {
    (format!("<!-- {name}:begin -->"), format!("<!-- {name}:end -->"))
}

/// Replaces the section `name` of `file` (markers included) with `section`, which must
/// start and end with the markers; other content is kept. A file without the markers gets
/// the section appended; a missing file is created with a title.
pub fn replace_section(file: &Path, name: &str, section: &str) -> Result<()> {
    let (begin, end) = markers(name);
    let old = match std::fs::read_to_string(file) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let new = splice(old.as_deref(), &begin, &end, section);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    sys::crashsafe::replace_file(file, new.as_bytes()).with_context(|| format!("writing {}", file.display()))
}

fn splice(old: Option<&str>, begin: &str, end: &str, section: &str) -> String {
    let section = section.trim_end_matches('\n');
    let Some(old) = old else { return format!("# Benchmarks\n\n{section}\n") };
    let lines: Vec<&str> = old.lines().collect();
    let b = lines.iter().position(|l| *l == begin);
    let e = b.and_then(|b| lines[b..].iter().position(|l| *l == end).map(|i| b + i));
    match (b, e) {
        (Some(b), Some(e)) => {
            let mut out: Vec<&str> = lines[..b].to_vec();
            out.push(section);
            out.extend(&lines[e + 1..]);
            out.join("\n") + "\n"
        }
        _ if old.trim().is_empty() => format!("{section}\n"),
        _ => format!("{}\n\n{section}\n", old.trim_end_matches('\n')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_like_the_sections_always_did() {
        assert_eq!(num(Some(0.7831), 3), "0.783");
        assert_eq!(num(Some(1.0), 2), "1");
        assert_eq!(num(Some(35.94), 1), "35.9");
        assert_eq!(num(Some(552347.51), 1), "552347.5");
        assert_eq!(num(Some(-0.0001), 2), "0");
        assert_eq!(num(None, 2), "n/a");
        assert_eq!(bytes(Some(421888.0)), "412 KiB");
        assert_eq!(bytes(Some(1258291.0)), "1.2 MiB");
        assert_eq!(bytes(Some(2674315264.0)), "2.49 GiB");
        assert_eq!(bytes(Some(-921600.0)), "-900 KiB");
        assert_eq!(bytes(Some(512.0)), "512 B");
    }

    #[test]
    fn tables() {
        let mut t = Table::new([("", Align::Left), ("", Align::Left)]);
        t.row(["CPUs", "2"]);
        assert_eq!(t.render(), "| | |\n|---|---|\n| CPUs | 2 |\n");
        let mut t = Table::new([("pair", Align::Right), ("mode", Align::Left)]);
        t.row(["1".to_owned(), "read-write".to_owned()]);
        assert_eq!(t.render(), "| pair | mode |\n|---:|---|\n| 1 | read-write |\n");
    }

    #[test]
    fn a_section_is_replaced_and_the_rest_kept() {
        let (b, e) = markers("x");
        let old = format!("# T\n\nintro\n\n{b}\nold\n{e}\n\nafter\n");
        let new = splice(Some(&old), &b, &e, &format!("{b}\nnew\n{e}\n"));
        assert_eq!(new, format!("# T\n\nintro\n\n{b}\nnew\n{e}\n\nafter\n"));
        let appended = splice(Some("# T\n"), &b, &e, &format!("{b}\nnew\n{e}\n"));
        assert_eq!(appended, format!("# T\n\n{b}\nnew\n{e}\n"));
        assert_eq!(splice(None, &b, &e, &format!("{b}\n{e}\n")), format!("# Benchmarks\n\n{b}\n{e}\n"));
    }
}
