//! Reading an uploaded image: its size and a thumbnail, with decoding
//! bounded before it starts.
//!
//! The format comes from the bytes (`image::guess_format`), never from the
//! declared type alone, and only PNG, JPEG, GIF and WebP are read. The
//! header is read first and its width, height and pixel count checked
//! against the limits; only then is the image decoded, with `image::Limits`
//! as a second wall (the same width and height, and a ceiling on what the
//! decoder may allocate, checked against the decoded size before the buffer
//! is allocated). So an image whose header declares 100,000 x 100,000
//! pixels, or a tiny file that inflates to gigabytes, is refused without
//! allocating it.
//!
//! Everything here is synchronous and CPU-bound: the caller runs it on a
//! blocking thread, a bounded number at a time.

use std::io::Cursor;

use conclave_config::FileConfig;
use conclave_protocol::api::files::{IMAGE_TOO_LARGE, IMAGE_UNREADABLE};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder as _, ImageError, ImageFormat, ImageReader, Limits};
use sha2::{Digest as _, Sha256};

/// JPEG quality of thumbnails (1 to 100).
const THUMBNAIL_JPEG_QUALITY: u8 = 80;

/// The limits one image is read within (from `[file]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ImageLimits {
    pub max_pixels: u64,
    pub max_dimension: u32,
    pub max_decode_bytes: u64,
    pub thumbnail_max_edge: u32,
}

impl From<&FileConfig> for ImageLimits {
    fn from(config: &FileConfig) -> Self {
        Self {
            max_pixels: config.image_max_pixels,
            max_dimension: config.image_max_dimension,
            max_decode_bytes: config.image_max_decode_bytes,
            thumbnail_max_edge: config.thumbnail_max_edge,
        }
    }
}

/// What an image is, once read.
#[derive(Debug)]
pub(crate) struct ReadImage {
    /// As displayed: EXIF orientation applied.
    pub width: u32,
    pub height: u32,
    pub thumbnail: Thumbnail,
}

/// An encoded thumbnail.
#[derive(Debug)]
pub(crate) struct Thumbnail {
    pub bytes: Vec<u8>,
    /// Lower-case hex SHA-256 of `bytes`.
    pub sha256: String,
    pub mime: &'static str,
    /// The file name extension, without the dot.
    pub extension: &'static str,
    pub width: u32,
    pub height: u32,
}

/// Why an image was not read: a wire code (`image_error`) and what
/// happened, for the log.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub code: &'static str,
    pub reason: String,
}

impl Refusal {
    fn too_large(reason: impl Into<String>) -> Self {
        Self {
            code: IMAGE_TOO_LARGE,
            reason: reason.into(),
        }
    }

    fn unreadable(reason: impl Into<String>) -> Self {
        Self {
            code: IMAGE_UNREADABLE,
            reason: reason.into(),
        }
    }
}

/// A decoder's refusal: over a limit, or anything else.
fn refusal(err: ImageError) -> Refusal {
    match err {
        ImageError::Limits(limit) => Refusal::too_large(limit.to_string()),
        other => Refusal::unreadable(other.to_string()),
    }
}

/// Reads `bytes` as an image: its size and a thumbnail fitting in
/// `limits.thumbnail_max_edge` (a JPEG, or a PNG when the image has
/// transparency; never larger than the image).
pub(crate) fn read(bytes: &[u8], limits: &ImageLimits) -> Result<ReadImage, Refusal> {
    let format = image::guess_format(bytes)
        .map_err(|_| Refusal::unreadable("the bytes are not a known image format"))?;
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP
    ) {
        return Err(Refusal::unreadable(format!(
            "{format:?} images are not read"
        )));
    }

    // The header alone first: refuse what would be too large to decode.
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(refusal)?;
    check_dimensions(width, height, limits)?;

    // Then decode, within limits the decoder enforces itself.
    let mut decode_limits = Limits::default();
    decode_limits.max_image_width = Some(limits.max_dimension);
    decode_limits.max_image_height = Some(limits.max_dimension);
    decode_limits.max_alloc = Some(limits.max_decode_bytes);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(decode_limits.clone());
    let mut decoder = reader.into_decoder().map_err(refusal)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    // The decoded pixels count against the allocation limit before they
    // are allocated.
    decode_limits
        .reserve(decoder.total_bytes())
        .map_err(refusal)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(refusal)?;
    image.apply_orientation(orientation);
    let (width, height) = (image.width(), image.height());

    let (thumb_width, thumb_height) = fit(width, height, limits.thumbnail_max_edge);
    let thumbnail = if (thumb_width, thumb_height) == (width, height) {
        image
    } else {
        let small = image.thumbnail_exact(thumb_width, thumb_height);
        drop(image);
        small
    };
    let thumbnail = encode(thumbnail)?;
    Ok(ReadImage {
        width,
        height,
        thumbnail,
    })
}

