//! Image classification helpers: a JPEG or PNG payload becomes the model's
//! `[1, H, W, 3]` float32 input (decode to RGB8, resize to the model's size, `/ 255`, then
//! `(x - mean) / std` per channel as `inference.input` says), and the model's class scores
//! become the top-k labels.
//!
//! The default resize is `image`'s Triangle filter, the closest match to Pillow's bilinear
//! downscale that reference pre-processing usually uses (measured on the fixtures:
//! within 1/255 on most pixels, top-1 unchanged).

use edge_crds::{ImageInput, ResizeFilter};
use image::imageops::FilterType;

/// Upper bound on decoded image dimensions.
const MAX_DIMENSION: u32 = 8192;
/// Upper bound on what decoding one image may allocate, so a small compressed payload (a
/// 250 KB PNG can declare 8000x8000 RGBA pixels) cannot take the agent over its memory
/// limit: 48 MiB holds a 4K frame in RGBA, eight times a 1080p frame in RGB.
const MAX_DECODE_BYTES: u64 = 48 * 1024 * 1024;

/// Why an image payload cannot be classified.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The model's input is not `[1, H, W, 3]`.
    #[error("the model input {0:?} is not an NHWC RGB image [1, H, W, 3]")]
    InputShape(Vec<usize>),
    /// The payload is not a decodable JPEG or PNG.
    #[error("payload is not a decodable JPEG or PNG image: {0}")]
    Decode(#[source] image::ImageError),
    /// The decoded image's RGB copy would be over [`MAX_DECODE_BYTES`].
    #[error(
        "payload is not a decodable JPEG or PNG image: a {width}x{height} image is over the {MAX_DECODE_BYTES}-byte decoding limit"
    )]
    TooLarge {
        /// Pixels across.
        width: u64,
        /// Pixels down.
        height: u64,
    },
}

/// The `(height, width)` of an NHWC RGB model input shape.
pub fn image_size(input_shape: &[usize]) -> Result<(u32, u32), ImageError> {
    match input_shape {
        [1, h, w, 3] => {
            let h = u32::try_from(*h).map_err(|_| ImageError::InputShape(input_shape.to_vec()))?;
            let w = u32::try_from(*w).map_err(|_| ImageError::InputShape(input_shape.to_vec()))?;
            Ok((h, w))
        }
        _ => Err(ImageError::InputShape(input_shape.to_vec())),
    }
}

/// How pixels become model input (`inference.input`), ready to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    filter: FilterType,
    /// Per channel, R, G, B.
    mean: [f32; 3],
    std: [f32; 3],
}

impl Default for Preprocess {
    /// RGB values in [0, 1], bilinear resize.
    fn default() -> Self {
        Self::new(&ImageInput::default())
    }
}

impl Preprocess {
    /// From `inference.input` (validated: one or three values, `std` > 0).
    pub fn new(input: &ImageInput) -> Self {
        let channel = |values: &[f64], c: usize, default: f64| match values {
            [] => default,
            [v] => *v,
            many => many.get(c).copied().unwrap_or(default),
        };
        let mean = [0, 1, 2].map(|c| channel(&input.mean, c, 0.0) as f32);
        let std = [0, 1, 2].map(|c| channel(&input.std, c, 1.0) as f32);
        let filter = match input.resize {
            ResizeFilter::Bilinear => FilterType::Triangle,
            ResizeFilter::Nearest => FilterType::Nearest,
            ResizeFilter::Bicubic => FilterType::CatmullRom,
        };
        Self { filter, mean, std }
    }
}

/// Decodes `payload` and returns the flattened `[1, height, width, 3]` input, RGB order,
/// values as `preprocess` says.
pub fn image_input(
    payload: &[u8],
    height: u32,
    width: u32,
    preprocess: &Preprocess,
) -> Result<Vec<f32>, ImageError> {
    let reader = image::ImageReader::new(std::io::Cursor::new(payload))
        .with_guessed_format()
        .map_err(|e| ImageError::Decode(e.into()))?;
    let mut reader = reader;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let decoded = reader.decode().map_err(ImageError::Decode)?;
    // The RGB copy (when the image is not RGB8 already) is held to the same bound.
    let (w, h) = (u64::from(decoded.width()), u64::from(decoded.height()));
    if !matches!(decoded, image::DynamicImage::ImageRgb8(_)) && w * h * 3 > MAX_DECODE_BYTES {
        return Err(ImageError::TooLarge {
            width: w,
            height: h,
        });
    }
    let rgb = decoded.into_rgb8();
    let resized = if rgb.dimensions() == (width, height) {
        rgb
    } else {
        image::imageops::resize(&rgb, width, height, preprocess.filter)
    };
    let (mean, std) = (preprocess.mean, preprocess.std);
    Ok(resized
        .as_raw()
        .iter()
        .enumerate()
        .map(|(i, p)| (f32::from(*p) / 255.0 - mean[i % 3]) / std[i % 3])
        .collect())
}

