//! The user's own labelled texts from a CSV, TSV or JSONL file.
//!
//! - **CSV** (`.csv`): RFC 4180; the first line names the columns; a field holding a comma, a
//!   double quote or a line break is quoted (`"a, ""b""\nc"`). Blank lines are skipped.
//! - **TSV** (`.tsv`): the first line names the columns; one row per line, fields split at tabs,
//!   **no quoting** (a `"` is kept as text), so a field cannot hold a tab or a line break.
//! - **JSONL** (`.jsonl`, `.ndjson`): one JSON object per line (blank lines skipped); the text and
//!   pair values must be strings, a label a string or an integer (`1` and `"1"` are one class).
//!
//! [`read_text_table`] returns the raw rows ([`TextRows`]): texts, optional pair texts, label
//! strings and each row's line number. Classes come from the training file ([`TextRows::classes`]:
//! sorted unique labels, numeric order when every label is an integer, 2 to 256 of them);
//! [`TextSet::from_rows`] turns rows into a [`TextSet`] against a class list, so a validation or
//! test file is read against the training file's classes. Every error names the file, the line
//! where there is one (`<file>:<line>: ...`), and the fix.
//!
//! Rows are streamed from the file (it is never held whole in memory) and each label string is
//! stored once, with a `u32` per row pointing at it.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::text::TextSet;

/// The largest number of classes (labels are `u8`).
pub const MAX_CLASSES: usize = 256;

/// How a table file is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableFormat {
    /// Comma-separated, RFC 4180 quoting, header line.
    Csv,
    /// Tab-separated, no quoting, header line.
    Tsv,
    /// One JSON object per line.
    Jsonl,
}

impl TableFormat {
    /// The format named by a file's extension (`.csv`, `.tsv`, `.jsonl` / `.ndjson`, any case).
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Ok(TableFormat::Csv),
            Some("tsv") => Ok(TableFormat::Tsv),
            Some("jsonl" | "ndjson") => Ok(TableFormat::Jsonl),
            _ => Err(Error::format(
                path.display(),
                "unknown table format: the name must end in .csv, .tsv, .jsonl or .ndjson (or name the format)",
            )),
        }
    }
}

/// Which columns (JSONL: keys) hold the text, the optional second text and the label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextColumns {
    /// The text column (default `text`).
    pub text: String,
    /// The second text of a pair task (e.g. the hypothesis of NLI), if any.
    pub pair: Option<String>,
    /// The label column (default `label`).
    pub label: String,
}

impl Default for TextColumns {
    fn default() -> Self {
        TextColumns { text: "text".into(), pair: None, label: "label".into() }
    }
}

/// The raw rows of a table file, before labels are turned into class indices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextRows {
    /// The file the rows came from (for messages).
    pub file: String,
    /// The label column's name (for messages).
    pub label_column: String,
    /// One text per row.
    pub texts: Vec<String>,
    /// One second text per row, when a pair column was asked for.
    pub pairs: Option<Vec<String>>,
    /// Per row, an index into [`label_names`](Self::label_names).
    pub label_ids: Vec<u32>,
    /// The distinct label strings, in order of first appearance.
    pub label_names: Vec<String>,
    /// Per row, the line it starts on (1-based; the header is line 1 in CSV and TSV).
    pub lines: Vec<u64>,
}

impl TextRows {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// The label string of row `i`.
    pub fn label(&self, i: usize) -> Option<&str> {
        self.label_ids.get(i).and_then(|&l| self.label_names.get(l as usize)).map(String::as_str)
    }

    /// The class list a training file defines: [`class_names`] of its labels, checked to be
    /// between 2 and [`MAX_CLASSES`].
    pub fn classes(&self) -> Result<Vec<String>> {
        let classes = class_names(&self.label_names);
        let flag = "--label-column";
        match classes.len() {
            0 => Err(Error::format(&self.file, "no rows")),
            1 => Err(Error::format(
                &self.file,
                format!(
                    "every row has the label `{}` in column `{}`; classification needs at least 2 classes \
                     (is {flag} the right column?)",
                    classes[0], self.label_column
                ),
            )),
            n if n > MAX_CLASSES => Err(Error::format(
                &self.file,
                format!(
                    "{n} distinct labels in column `{}`; at most {MAX_CLASSES} classes are supported \
                     (is {flag} the right column?)",
                    self.label_column
                ),
            )),
            _ => Ok(classes),
        }
    }
}