/// The header's size against the limits.
fn check_dimensions(width: u32, height: u32, limits: &ImageLimits) -> Result<(), Refusal> {
    if width == 0 || height == 0 {
        return Err(Refusal::unreadable(format!(
            "the header declares {width} x {height} pixels"
        )));
    }
    if width > limits.max_dimension || height > limits.max_dimension {
        return Err(Refusal::too_large(format!(
            "{width} x {height} pixels: a side is longer than {}",
            limits.max_dimension
        )));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(Refusal::too_large(format!(
            "{width} x {height} is {pixels} pixels, more than {}",
            limits.max_pixels
        )));
    }
    Ok(())
}

/// `width` x `height` scaled down (never up) so the longer side is at most
/// `edge`, keeping the aspect ratio; each side at least 1.
pub(crate) fn fit(width: u32, height: u32, edge: u32) -> (u32, u32) {
    let long = width.max(height);
    if long <= edge {
        return (width, height);
    }
    let scale = |side: u32| {
        let scaled = (u64::from(side) * u64::from(edge) + u64::from(long) / 2) / u64::from(long);
        u32::try_from(scaled.max(1)).unwrap_or(edge)
    };
    (scale(width), scale(height))
}

/// A JPEG of an opaque image, a PNG of one with any transparent pixel.
fn encode(image: DynamicImage) -> Result<Thumbnail, Refusal> {
    let (width, height) = (image.width(), image.height());
    let mut bytes = Vec::new();
    let transparent =
        image.color().has_alpha() && image.to_rgba8().pixels().any(|p| p.0[3] != u8::MAX);
    let (mime, extension) = if transparent {
        image
            .to_rgba8()
            .write_with_encoder(PngEncoder::new(&mut bytes))
            .map_err(|err| Refusal::unreadable(format!("encoding the thumbnail: {err}")))?;
        ("image/png", "png")
    } else {
        JpegEncoder::new_with_quality(&mut bytes, THUMBNAIL_JPEG_QUALITY)
            .encode_image(&image.to_rgb8())
            .map_err(|err| Refusal::unreadable(format!("encoding the thumbnail: {err}")))?;
        ("image/jpeg", "jpg")
    };
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Ok(Thumbnail {
        bytes,
        sha256,
        mime,
        extension,
        width,
        height,
    })
}