/// The `k` best `(label, score)` pairs, best first. Classes without a label are named
/// `class_<index>`.
pub fn top_k(scores: &[f32], labels: &[String], k: usize) -> Vec<(String, f64)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b)));
    order
        .into_iter()
        .take(k)
        .map(|i| {
            let label = labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("class_{i}"));
            (label, f64::from(scores[i]))
        })
        .collect()
}

/// Labels from a labels file: one per line, surrounding blanks trimmed, empty trailing
/// lines ignored.
pub fn parse_labels(text: &str) -> Vec<String> {
    let mut labels: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    while labels.last().is_some_and(String::is_empty) {
        labels.pop();
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_score_and_names_unlabelled_classes() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let top = top_k(&[0.1, 0.7, 0.2], &labels, 2);
        assert_eq!(top[0].0, "b");
        assert_eq!(top[1].0, "class_2");
        assert_eq!(top_k(&[0.5], &labels, 5).len(), 1);
    }

    #[test]
    fn labels_file_lines() {
        assert_eq!(parse_labels("x\n y \n\n"), vec!["x", "y"]);
    }

    #[test]
    fn a_decompression_bomb_is_refused_within_the_allocation_limit() {
        // 249 KB on the wire, 8000x8000 RGBA (256 MB) once decoded.
        let bomb = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/models/hostile/png-bomb.png"),
        )
        .expect("tests/models/hostile/png-bomb.png (make_png_bomb.py writes it)");
        let err = image_input(&bomb, 96, 96, &Preprocess::default()).expect_err("the bomb decodes");
        assert!(err.to_string().contains("limit"), "{err}");
    }

    /// A PNG one pixel high with these pixels.
    fn png(pixels: &[[u8; 3]]) -> Vec<u8> {
        let img = image::RgbImage::from_fn(pixels.len() as u32, 1, |x, _| {
            image::Rgb(pixels[x as usize])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn mean_and_std_per_channel_as_the_model_families_expect() {
        let bytes = png(&[[0, 0, 0], [255, 255, 255], [10, 128, 245]]);
        let run = |input: ImageInput| image_input(&bytes, 1, 3, &Preprocess::new(&input)).unwrap();
        let unit = run(ImageInput::default());
        assert_eq!(
            &unit[..6],
            &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            "[0, 1] by default"
        );
        let mobilenet = run(ImageInput {
            mean: vec![0.5],
            std: vec![0.5],
            ..ImageInput::default()
        });
        assert_eq!(
            &mobilenet[..6],
            &[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0],
            "[-1, 1]"
        );
        let imagenet = run(ImageInput {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
            ..ImageInput::default()
        });
        let expected = [
            (10.0 / 255.0 - 0.485) / 0.229,
            (128.0 / 255.0 - 0.456) / 0.224,
            (245.0 / 255.0 - 0.406) / 0.225,
        ];
        for (got, want) in imagenet[6..].iter().zip(expected) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
        }
        let raw = run(ImageInput {
            std: vec![1.0 / 255.0],
            ..ImageInput::default()
        });
        for (got, want) in raw[6..].iter().zip([10.0, 128.0, 245.0]) {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
    }

    #[test]
    fn the_resize_filter_is_the_one_asked_for() {
        // Black, white, black, white shrunk to two pixels: bilinear averages, nearest picks.
        let bytes = png(&[[0; 3], [255; 3], [0; 3], [255; 3]]);
        let with = |resize| {
            let input = ImageInput {
                resize,
                ..ImageInput::default()
            };
            image_input(&bytes, 1, 2, &Preprocess::new(&input)).unwrap()
        };
        let bilinear = with(ResizeFilter::Bilinear);
        assert!(
            bilinear.iter().all(|v| *v > 0.2 && *v < 0.8),
            "{bilinear:?}"
        );
        let nearest = with(ResizeFilter::Nearest);
        assert!(
            nearest.iter().all(|v| *v == 0.0 || *v == 1.0),
            "{nearest:?}"
        );
        assert_ne!(with(ResizeFilter::Bicubic), nearest);
    }

    #[test]
    fn shapes_and_garbage() {
        assert_eq!(image_size(&[1, 32, 24, 3]).unwrap(), (32, 24));
        assert!(image_size(&[1, 16]).is_err());
        assert!(matches!(
            image_input(b"not an image", 4, 4, &Preprocess::default()),
            Err(ImageError::Decode(_))
        ));
    }
}
