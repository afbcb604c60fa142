//! Reading a user's image file (PNG or JPEG) as one grey image, for `superlora predict`
//! ([`load_grey`]), or as RGB ([`load_rgb`], [`RgbImage`]) for colour models and image folders.
//!
//! RGB decoding accepts PNG grey, grey + alpha, RGB, RGBA and palette images at any bit depth
//! (16-bit samples keep their high byte, alpha is dropped: pixels are used as stored, not
//! composited) and JPEG grey and RGB (YCbCr); grey is replicated to the three channels. CMYK
//! JPEGs are refused (convert them to RGB first).
//!
//! Colour is converted to luminance (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B), 16-bit samples
//! are reduced to 8, transparency is ignored. The models here were tuned on white-on-black
//! 28x28 digits and garments, so an input is used as given (no inversion). Files are untrusted:
//! sizes above [`MAX_SIDE`] or [`MAX_PIXELS`] and malformed data are errors, never panics.

use std::path::Path;

use crate::error::{Error, Result};

/// Largest side accepted.
pub const MAX_SIDE: usize = 16_384;
/// Largest pixel count accepted.
pub const MAX_PIXELS: usize = 64 << 20;

/// A decoded grey image: row-major pixels, height, width.
pub type Grey = (Vec<u8>, usize, usize);

fn luma(r: u8, g: u8, b: u8) -> u8 {
    (0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b)).round().clamp(0.0, 255.0) as u8
}

fn check(name: &str, h: usize, w: usize) -> Result<()> {
    if h == 0 || w == 0 || h > MAX_SIDE || w > MAX_SIDE || h * w > MAX_PIXELS {
        return Err(Error::format(
            name,
            format!("image is {w}x{h}; accepted: 1..={MAX_SIDE} per side, at most {MAX_PIXELS} pixels"),
        ));
    }
    Ok(())
}

/// Reads a PNG or JPEG file (chosen by its first bytes) as grey.
pub fn load_grey(path: &Path) -> Result<Grey> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(&bytes, &name)
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        decode_jpeg(&bytes, &name)
    } else {
        Err(Error::format(&name, "not a PNG or JPEG file"))
    }
}

fn decode_png(bytes: &[u8], name: &str) -> Result<Grey> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| Error::format(name, format!("PNG: {e}")))?;
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    check(name, h, w)?;
    let size = reader.output_buffer_size().ok_or_else(|| Error::format(name, "PNG: image too large"))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(|e| Error::format(name, format!("PNG: {e}")))?;
    let data = &buf[..frame.buffer_size()];
    let channels = frame.color_type.samples();
    if data.len() < h * w * channels {
        return Err(Error::format(name, "PNG: truncated image data"));
    }
    let grey = data
        .chunks_exact(channels)
        .take(h * w)
        .map(|p| match channels {
            1 | 2 => p[0],
            _ => luma(p[0], p[1], p[2]),
        })
        .collect();
    Ok((grey, h, w))
}

fn decode_jpeg(bytes: &[u8], name: &str) -> Result<Grey> {
    let mut decoder = jpeg_decoder::Decoder::new(std::io::Cursor::new(bytes));
    decoder.read_info().map_err(|e| Error::format(name, format!("JPEG: {e}")))?;
    let info = decoder.info().ok_or_else(|| Error::format(name, "JPEG: no image information"))?;
    let (w, h) = (usize::from(info.width), usize::from(info.height));
    check(name, h, w)?;
    let data = decoder.decode().map_err(|e| Error::format(name, format!("JPEG: {e}")))?;
    let grey: Vec<u8> = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => data,
        jpeg_decoder::PixelFormat::L16 => data.chunks_exact(2).map(|p| p[0]).collect(),
        jpeg_decoder::PixelFormat::RGB24 => data.chunks_exact(3).map(|p| luma(p[0], p[1], p[2])).collect(),
        jpeg_decoder::PixelFormat::CMYK32 => {
            data.chunks_exact(4).map(|p| luma(255 - p[0], 255 - p[1], 255 - p[2])).collect()
        }
    };
    if grey.len() != h * w {
        return Err(Error::format(name, "JPEG: pixel count does not match the image size"));
    }
    Ok((grey, h, w))
}

