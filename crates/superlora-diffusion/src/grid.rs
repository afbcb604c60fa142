//! PNG grids of grey images: `rows` x `cols` tiles of side x side u8 pixels, separated and framed
//! by `PAD` pixels of mid grey (128), so the file is (cols·(side + PAD) + PAD) wide and
//! (rows·(side + PAD) + PAD) high. Written to a hidden temporary beside the destination and
//! renamed into place (`superlora_train::output::Staged`).

use std::path::Path;

use crate::{Error, Result, io_err};

/// Pixels between and around tiles.
pub const PAD: usize = 2;

/// (width, height) of a grid.
pub fn grid_size(rows: usize, cols: usize, side: usize) -> (usize, usize) {
    (cols * (side + PAD) + PAD, rows * (side + PAD) + PAD)
}

/// The grid's pixels, row-major: tile (r, c) is image `r·cols + c` of `images` (each side² bytes).
pub fn compose(images: &[u8], rows: usize, cols: usize, side: usize) -> Result<Vec<u8>> {
    let p = side * side;
    if images.len() != rows * cols * p {
        return Err(Error::setting(
            "grid",
            format!("{} pixels", images.len()),
            format!("{rows}x{cols} tiles of {side}x{side} need {}", rows * cols * p),
        ));
    }
    let (w, h) = grid_size(rows, cols, side);
    let mut out = vec![128u8; w * h];
    for r in 0..rows {
        for c in 0..cols {
            let img = &images[(r * cols + c) * p..(r * cols + c + 1) * p];
            for y in 0..side {
                let at = (PAD + r * (side + PAD) + y) * w + PAD + c * (side + PAD);
                out[at..at + side].copy_from_slice(&img[y * side..(y + 1) * side]);
            }
        }
    }
    Ok(out)
}

/// The 8 bytes every PNG file starts with.
pub const PNG_SIGNATURE: [u8; 8] = [137, 80, 78, 71, 13, 10, 26, 10];

/// Whether `path` is a PNG file (reads its first 8 bytes).
pub fn is_png(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 8];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head == PNG_SIGNATURE
}

/// Writes the grid of `images` (see [`compose`]) as an 8-bit grey PNG at `path`.
pub fn write_png(path: &Path, images: &[u8], rows: usize, cols: usize, side: usize) -> Result<()> {
    let pixels = compose(images, rows, cols, side)?;
    let (w, h) = grid_size(rows, cols, side);
    let staged = superlora_train::output::Staged::new(path, false)?;
    let tmp = staged.path();
    {
        let file = std::fs::File::create(tmp).map_err(io_err(tmp))?;
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let png_err = |e: png::EncodingError| Error::File(format!("{}: {e}", tmp.display()));
        let mut writer = enc.write_header().map_err(png_err)?;
        writer.write_image_data(&pixels).map_err(png_err)?;
        writer.finish().map_err(png_err)?;
    }
    Ok(staged.commit()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_land_in_place() {
        // 2x3 tiles of 2x2, tile k filled with k.
        let images: Vec<u8> = (0..6u8).flat_map(|k| [k; 4]).collect();
        let g = compose(&images, 2, 3, 2).unwrap();
        let (w, h) = grid_size(2, 3, 2);
        assert_eq!((w, h), (14, 10));
        assert_eq!(g[0], 128);
        let at = |x: usize, y: usize| g[y * w + x];
        assert_eq!(at(2, 2), 0);
        assert_eq!(at(2 + 4 + 1, 2 + 1), 1);
        assert_eq!(at(2 + 8, 2 + 4), 5);
        assert_eq!(at(4, 2), 128);
        assert!(compose(&images, 3, 3, 2).is_err());
    }

    #[test]
    fn png_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.png");
        let images: Vec<u8> = (0..4 * 9).map(|i| i as u8 * 7).collect();
        write_png(&path, &images, 2, 2, 3).unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (12, 12));
        assert_eq!(&buf[..info.buffer_size()], compose(&images, 2, 2, 3).unwrap().as_slice());
        assert!(is_png(&path));
        let text = dir.path().join("t.png");
        std::fs::write(&text, "not a picture").unwrap();
        assert!(!is_png(&text) && !is_png(&dir.path().join("absent.png")));
    }
}
