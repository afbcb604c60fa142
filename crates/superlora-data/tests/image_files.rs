//! Images from the user's files: decoding every PNG/JPEG layout, a class folder, a CSV of paths,
//! the errors, the byte-bounded cache, and the RGB preprocessing against the grey path.

use std::path::{Path, PathBuf};

use candle_core::Device;
use superlora_data::decode::{decode_rgb, load_rgb};
use superlora_data::{
    IMAGENET_MEAN, IMAGENET_STD, ImageFiles, ImageSet, ImageSource, RgbImage, to_tensor, to_tensor_rgb,
};

fn png_bytes(
    w: u32,
    h: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
    palette: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        if let Some(p) = palette {
            enc.set_palette(p.to_vec());
        }
        enc.write_header().unwrap().write_image_data(data).unwrap();
    }
    out
}

fn grey_png(w: u32, h: u32, data: &[u8]) -> Vec<u8> {
    png_bytes(w, h, png::ColorType::Grayscale, png::BitDepth::Eight, data, None)
}

fn rgb_png(w: u32, h: u32, data: &[u8]) -> Vec<u8> {
    png_bytes(w, h, png::ColorType::Rgb, png::BitDepth::Eight, data, None)
}

/// Appends Huffman-coded bits, stuffing a 0 after every 0xFF byte.
struct Bits {
    out: Vec<u8>,
    acc: u32,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u32, len: u32) {
        for i in (0..len).rev() {
            self.acc = (self.acc << 1) | ((value >> i) & 1);
            self.n += 1;
            if self.n == 8 {
                self.out.push(self.acc as u8);
                if self.acc == 0xFF {
                    self.out.push(0);
                }
                (self.acc, self.n) = (0, 0);
            }
        }
    }
}

/// A baseline JPEG of one 8x8 block per component, each of uniform value `components[c]`
/// (Y or Y, Cb, Cr, or four CMYK values), written by hand: quantisation all 1, DC only
/// (`F00 = 8 * (v - 128)`), DC Huffman codes of 4 bits for categories 0..=11, the AC table a
/// single 1-bit code for end-of-block.
fn tiny_jpeg(components: &[u8]) -> Vec<u8> {
    let nc = components.len() as u8;
    let mut j = vec![0xFF, 0xD8];
    j.extend([0xFF, 0xDB, 0, 67, 0]);
    j.extend([1u8; 64]);
    let sof_len = 8 + 3 * u16::from(nc);
    j.extend([0xFF, 0xC0, (sof_len >> 8) as u8, sof_len as u8, 8, 0, 8, 0, 8, nc]);
    for c in 0..nc {
        j.extend([c + 1, 0x11, 0]);
    }
    let mut dc_counts = [0u8; 16];
    dc_counts[3] = 12;
    j.extend([0xFF, 0xC4, 0, 2 + 1 + 16 + 12, 0x00]);
    j.extend(dc_counts);
    j.extend(0u8..12);
    let mut ac_counts = [0u8; 16];
    ac_counts[0] = 1;
    j.extend([0xFF, 0xC4, 0, 2 + 1 + 16 + 1, 0x10]);
    j.extend(ac_counts);
    j.push(0x00);
    let sos_len = 6 + 2 * u16::from(nc);
    j.extend([0xFF, 0xDA, (sos_len >> 8) as u8, sos_len as u8, nc]);
    for c in 0..nc {
        j.extend([c + 1, 0x00]);
    }
    j.extend([0, 63, 0]);
    let mut bits = Bits { out: Vec::new(), acc: 0, n: 0 };
    for &v in components {
        let d = 8 * (i32::from(v) - 128);
        let cat = 32 - d.unsigned_abs().leading_zeros();
        bits.put(cat, 4);
        if cat > 0 {
            let raw = if d > 0 { d } else { d + (1 << cat) - 1 };
            bits.put(raw as u32, cat);
        }
        bits.put(0, 1); // end of block
    }
    if bits.n > 0 {
        let pad = 8 - bits.n;
        bits.put((1 << pad) - 1, pad);
    }
    j.extend(bits.out);
    j.extend([0xFF, 0xD9]);
    j
}