/// A decoded colour image: `h` rows of `w` pixels, each 3 bytes R, G, B (`pixels.len() == 3*w*h`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
    /// Row-major interleaved RGB bytes.
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// A grey image (`h*w` bytes, row-major) with its value replicated to R, G and B.
    pub fn from_grey(grey: &[u8], h: usize, w: usize) -> Result<Self> {
        if h == 0 || w == 0 || h.checked_mul(w) != Some(grey.len()) {
            return Err(Error::invalid("image", format!("{} pixels", grey.len()), format!("must be {h}x{w}")));
        }
        Ok(RgbImage { w, h, pixels: grey.iter().flat_map(|&g| [g, g, g]).collect() })
    }

    /// The heap bytes the pixels take.
    pub fn bytes(&self) -> usize {
        self.pixels.len()
    }
}

/// Reads a PNG or JPEG file (chosen by its first bytes) as RGB.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    decode_rgb(&bytes, &path.display().to_string())
}

/// Decodes PNG or JPEG bytes as RGB; `name` labels errors.
pub fn decode_rgb(bytes: &[u8], name: &str) -> Result<RgbImage> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        png_rgb(bytes, name)
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        jpeg_rgb(bytes, name)
    } else {
        Err(Error::format(name, "not a PNG or JPEG file"))
    }
}

fn png_rgb(bytes: &[u8], name: &str) -> Result<RgbImage> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| Error::format(name, format!("PNG: {e}")))?;
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    check(name, h, w)?;
    let size = reader.output_buffer_size().ok_or_else(|| Error::format(name, "PNG: image too large"))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(|e| Error::format(name, format!("PNG: {e}")))?;
    let channels = frame.color_type.samples();
    let data = buf.get(..h * w * channels).ok_or_else(|| Error::format(name, "PNG: truncated image data"))?;
    if frame.buffer_size() < h * w * channels || frame.bit_depth != png::BitDepth::Eight {
        return Err(Error::format(name, "PNG: unexpected sample layout after expansion"));
    }
    let pixels = match channels {
        1 => data.iter().flat_map(|&g| [g, g, g]).collect(),
        2 => data.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        3 => data.to_vec(),
        4 => data.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        n => return Err(Error::format(name, format!("PNG: {n} samples per pixel"))),
    };
    Ok(RgbImage { w, h, pixels })
}

fn jpeg_rgb(bytes: &[u8], name: &str) -> Result<RgbImage> {
    let mut decoder = jpeg_decoder::Decoder::new(std::io::Cursor::new(bytes));
    decoder.read_info().map_err(|e| Error::format(name, format!("JPEG: {e}")))?;
    let info = decoder.info().ok_or_else(|| Error::format(name, "JPEG: no image information"))?;
    let (w, h) = (usize::from(info.width), usize::from(info.height));
    check(name, h, w)?;
    if info.pixel_format == jpeg_decoder::PixelFormat::CMYK32 {
        return Err(Error::format(name, "JPEG: CMYK images are not supported; convert the file to RGB"));
    }
    let data = decoder.decode().map_err(|e| Error::format(name, format!("JPEG: {e}")))?;
    let pixels: Vec<u8> = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => data.iter().flat_map(|&g| [g, g, g]).collect(),
        jpeg_decoder::PixelFormat::L16 => data.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        jpeg_decoder::PixelFormat::RGB24 => data,
        jpeg_decoder::PixelFormat::CMYK32 => Vec::new(),
    };
    if pixels.len() != h * w * 3 {
        return Err(Error::format(name, "JPEG: pixel count does not match the image size"));
    }
    Ok(RgbImage { w, h, pixels })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, w: u32, h: u32, color: png::ColorType, data: &[u8]) {
        let f = std::fs::File::create(path).unwrap();
        let mut enc = png::Encoder::new(f, w, h);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(data).unwrap();
    }

    #[test]
    fn png_grey_and_rgb_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let g = dir.path().join("g.png");
        write_png(&g, 3, 2, png::ColorType::Grayscale, &[0, 10, 20, 30, 40, 255]);
        assert_eq!(load_grey(&g).unwrap(), (vec![0, 10, 20, 30, 40, 255], 2, 3));
        let c = dir.path().join("c.png");
        write_png(&c, 2, 1, png::ColorType::Rgb, &[255, 0, 0, 0, 0, 255]);
        assert_eq!(load_grey(&c).unwrap(), (vec![76, 29], 1, 2));
        let bad = dir.path().join("bad.png");
        std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnonsense").unwrap();
        assert!(load_grey(&bad).is_err());
        let other = dir.path().join("x.gif");
        std::fs::write(&other, b"GIF89a").unwrap();
        assert!(load_grey(&other).unwrap_err().to_string().contains("not a PNG or JPEG"));
        let jpg = dir.path().join("t.jpg");
        std::fs::write(&jpg, [0xFF, 0xD8, 0xFF, 0x00, 1, 2, 3]).unwrap();
        assert!(load_grey(&jpg).is_err());
    }
}
