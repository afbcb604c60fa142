//! Labelled texts from the user's CSV, TSV and JSONL files: parsing, classes, and every error
//! naming the file, the line and the fix.

use std::path::{Path, PathBuf};

use superlora_data::{
    TableFormat, TextColumns, TextSet, class_names, load_text_table, load_text_table_with_classes, read_text_table,
};

fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn cols() -> TextColumns {
    TextColumns::default()
}

/// The error of reading `content` as `name`, which must mention the file (with `:line` when
/// given) and every one of `want`.
fn error_of(name: &str, content: &[u8], columns: &TextColumns, line: Option<u64>, want: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), name, content);
    let err = match load_text_table(&path, columns, None) {
        Err(e) => e.to_string(),
        Ok(set) => panic!("{name} {:?} loaded: {set:?}", String::from_utf8_lossy(content)),
    };
    let file = path.display().to_string();
    let at = match line {
        Some(l) => format!("{file}:{l}: "),
        None => format!("{file}: "),
    };
    assert!(err.starts_with(&at), "{err:?} does not start with {at:?}");
    for w in want {
        assert!(err.contains(w), "{err:?} lacks {w:?}");
    }
}

#[test]
fn csv_quoted_commas_doubled_quotes_and_newlines() {
    let dir = tempfile::tempdir().unwrap();
    let csv = "id,text,label\n\
               1,\"hello, world\",pos\n\
               2,\"she said \"\"hi\"\"\",neg\n\
               \n\
               3,\"two\nlines, and a comma\",pos\n\
               4,plain,neg\n";
    let path = write(dir.path(), "train.csv", csv.as_bytes());
    let rows = read_text_table(&path, &cols(), None).unwrap();
    assert_eq!(rows.texts, vec!["hello, world", "she said \"hi\"", "two\nlines, and a comma", "plain"]);
    assert_eq!(rows.lines, vec![2, 3, 5, 7]);
    assert_eq!(rows.label(0), Some("pos"));
    assert_eq!(rows.pairs, None);
    let set = load_text_table(&path, &cols(), None).unwrap();
    assert_eq!(set.classes, vec!["neg", "pos"]);
    assert_eq!(set.labels, vec![1, 0, 1, 0]);
    assert_eq!(set.texts_at(&[2]).unwrap(), vec!["two\nlines, and a comma"]);

    // CRLF, blank lines, a quoted line break and no final line break: lines still right.
    let crlf = write(dir.path(), "crlf.csv", b"text,label\r\na,1\r\n\r\n\"b\r\nc\",0\r\n\r\n\r\nd,1");
    let rows = read_text_table(&crlf, &cols(), None).unwrap();
    assert_eq!(rows.texts, vec!["a", "b\r\nc", "d"]);
    assert_eq!(rows.lines, vec![2, 4, 8]);
}

#[test]
fn csv_pairs_and_named_columns() {
    let dir = tempfile::tempdir().unwrap();
    let csv = "premise,hypothesis,gold\n\"A man, eating\",\"A person eats\",entailment\nA dog,A cat,contradiction\n";
    let path = write(dir.path(), "nli.csv", csv.as_bytes());
    let columns = TextColumns { text: "premise".into(), pair: Some("hypothesis".into()), label: "gold".into() };
    let set = load_text_table(&path, &columns, None).unwrap();
    assert_eq!(set.texts, vec!["A man, eating", "A dog"]);
    assert_eq!(set.pairs, Some(vec!["A person eats".to_string(), "A cat".to_string()]));
    assert_eq!(set.pairs_at(&[1, 0]).unwrap(), Some(vec!["A cat", "A person eats"]));
    assert_eq!(set.classes, vec!["contradiction", "entailment"]);
}

#[test]
fn tsv_keeps_quotes_and_orders_integer_labels_numerically() {
    let dir = tempfile::tempdir().unwrap();
    let tsv = "text\tlabel\n\"quoted\" start, comma\t10\nsecond\t2\nthird\t10\n";
    let path = write(dir.path(), "train.tsv", tsv.as_bytes());
    let set = load_text_table(&path, &cols(), None).unwrap();
    assert_eq!(set.texts[0], "\"quoted\" start, comma");
    assert_eq!(set.classes, vec!["2", "10"]);
    assert_eq!(set.labels, vec![1, 0, 1]);
    // The same bytes named .txt, with the format given explicitly.
    let txt = write(dir.path(), "train.txt", tsv.as_bytes());
    assert!(load_text_table(&txt, &cols(), None).unwrap_err().to_string().contains(".tsv"));
    assert_eq!(load_text_table(&txt, &cols(), Some(TableFormat::Tsv)).unwrap(), set);
}

#[test]
fn jsonl_with_integer_and_string_labels() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = "{\"text\": \"a, \\\"b\\\"\", \"label\": 1, \"extra\": [1]}\n\
                 \n\
                 {\"label\": \"2\", \"text\": \"line\\nbreak\"}\r\n\
                 {\"text\": \"c\", \"label\": 10}\n";
    let path = write(dir.path(), "train.jsonl", jsonl.as_bytes());
    let rows = read_text_table(&path, &cols(), None).unwrap();
    assert_eq!(rows.lines, vec![1, 3, 4]);
    let set = TextSet::from_rows(rows, &class_names(&["1", "2", "10"])).unwrap();
    assert_eq!(set.texts, vec!["a, \"b\"", "line\nbreak", "c"]);
    assert_eq!(set.classes, vec!["1", "2", "10"]);
    assert_eq!(set.labels, vec![0, 1, 2]);
    let nd = write(
        dir.path(),
        "pairs.ndjson",
        b"{\"q\": \"x\", \"a\": \"y\", \"label\": \"no\"}\n{\"q\": \"z\", \"a\": \"w\", \"label\": \"yes\"}",
    );
    let columns = TextColumns { text: "q".into(), pair: Some("a".into()), label: "label".into() };
    let set = load_text_table(&nd, &columns, None).unwrap();
    assert_eq!(set.pairs, Some(vec!["y".to_string(), "w".to_string()]));
    assert_eq!(set.labels, vec![0, 1]);
}