fn write(dir: &Path, rel: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn png_layouts_decode_to_rgb() {
    use png::{BitDepth::*, ColorType::*};
    let rgb = |b: &[u8]| decode_rgb(b, "t.png").unwrap();
    assert_eq!(rgb(&grey_png(2, 1, &[7, 200])).pixels, vec![7, 7, 7, 200, 200, 200]);
    let ga = png_bytes(2, 1, GrayscaleAlpha, Eight, &[9, 0, 250, 255], None);
    assert_eq!(rgb(&ga).pixels, vec![9, 9, 9, 250, 250, 250]);
    assert_eq!(rgb(&rgb_png(1, 2, &[1, 2, 3, 4, 5, 6])), RgbImage { w: 1, h: 2, pixels: vec![1, 2, 3, 4, 5, 6] });
    let rgba = png_bytes(2, 1, Rgba, Eight, &[1, 2, 3, 0, 4, 5, 6, 128], None);
    assert_eq!(rgb(&rgba).pixels, vec![1, 2, 3, 4, 5, 6]);
    let pal = png_bytes(3, 1, Indexed, Eight, &[1, 0, 1], Some(&[10, 20, 30, 40, 50, 60]));
    assert_eq!(rgb(&pal).pixels, vec![40, 50, 60, 10, 20, 30, 40, 50, 60]);
    let deep = png_bytes(2, 1, Rgb, Sixteen, &[0x12, 0x34, 0, 1, 0xFF, 0xFF, 1, 0, 2, 0, 3, 0], None);
    assert_eq!(rgb(&deep).pixels, vec![0x12, 0, 0xFF, 1, 2, 3]);
    let grey16 = png_bytes(1, 1, Grayscale, Sixteen, &[0xAB, 0xCD], None);
    assert_eq!(rgb(&grey16).pixels, vec![0xAB; 3]);
    let low = png_bytes(4, 1, Grayscale, Two, &[0b00_01_10_11], None);
    assert_eq!(rgb(&low).pixels.len(), 12);
}

#[test]
fn jpegs_decode_and_cmyk_is_refused() {
    let grey = decode_rgb(&tiny_jpeg(&[77]), "g.jpg").unwrap();
    assert_eq!((grey.w, grey.h), (8, 8));
    assert!(grey.pixels.iter().all(|&v| v == 77), "{:?}", &grey.pixels[..6]);
    // Y = 150, Cb = Cr = 128 is grey 150 in RGB.
    let neutral = decode_rgb(&tiny_jpeg(&[150, 128, 128]), "n.jpg").unwrap();
    assert!(neutral.pixels.iter().all(|&v| v == 150), "{:?}", &neutral.pixels[..6]);
    // Y = 76, Cb = 85, Cr = 255 is about pure red (254, 0, 0) by JFIF's conversion.
    let red = decode_rgb(&tiny_jpeg(&[76, 85, 255]), "r.jpg").unwrap();
    let p = &red.pixels[..3];
    assert!(p[0] >= 250 && p[1] <= 4 && p[2] <= 4, "{p:?}");
    assert!(red.pixels.chunks(3).all(|q| q == p));
    let err = decode_rgb(&tiny_jpeg(&[10, 20, 30, 40]), "c.jpg").unwrap_err().to_string();
    assert!(err.starts_with("c.jpg: ") && err.contains("CMYK") && err.contains("convert"), "{err}");
    let whole = tiny_jpeg(&[76, 85, 255]);
    for cut in [3, 20, whole.len() / 2, whole.len() - 3] {
        let err = decode_rgb(&whole[..cut], "cut.jpg").unwrap_err().to_string();
        assert!(err.starts_with("cut.jpg: "), "{err}");
    }
}

#[test]
fn folder_of_classes_png_grey_rgba_and_jpeg() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "dog/b.png", &grey_png(3, 2, &[0, 50, 100, 150, 200, 250]));
    write(d, "dog/a.JPG", &tiny_jpeg(&[90]));
    write(d, "cat/x.png", &png_bytes(1, 1, png::ColorType::Rgba, png::BitDepth::Eight, &[10, 20, 30, 40], None));
    write(d, "cat/y.jpeg", &tiny_jpeg(&[150, 128, 128]));
    write(d, "cat/.DS_Store", b"junk");
    write(d, ".hidden/z.png", &grey_png(1, 1, &[0]));
    write(d, "README.txt", b"ignored");
    let files = ImageFiles::from_folder(d).unwrap();
    assert_eq!(files.classes, vec!["cat", "dog"]);
    assert_eq!(files.labels, vec![0, 0, 1, 1]);
    let names: Vec<_> = files.paths.iter().map(|p| p.strip_prefix(d).unwrap().to_path_buf()).collect();
    let want: Vec<PathBuf> = ["cat/x.png", "cat/y.jpeg", "dog/a.JPG", "dog/b.png"].iter().map(PathBuf::from).collect();
    assert_eq!(names, want);
    assert_eq!(files.image(0).unwrap().pixels, vec![10, 20, 30]);

    let source: &dyn ImageSource = &files;
    assert_eq!((source.len(), source.classes().len()), (4, 2));
    let x = source.batch(&[3, 0, 1], 28, IMAGENET_MEAN, IMAGENET_STD, &Device::Cpu).unwrap();
    assert_eq!(x.dims(), &[3, 3, 28, 28]);
    let images: Vec<_> = [3, 0, 1].iter().map(|&i| files.image(i).unwrap()).collect();
    let refs: Vec<&RgbImage> = images.iter().map(|a| a.as_ref()).collect();
    let want = to_tensor_rgb(&refs, 28, IMAGENET_MEAN, IMAGENET_STD, &Device::Cpu).unwrap();
    assert_eq!(
        x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    // The uniform grey JPEG: every value is (150/255 - mean_c) / std_c.
    let v = x.get(2).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for c in 0..3 {
        let want = (150.0 / 255.0 - IMAGENET_MEAN[c]) * (1.0 / IMAGENET_STD[c]);
        assert!(v[c * 784..(c + 1) * 784].iter().all(|&p| (p - want).abs() < 1e-6), "channel {c}");
    }
    assert_eq!(source.labels_tensor(&[3, 0], &Device::Cpu).unwrap().to_vec1::<u32>().unwrap(), vec![1, 0]);
    assert!(source.batch(&[4], 28, IMAGENET_MEAN, IMAGENET_STD, &Device::Cpu).is_err());
    assert!(source.batch(&[0], 0, IMAGENET_MEAN, IMAGENET_STD, &Device::Cpu).is_err());
    assert!(
        source.batch(&[0], 27, IMAGENET_MEAN, IMAGENET_STD, &Device::Cpu).is_ok(),
        "any side; patches are the model's check"
    );
    assert!(source.batch(&[0], 28, IMAGENET_MEAN, [0.0; 3], &Device::Cpu).is_err());
}