/// The thumbnail's file name: the image's, its extension replaced by
/// `.thumb.<ext>`, within 255 bytes.
pub(crate) fn thumbnail_name(name: &str, extension: &str) -> String {
    let stem = match name.rsplit_once('.') {
        Some((stem, _)) if !stem.trim().is_empty() => stem,
        _ => name,
    };
    let suffix = format!(".thumb.{extension}");
    let mut end = stem
        .len()
        .min(conclave_protocol::api::files::FILE_NAME_MAX_BYTES - suffix.len());
    while !stem.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &stem[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ImageLimits = ImageLimits {
        max_pixels: 50_000_000,
        max_dimension: 16_384,
        max_decode_bytes: 256 * 1024 * 1024,
        thumbnail_max_edge: 320,
    };

    fn png(image: &DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    /// A PNG whose header declares `width` x `height` (8-bit grey) and
    /// whose data is one tiny, truncated zlib stream.
    fn declared_png(width: u32, height: u32) -> Vec<u8> {
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let start = out.len();
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            let crc = crc32(&out[start..]);
            out.extend_from_slice(&crc.to_be_bytes());
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut header = Vec::new();
        header.extend_from_slice(&width.to_be_bytes());
        header.extend_from_slice(&height.to_be_bytes());
        header.extend_from_slice(&[8, 0, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &header);
        chunk(&mut out, b"IDAT", &[0x78, 0x01, 0x63, 0x00, 0x00]);
        chunk(&mut out, b"IEND", &[]);
        out
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn thumbnails_fit_the_edge_and_keep_the_aspect() {
        assert_eq!(fit(1000, 600, 320), (320, 192));
        assert_eq!(fit(600, 1000, 320), (192, 320));
        assert_eq!(fit(100, 50, 320), (100, 50), "never scaled up");
        assert_eq!(fit(10_000, 1, 320), (320, 1), "at least one pixel");

        let image = DynamicImage::ImageRgb8(image::RgbImage::from_fn(1000, 600, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        }));
        let big = read(&png(&image), &LIMITS).unwrap();
        assert_eq!((big.width, big.height), (1000, 600));
        let thumb = &big.thumbnail;
        assert_eq!((thumb.mime, thumb.extension), ("image/jpeg", "jpg"));
        assert_eq!((thumb.width, thumb.height), (320, 192));
        assert_eq!(thumb.sha256, hex::encode(Sha256::digest(&thumb.bytes)));
        let decoded = image::load_from_memory(&thumb.bytes).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (320, 192));

        // Transparency keeps a PNG; an opaque alpha channel does not.
        let clear = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(40, 30, |x, _| {
            image::Rgba([0, 0, 0, if x < 20 { 0 } else { 255 }])
        }));
        let read_clear = read(&png(&clear), &LIMITS).unwrap();
        assert_eq!(read_clear.thumbnail.mime, "image/png");
        assert_eq!(
            (read_clear.thumbnail.width, read_clear.thumbnail.height),
            (40, 30)
        );
        let opaque = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            40,
            30,
            image::Rgba([9, 9, 9, 255]),
        ));
        assert_eq!(
            read(&png(&opaque), &LIMITS).unwrap().thumbnail.mime,
            "image/jpeg"
        );
    }

    #[test]
    fn oversized_and_broken_images_are_refused_before_decoding() {
        let huge = read(&declared_png(100_000, 100_000), &LIMITS).unwrap_err();
        assert_eq!(huge.code, IMAGE_TOO_LARGE, "{huge:?}");
        let many = read(&declared_png(10_000, 10_000), &LIMITS).unwrap_err();
        assert_eq!(many.code, IMAGE_TOO_LARGE, "{many:?}");
        // Within the pixel count, the decoder's allocation ceiling holds.
        let small_budget = ImageLimits {
            max_decode_bytes: 1024,
            ..LIMITS
        };
        let over = read(&declared_png(100, 100), &small_budget).unwrap_err();
        assert_eq!(over.code, IMAGE_TOO_LARGE, "{over:?}");
        // Declared within the limits, but the data is cut short.
        let cut = read(&declared_png(100, 100), &LIMITS).unwrap_err();
        assert_eq!(cut.code, IMAGE_UNREADABLE, "{cut:?}");
        for junk in [&b""[..], b"hello, world", b"BM\x00\x00 not read here"] {
            assert_eq!(read(junk, &LIMITS).unwrap_err().code, IMAGE_UNREADABLE);
        }
    }

    #[test]
    fn thumbnail_names_follow_the_image() {
        assert_eq!(thumbnail_name("beach.png", "jpg"), "beach.thumb.jpg");
        assert_eq!(thumbnail_name("photo", "png"), "photo.thumb.png");
        assert_eq!(thumbnail_name(".hidden", "jpg"), ".hidden.thumb.jpg");
        let long = thumbnail_name(&"é".repeat(127), "jpg");
        assert!(long.len() <= 255 && long.ends_with(".thumb.jpg"), "{long}");
    }
}
