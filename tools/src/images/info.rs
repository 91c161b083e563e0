//! `vuimg info IMAGE [--json]`: format, sizes and backing chain, as `qemu-img info`.

use super::headers::probe_link;
use crate::fail;
use crate::util::Outcome;
use serde_json::{json, Value};
use std::path::Path;
use vudev_formats::ImageInfo;

/// `vuimg info`.
pub fn info(image: &Path, as_json: bool) -> Outcome {
    if crate::image_lock::is_uri(image) {
        // An NBD export: a raw disk of the server's size (as qemu-img info shows it).
        let dev = crate::image_lock::open_disk(image, true)?;
        if as_json {
            let v = json!({
                "filename": image.display().to_string(),
                "format": "raw",
                "virtual-size": dev.size(),
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!(
                "image: {}\nfile format: raw\nvirtual size: {} ({} bytes)",
                image.display(),
                iec(dev.size()),
                dev.size()
            );
        }
        return Ok(());
    }
    crate::image_lock::open_locked(image, true)?;
    let options = vudev_formats::OpenOptions {
        read_only: true,
        ..Default::default()
    };
    let dev = vudev_formats::open_image_with(image, &options).map_err(|e| fail!("{e}"))?;
    let info = vudev_formats::info(dev.as_ref());
    if as_json {
        let value = to_json(&info)?;
        crate::outln!("{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    for (i, level) in info.chain().into_iter().enumerate() {
        if i > 0 {
            crate::outln!()?;
        }
        crate::out!("{}", describe(level)?)?;
    }
    Ok(())
}

/// `qemu-img info --output=json`'s fields (and `allocated-bytes`, vuimg's own), with the
/// backing image nested under `backing-image`.
fn to_json(info: &ImageInfo) -> Outcome<Value> {
    let mut v = json!({
        "filename": info.path.display().to_string(),
        "format": info.format.name(),
        "virtual-size": info.virtual_size,
        "actual-size": info.host_bytes,
        "allocated-bytes": info.allocated_bytes,
    });
    if let Some(b) = &info.backing {
        let (_, link) = probe_link(&info.path)?;
        if let Some(link) = link {
            v["backing-filename"] = json!(link.name);
            if let Some(f) = link.format {
                v["backing-filename-format"] = json!(f);
            }
        }
        v["full-backing-filename"] = json!(b.path.display().to_string());
        v["backing-image"] = to_json(b)?;
    }
    Ok(v)
}

/// Bytes as qemu-img prints them (three significant digits): "64 MiB", "1.5 GiB".
fn iec(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let decimals = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let mut text = format!("{value:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text} {}", UNITS[unit])
}

fn describe(info: &ImageInfo) -> Outcome<String> {
    let mut out = format!(
        "image: {}\nfile format: {}\nvirtual size: {} ({} bytes)\ndisk size: {}\nallocated: {}\n",
        info.path.display(),
        info.format,
        iec(info.virtual_size),
        info.virtual_size,
        iec(info.host_bytes),
        iec(info.allocated_bytes),
    );
    if let Some(b) = &info.backing {
        let (_, link) = probe_link(&info.path)?;
        let name = link.as_ref().map(|l| l.name.clone()).unwrap_or_default();
        out.push_str(&format!(
            "backing file: {name} (actual path: {})\n",
            b.path.display()
        ));
        if let Some(f) = link.and_then(|l| l.format) {
            out.push_str(&format!("backing file format: {f}\n"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_print_as_qemu_img_does() {
        assert_eq!(super::iec(512), "512 B");
        assert_eq!(super::iec(64 << 20), "64 MiB");
        assert_eq!(super::iec(1536 << 20), "1.5 GiB");
    }
}