#[test]
fn folder_errors_name_the_path_and_the_fix() {
    let err = |setup: &dyn Fn(&Path)| -> String {
        let dir = tempfile::tempdir().unwrap();
        setup(dir.path());
        ImageFiles::from_folder(dir.path()).unwrap_err().to_string()
    };
    let e = err(&|d| {
        write(d, "a/1.png", &grey_png(1, 1, &[0]));
        std::fs::create_dir(d.join("b")).unwrap();
    });
    assert!(e.contains("/b: empty class folder") && e.contains("at least one"), "{e}");
    let e = err(&|d| {
        write(d, "only/1.png", &grey_png(1, 1, &[0]));
    });
    assert!(e.contains("found 1 class sub-folder(s)") && e.contains("at least 2 classes"), "{e}");
    let e = err(&|d| {
        write(d, "a/1.png", &grey_png(1, 1, &[0]));
        write(d, "b/notes.txt", b"x");
    });
    assert!(e.contains("b/notes.txt: not a .png, .jpg or .jpeg file") && e.contains("leading dot"), "{e}");
    let e = err(&|d| {
        write(d, "a/1.png", &grey_png(1, 1, &[0]));
        write(d, "b/deeper/2.png", &grey_png(1, 1, &[0]));
    });
    assert!(e.contains("b/deeper: a folder inside a class folder"), "{e}");
    let missing = ImageFiles::from_folder(Path::new("/nonexistent/images")).unwrap_err().to_string();
    assert!(missing.contains("/nonexistent/images"), "{missing}");
}

#[test]
fn truncated_png_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pixels: Vec<u8> = (0..64 * 64 * 3).map(|i| (i * 31 % 251) as u8).collect();
    let whole = rgb_png(64, 64, &pixels);
    write(d, "a/ok.png", &whole);
    let bad = write(d, "b/cut.png", &whole[..whole.len() / 2]);
    let files = ImageFiles::from_folder(d).unwrap();
    assert!(files.batch(&[0], 14, IMAGENET_MEAN, IMAGENET_STD, &Device::Cpu).is_ok());
    let e = files.batch(&[0, 1], 14, IMAGENET_MEAN, IMAGENET_STD, &Device::Cpu).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: PNG", bad.display())), "{e}");
    for cut in [8, 20, 40, whole.len() - 20] {
        let e = decode_rgb(&whole[..cut], "cut.png").unwrap_err().to_string();
        assert!(e.starts_with("cut.png: "), "{e}");
    }
    assert!(load_rgb(&d.join("a/missing.png")).unwrap_err().to_string().contains("missing.png"));
}