/// Sorted unique labels; numeric order (ties by text) when every label parses as an integer.
pub fn class_names<S: AsRef<str>>(labels: &[S]) -> Vec<String> {
    let mut names: Vec<&str> = labels.iter().map(AsRef::as_ref).collect();
    names.sort_unstable();
    names.dedup();
    let numbers: Option<Vec<i128>> = names.iter().map(|s| s.trim().parse::<i128>().ok()).collect();
    if let Some(numbers) = numbers {
        let mut pairs: Vec<(i128, &str)> = numbers.into_iter().zip(names).collect();
        pairs.sort_unstable();
        return pairs.into_iter().map(|(_, s)| s.to_string()).collect();
    }
    names.into_iter().map(str::to_string).collect()
}

impl TextSet {
    /// Turns raw rows into a labelled set against `classes` (label `i` = `classes[i]`). A row
    /// whose label is not among `classes` is an error naming its file and line.
    pub fn from_rows(rows: TextRows, classes: &[String]) -> Result<TextSet> {
        if classes.len() > MAX_CLASSES {
            return Err(Error::invalid("classes", classes.len(), format!("at most {MAX_CLASSES}")));
        }
        let index: HashMap<&str, u8> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i as u8)).collect();
        let mut map = Vec::with_capacity(rows.label_names.len());
        for (id, name) in rows.label_names.iter().enumerate() {
            match index.get(name.as_str()) {
                Some(&c) => map.push(c),
                None => {
                    let row = rows.label_ids.iter().position(|&l| l as usize == id).unwrap_or(0);
                    let line = rows.lines.get(row).copied().unwrap_or(0);
                    return Err(Error::format(
                        format!("{}:{line}", rows.file),
                        format!(
                            "label `{name}` never occurs in the training file; classes are [{}]",
                            classes.join(", ")
                        ),
                    ));
                }
            }
        }
        let labels = rows
            .label_ids
            .iter()
            .map(|&l| map.get(l as usize).copied().ok_or_else(|| Error::format(&rows.file, "label index out of range")))
            .collect::<Result<Vec<u8>>>()?;
        Ok(TextSet { texts: rows.texts, pairs: rows.pairs, labels, classes: classes.to_vec() })
    }
}

/// Reads the rows of a table file; `format` `None` picks it by the file's extension.
pub fn read_text_table(path: &Path, columns: &TextColumns, format: Option<TableFormat>) -> Result<TextRows> {
    let format = match format {
        Some(f) => f,
        None => TableFormat::from_path(path)?,
    };
    let file = std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    parse_text_table(file, &path.display().to_string(), format, columns)
}

/// Reads a training file: its rows, with the classes its own labels define.
pub fn load_text_table(path: &Path, columns: &TextColumns, format: Option<TableFormat>) -> Result<TextSet> {
    let rows = read_text_table(path, columns, format)?;
    let classes = rows.classes()?;
    TextSet::from_rows(rows, &classes)
}

/// Reads a validation or test file against the training file's `classes`.
pub fn load_text_table_with_classes(
    path: &Path,
    columns: &TextColumns,
    format: Option<TableFormat>,
    classes: &[String],
) -> Result<TextSet> {
    TextSet::from_rows(read_text_table(path, columns, format)?, classes)
}

/// Parses table data from `reader`; `name` stands for the file in messages.
pub fn parse_text_table(reader: impl Read, name: &str, format: TableFormat, columns: &TextColumns) -> Result<TextRows> {
    let mut wanted = vec![
        Column { name: &columns.text, fix: "pick one with --text-column", kind: Kind::Text },
        Column { name: &columns.label, fix: "pick one with --label-column", kind: Kind::Label },
    ];
    if let Some(pair) = &columns.pair {
        wanted.push(Column { name: pair, fix: "pick one with --pair-column", kind: Kind::Text });
    }
    let mut rows = TextRows {
        file: name.to_string(),
        label_column: columns.label.clone(),
        pairs: columns.pair.as_ref().map(|_| Vec::new()),
        ..TextRows::default()
    };
    let mut seen: HashMap<String, u32> = HashMap::new();
    for_each_row(reader, name, format, &wanted, |line, fields| {
        let at = || format!("{name}:{line}");
        for (c, value) in wanted.iter().zip(fields) {
            if value.trim().is_empty() {
                let what = if c.kind == Kind::Label { "label" } else { "text" };
                return Err(Error::format(
                    at(),
                    format!("empty {what} in column `{}`; remove the row or fill it in", c.name),
                ));
            }
        }
        let (text, label) = (fields[0], fields[1].trim());
        let id = match seen.get(label) {
            Some(&id) => id,
            None => {
                let id = rows.label_names.len() as u32;
                seen.insert(label.to_string(), id);
                rows.label_names.push(label.to_string());
                id
            }
        };
        rows.texts.push(text.to_string());
        if let (Some(pairs), Some(p)) = (rows.pairs.as_mut(), fields.get(2)) {
            pairs.push(p.to_string());
        }
        rows.label_ids.push(id);
        rows.lines.push(line);
        Ok(())
    })?;
    if rows.texts.is_empty() {
        return Err(Error::format(name, "no rows: the file has no data after its header"));
    }
    Ok(rows)
}

