//! Asset-backed tests of the MiniLM (bert-base-uncased vocabulary) tokenizer wrapper.

mod common;

use candle_core::{DType, Device};
use common::{need, timed};
use superlora_data::TextTokenizer;

fn rows(t: &candle_core::Tensor) -> Vec<Vec<u32>> {
    need("to_vec2", t.to_vec2::<u32>().map_err(Into::into))
}

#[test]
fn minilm_ids_truncation_and_padding() {
    let tok = timed("minilm tokenizer", TextTokenizer::minilm);
    assert_eq!(tok.pad_id(), 0);
    assert_eq!(tok.vocab_size(), 30_522);
    let want = vec![101, 1037, 2158, 2003, 5983, 2833, 1012, 102];
    assert_eq!(need("encode", tok.encode("A man is eating food.", 128)), want);

    let texts = ["A man is eating food.", "Hi", "A man is eating food. A man is eating food. And more, \"quoted\"."];
    let batch = need("encode_batch", tok.encode_batch(&texts, 12, &Device::Cpu));
    assert_eq!(batch.input_ids.dims(), &[3, 12]);
    assert_eq!(batch.input_ids.dtype(), DType::U32);
    assert_eq!(batch.attention_mask.dtype(), DType::U32);
    let ids = rows(&batch.input_ids);
    let mask = rows(&batch.attention_mask);
    assert_eq!(ids[0], [want.clone(), vec![0; 4]].concat());
    assert_eq!(mask[0], [vec![1; 8], vec![0; 4]].concat());
    assert_eq!(ids[1][0], 101);
    assert_eq!(ids[1][2], 102);
    assert_eq!(mask[1].iter().sum::<u32>(), 3);
    // Truncated: [CLS], the first 10 content tokens, [SEP].
    assert_eq!(ids[2][..7], want[..7]);
    assert_eq!(ids[2][11], 102);
    assert_eq!(mask[2], vec![1; 12]);

    // Short batches are padded to their longest text, not to max_len.
    let short = need("encode_batch", tok.encode_batch(&["Hi", "A man is eating food."], 128, &Device::Cpu));
    assert_eq!(short.input_ids.dims(), &[2, 8]);
    assert_eq!(need("encode", tok.encode("x y z", 2)), vec![101, 102]);
    assert!(tok.encode_batch(&["x"], 1, &Device::Cpu).is_err());
    assert!(tok.encode_batch::<&str>(&[], 8, &Device::Cpu).is_err());
}

#[test]
fn tokenizes_the_real_reviews() {
    let tok = need("minilm", TextTokenizer::minilm());
    let set = need("rotten-tomatoes", superlora_data::load_rotten_tomatoes());
    let texts: Vec<&str> = set.texts.iter().take(256).map(String::as_str).collect();
    let batch = timed("tokenize 256 reviews", || tok.encode_batch(&texts, 64, &Device::Cpu));
    let dims = batch.input_ids.dims().to_vec();
    assert_eq!(dims[0], 256);
    assert!(dims[1] <= 64);
    let ids = rows(&batch.input_ids);
    assert!(ids.iter().all(|r| r[0] == 101 && r.iter().all(|&t| t < 30_522)));
    // No [UNK] flood: the vocabulary covers the reviews.
    let unk = ids.iter().flatten().filter(|&&t| t == 100).count();
    assert!(unk < 20, "{unk} unknown tokens");
}

#[test]
fn minilm_pairs_have_segment_ids_and_are_cut_longest_first() {
    let tok = timed("minilm tokenizer", TextTokenizer::minilm);
    let a = ["A man is eating food.", "Hi"];
    let b = ["Someone eats.", "A man is eating food. A man is eating food."];
    let batch = need("encode_pair_batch", tok.encode_pair_batch(&a, &b, 12, &Device::Cpu));
    assert_eq!(batch.input_ids.dims(), &[2, 12]);
    let ids = rows(&batch.input_ids);
    let types = rows(&batch.token_type_ids);
    // [CLS] a man is eating food . [SEP] someone eats . [SEP] = 12 tokens, fits exactly.
    assert_eq!(ids[0][..8], [101, 1037, 2158, 2003, 5983, 2833, 1012, 102]);
    assert_eq!(ids[0][11], 102);
    assert_eq!(types[0], [vec![0; 8], vec![1; 4]].concat());
    // "Hi" (1 token) is kept whole, the long second text loses its end: 12 = 3 + 1 + 8.
    assert_eq!(ids[1][..3], [101, 7632, 102]);
    assert_eq!(ids[1][3..11], [1037, 2158, 2003, 5983, 2833, 1012, 1037, 2158]);
    assert_eq!(ids[1][11], 102);
    assert_eq!(types[1], [vec![0; 3], vec![1; 9]].concat());
    // Single texts get all-zero segment ids.
    let single = need("encode_batch", tok.encode_batch(&a, 12, &Device::Cpu));
    assert!(rows(&single.token_type_ids).iter().flatten().all(|&t| t == 0));
}