#[test]
fn csv_of_paths_relative_to_the_csv() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "imgs/one.png", &grey_png(1, 1, &[1]));
    write(d, "imgs/two.jpg", &tiny_jpeg(&[2]));
    write(d, "three.png", &grey_png(1, 1, &[3]));
    let abs = write(d, "elsewhere/four.png", &grey_png(1, 1, &[4]));
    let csv = format!("path,label\nimgs/one.png,10\n\"imgs/two.jpg\",2\nthree.png,10\n{},2\n", abs.display());
    let list = write(d, "list.csv", csv.as_bytes());
    let files = ImageFiles::from_csv(&list).unwrap();
    assert_eq!(files.classes, vec!["2", "10"]);
    assert_eq!(files.labels, vec![1, 0, 1, 0]);
    assert_eq!(files.paths[0], d.join("imgs/one.png"));
    assert_eq!(files.image(2).unwrap().pixels, vec![3, 3, 3]);

    let valid = write(d, "valid.csv", b"path,label\nthree.png,10\nimgs/one.png,7\n");
    let e = ImageFiles::from_csv_with_classes(&valid, &files.classes).unwrap_err().to_string();
    assert_eq!(e, format!("{}:3: label `7` never occurs in the training file; classes are [2, 10]", valid.display()));
    let gone = write(d, "gone.csv", b"path,label\nthree.png,a\n\nimgs/nothere.png,b\n");
    let e = ImageFiles::from_csv(&gone).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}:4: no file ", gone.display())) && e.contains("nothere.png"), "{e}");
    let cols = write(d, "cols.csv", b"file,label\nthree.png,a\n");
    let e = ImageFiles::from_csv(&cols).unwrap_err().to_string();
    assert!(e.contains("no column `path`; columns are [file, label]"), "{e}");
    let one = write(d, "one.csv", b"path,label\nthree.png,a\nimgs/one.png,a\n");
    assert!(ImageFiles::from_csv(&one).unwrap_err().to_string().contains("at least 2 classes"));
}

#[test]
fn cache_stays_within_its_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for i in 0..10u8 {
        let class = if i % 2 == 0 { "even" } else { "odd" };
        write(d, &format!("{class}/{i}.png"), &rgb_png(16, 16, &[i; 16 * 16 * 3]));
    }
    let one = 16 * 16 * 3;
    let files = ImageFiles::from_folder(d).unwrap().with_cache_bytes(2 * one + 100);
    let all: Vec<usize> = (0..10).collect();
    for epoch in 0..3 {
        for batch in all.chunks(4) {
            files.batch(batch, 14, IMAGENET_MEAN, IMAGENET_STD, &Device::Cpu).unwrap();
            assert!(files.cached_bytes() <= 2 * one + 100);
        }
        // Ten distinct files cycled through a cache holding two: every image decoded each epoch.
        assert_eq!(files.decodes(), 10 * (epoch + 1));
    }
    assert_eq!(files.cached_bytes(), 2 * one);
    // The last two images are cached: asking again decodes nothing.
    files.batch(&[8, 9], 14, IMAGENET_MEAN, IMAGENET_STD, &Device::Cpu).unwrap();
    assert_eq!(files.decodes(), 30);

    let roomy = ImageFiles::from_folder(d).unwrap();
    for _ in 0..3 {
        roomy.batch(&all, 14, IMAGENET_MEAN, IMAGENET_STD, &Device::Cpu).unwrap();
    }
    assert_eq!((roomy.decodes(), roomy.cached_bytes()), (10, 10 * one));
    let off = ImageFiles::from_folder(d).unwrap().with_cache_bytes(0);
    off.batch(&[0, 0, 0], 14, IMAGENET_MEAN, IMAGENET_STD, &Device::Cpu).unwrap();
    assert_eq!((off.decodes(), off.cached_bytes()), (3, 0));
}

#[test]
fn grey_set_through_the_new_paths_is_bit_equal_to_to_tensor() {
    let (n, h, w) = (3, 28, 28);
    let pixels: Vec<u8> = (0..n * h * w).map(|i| ((i * 7919) % 256) as u8).collect();
    let set = ImageSet::new(pixels, vec![0, 1, 0], h, w, vec!["a".into(), "b".into()], "t").unwrap();
    let idx = [2, 0, 1];
    let bits = |t: candle_core::Tensor| -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
    };
    for size in [14, 28, 42, 56, 224] {
        let old = bits(to_tensor(&set, &idx, size, &Device::Cpu).unwrap());
        let source: &dyn ImageSource = &set;
        let via_source = bits(source.batch(&idx, size, IMAGENET_MEAN, IMAGENET_STD, &Device::Cpu).unwrap());
        assert_eq!(old, via_source, "size {size}");
        let rgb: Vec<RgbImage> =
            idx.iter().map(|&i| RgbImage::from_grey(set.image(i).unwrap(), h, w).unwrap()).collect();
        let refs: Vec<&RgbImage> = rgb.iter().collect();
        let via_rgb = bits(to_tensor_rgb(&refs, size, IMAGENET_MEAN, IMAGENET_STD, &Device::Cpu).unwrap());
        assert_eq!(old, via_rgb, "size {size}");
    }
}