/// How a JSONL value of a column must be typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A JSON string.
    Text,
    /// A JSON string or integer.
    Label,
}

/// A column asked for: its name, how to fix its absence, and its JSON type.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Column<'a> {
    pub name: &'a str,
    pub fix: &'static str,
    pub kind: Kind,
}

/// Calls `row(line, fields)` for each data row, `fields` in the order of `wanted`.
pub(crate) fn for_each_row(
    reader: impl Read,
    name: &str,
    format: TableFormat,
    wanted: &[Column],
    row: impl FnMut(u64, &[&str]) -> Result<()>,
) -> Result<()> {
    match format {
        TableFormat::Csv => delimited(reader, name, b',', true, wanted, row),
        TableFormat::Tsv => delimited(reader, name, b'\t', false, wanted, row),
        TableFormat::Jsonl => jsonl(reader, name, wanted, row),
    }
}

fn not_utf8(name: &str, line: u64) -> Error {
    Error::format(format!("{name}:{line}"), "not valid UTF-8 text; save the file as UTF-8")
}

fn delimited(
    reader: impl Read,
    name: &str,
    delimiter: u8,
    quoting: bool,
    wanted: &[Column],
    mut row: impl FnMut(u64, &[&str]) -> Result<()>,
) -> Result<()> {
    let tail = Rc::new(RefCell::new(Window::default()));
    let reader = Tail { inner: reader, seen: Rc::clone(&tail) };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .delimiter(delimiter)
        .quoting(quoting)
        .buffer_capacity(1 << 16)
        .from_reader(reader);
    let csv_err = |e: csv::Error| -> Error {
        let line = e.position().map_or(0, |p| p.line());
        match e.kind() {
            csv::ErrorKind::Io(io) => Error::format(name, format!("reading failed: {io}")),
            csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
                let hint = if quoting {
                    "a field holding a comma must be in double quotes"
                } else {
                    "a TSV field cannot hold a tab or a line break"
                };
                Error::format(
                    format!("{name}:{line}"),
                    format!("{len} fields where the header has {expected_len}; {hint}"),
                )
            }
            _ => Error::format(format!("{name}:{line}"), format!("bad {}: {e}", if quoting { "CSV" } else { "TSV" })),
        }
    };
    let header = reader.byte_headers().map_err(csv_err)?.clone();
    if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
        return Err(Error::format(
            name,
            "empty file: the first line must name the columns (e.g. text,label)".to_string(),
        ));
    }
    let header_line = header.position().map_or(1, |p| p.line());
    let names = header
        .iter()
        .map(|h| std::str::from_utf8(h).map(|s| s.trim_start_matches('\u{feff}').trim().to_string()))
        .collect::<std::result::Result<Vec<String>, _>>()
        .map_err(|_| not_utf8(name, header_line))?;
    let index = wanted
        .iter()
        .map(|c| {
            names.iter().position(|h| h == c.name).ok_or_else(|| {
                Error::format(name, format!("no column `{}`; columns are [{}]; {}", c.name, names.join(", "), c.fix))
            })
        })
        .collect::<Result<Vec<usize>>>()?;
    let mut record = csv::ByteRecord::new();
    while reader.read_byte_record(&mut record).map_err(csv_err)? {
        // The reader's own record position counts the blank lines before a record (which it
        // skips) as the record's start, so count back from where the record ended instead: its
        // line breaks, and the terminator when that was a `\n` (not for `\r\n`, whose `\n` is
        // consumed with the next record, nor at the end of the input).
        let end = reader.position();
        let breaks = record.as_slice().iter().filter(|&&b| b == b'\n').count() as u64;
        let line = match end.byte().checked_sub(1).and_then(|o| tail.borrow().byte_at(o)) {
            Some(last) => end.line().saturating_sub(breaks + u64::from(last == b'\n')).max(1),
            None => record.position().map_or(0, |p| p.line()),
        };
        let mut fields: Vec<&str> = Vec::with_capacity(index.len());
        for &i in &index {
            let bytes = record.get(i).unwrap_or_default();
            fields.push(std::str::from_utf8(bytes).map_err(|_| not_utf8(name, line))?);
        }
        row(line, &fields)?;
    }
    Ok(())
}