#[test]
fn validation_file_is_read_against_the_training_classes() {
    let dir = tempfile::tempdir().unwrap();
    let train = write(dir.path(), "train.csv", b"text,label\na,neg\nb,pos\n");
    let valid = write(dir.path(), "valid.csv", b"text,label\nc,pos\nd,pos\ne,neutral\n");
    let only_pos = write(dir.path(), "test.csv", b"text,label\nc,pos\n");
    let classes = load_text_table(&train, &cols(), None).unwrap().classes;
    // A held-out file may have a single class: only the training file defines them.
    let test = load_text_table_with_classes(&only_pos, &cols(), None, &classes).unwrap();
    assert_eq!((test.labels, test.classes), (vec![1], classes.clone()));
    let err = load_text_table_with_classes(&valid, &cols(), None, &classes).unwrap_err().to_string();
    let want =
        format!("{}:4: label `neutral` never occurs in the training file; classes are [neg, pos]", valid.display());
    assert_eq!(err, want);
}

#[test]
fn missing_columns_name_the_columns_and_the_flag() {
    let c = cols();
    error_of(
        "a.csv",
        b"txt,label\nx,1\n",
        &c,
        None,
        &["no column `text`", "columns are [txt, label]", "--text-column"],
    );
    error_of("a.tsv", b"text\ty\nx\t1\n", &c, None, &["no column `label`", "columns are [text, y]", "--label-column"]);
    let pair = TextColumns { pair: Some("hyp".into()), ..cols() };
    error_of("a.csv", b"text,label\nx,1\n", &pair, None, &["no column `hyp`", "--pair-column"]);
    error_of(
        "a.jsonl",
        b"{\"text\": \"x\", \"label\": 1}\n{\"txt\": \"y\", \"label\": 0}\n",
        &c,
        Some(2),
        &["no key `text`", "has keys [label, txt]", "--text-column"],
    );
}

#[test]
fn empty_files_and_class_counts_are_errors() {
    let c = cols();
    error_of("a.csv", b"", &c, None, &["empty file", "name the columns"]);
    error_of("a.tsv", b"", &c, None, &["empty file"]);
    error_of("a.csv", b"text,label\n", &c, None, &["no rows"]);
    error_of("a.jsonl", b"\n\n", &c, None, &["no rows"]);
    error_of("a.csv", b"text,label\nx,pos\ny,pos\n", &c, None, &["`pos`", "at least 2 classes", "--label-column"]);
    let many: String =
        std::iter::once("text,label\n".to_string()).chain((0..257).map(|i| format!("t{i},c{i}\n"))).collect();
    error_of("a.csv", many.as_bytes(), &c, None, &["257 distinct labels", "at most 256", "--label-column"]);
}

#[test]
fn bad_rows_are_errors_with_their_line() {
    let c = cols();
    error_of("a.csv", b"text,label\nok,1\n  ,0\n", &c, Some(3), &["empty text in column `text`"]);
    error_of("a.csv", b"text,label\nok,1\nfine,\n", &c, Some(3), &["empty label in column `label`"]);
    error_of("a.csv", b"text,label\nok,1\n\n\nfine,", &c, Some(5), &["empty label in column `label`"]);
    error_of(
        "a.csv",
        b"text,label\nok,1\nbad\xff\xfe,0\n",
        &c,
        Some(3),
        &["not valid UTF-8", "save the file as UTF-8"],
    );
    error_of(
        "a.csv",
        b"text,label\nok,1\na, b,0\n",
        &c,
        Some(3),
        &["3 fields where the header has 2", "double quotes"],
    );
    error_of("a.tsv", b"text\tlabel\nok\t1\na\tb\t0\n", &c, Some(3), &["3 fields where the header has 2"]);
    error_of(
        "a.jsonl",
        b"{\"text\": \"x\", \"label\": 1}\n{\"text\": \"y\", \"label\": 1\n",
        &c,
        Some(2),
        &["bad JSON", "one JSON object"],
    );
    error_of("a.jsonl", b"[\"x\", 1]\n", &c, Some(1), &["an array where a JSON object was expected"]);
    error_of(
        "a.jsonl",
        b"{\"text\": \"x\", \"label\": 1}\n{\"text\": 5, \"label\": 1}\n",
        &c,
        Some(2),
        &["`text` is a number", "a text must be a string"],
    );
    error_of(
        "a.jsonl",
        b"{\"text\": \"x\", \"label\": 1.5}\n",
        &c,
        Some(1),
        &["`label` is a number", "string or an integer"],
    );
    error_of("a.jsonl", b"{\"text\": \"x\", \"label\": true}\n", &c, Some(1), &["`label` is a boolean"]);
    error_of("a.jsonl", b"{\"text\": \"x\", \"label\": 1}\n\xff{}\n", &c, Some(2), &["not valid UTF-8"]);
    error_of("a.jsonl", b"{\"text\": \"\", \"label\": 1}\n", &c, Some(1), &["empty text"]);
}

#[test]
fn missing_file_names_it() {
    let err = read_text_table(Path::new("/nonexistent/train.csv"), &cols(), None).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/train.csv"), "{err}");
}