/// How many of the last bytes read [`Tail`] keeps: more than the CSV reader's read-ahead.
const WINDOW: usize = 1 << 18;

/// The last bytes read, with the stream offset of the first one.
#[derive(Default)]
struct Window {
    start: u64,
    bytes: VecDeque<u8>,
}

impl Window {
    fn byte_at(&self, offset: u64) -> Option<u8> {
        let i = usize::try_from(offset.checked_sub(self.start)?).ok()?;
        self.bytes.get(i).copied()
    }
}

/// A reader that remembers the last [`WINDOW`] bytes read through it.
struct Tail<R> {
    inner: R,
    seen: Rc<RefCell<Window>>,
}

impl<R: Read> Read for Tail<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(out)?;
        let mut w = self.seen.borrow_mut();
        w.bytes.extend(&out[..n]);
        let excess = w.bytes.len().saturating_sub(WINDOW);
        w.bytes.drain(..excess);
        w.start += excess as u64;
        Ok(n)
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn jsonl(
    reader: impl Read,
    name: &str,
    wanted: &[Column],
    mut row: impl FnMut(u64, &[&str]) -> Result<()>,
) -> Result<()> {
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| Error::format(name, format!("reading failed: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        line += 1;
        let at = || format!("{name}:{line}");
        let text = std::str::from_utf8(&buf).map_err(|_| not_utf8(name, line))?;
        let text = text.trim_start_matches('\u{feff}').trim();
        if text.is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            Error::format(
                at(),
                format!(
                    "bad JSON ({e}); each line must be one JSON object, e.g. {{\"text\": \"...\", \"label\": \"pos\"}}"
                ),
            )
        })?;
        let serde_json::Value::Object(object) = value else {
            return Err(Error::format(
                at(),
                format!("{} where a JSON object was expected (one object per line)", json_type(&value)),
            ));
        };
        let mut values: Vec<Cow<str>> = Vec::with_capacity(wanted.len());
        for c in wanted {
            let v = object.get(c.name).ok_or_else(|| {
                let keys: Vec<&str> = object.keys().map(String::as_str).collect();
                Error::format(at(), format!("no key `{}`; this line has keys [{}]; {}", c.name, keys.join(", "), c.fix))
            })?;
            let s = match (v, c.kind) {
                (serde_json::Value::String(s), _) => Cow::Borrowed(s.as_str()),
                (serde_json::Value::Number(n), Kind::Label) if n.is_i64() || n.is_u64() => Cow::Owned(n.to_string()),
                (v, Kind::Label) => {
                    return Err(Error::format(
                        at(),
                        format!("`{}` is {}; a label must be a string or an integer", c.name, json_type(v)),
                    ));
                }
                (v, Kind::Text) => {
                    return Err(Error::format(
                        at(),
                        format!("`{}` is {}; a text must be a string", c.name, json_type(v)),
                    ));
                }
            };
            values.push(s);
        }
        let fields: Vec<&str> = values.iter().map(|v| v.as_ref()).collect();
        row(line, &fields)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_order_is_numeric_for_integers() {
        assert_eq!(class_names(&["10", "2", "-1", "2"]), vec!["-1", "2", "10"]);
        assert_eq!(class_names(&["pos", "neg", "10"]), vec!["10", "neg", "pos"]);
    }

    #[test]
    fn format_from_extension() {
        assert_eq!(TableFormat::from_path(Path::new("a/B.CSV")).unwrap(), TableFormat::Csv);
        assert_eq!(TableFormat::from_path(Path::new("x.ndjson")).unwrap(), TableFormat::Jsonl);
        assert!(TableFormat::from_path(Path::new("x.txt")).is_err());
    }
}
