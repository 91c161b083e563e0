//! `--dry-run`: the plan shown as text or JSON, nothing written.

use super::plan::Plan;
use crate::copy;
use crate::util::Outcome;
use std::path::Path;

/// Prints what `plan` would write to `output`.
pub(super) fn show(plan: &Plan, output: &Path, json: bool) -> Outcome {
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&as_json(plan, output))?)?;
        return Ok(());
    }
    for p in &plan.parts {
        crate::outln!(
            "partition {}: sectors {}+{} {} {} files, {}",
            p.number,
            p.start_sector,
            p.bytes / 512,
            match (&p.image, p.fs) {
                (Some(i), _) => format!("from {}", i.display()),
                (None, Some(f)) => format!("{f:?}").to_lowercase(),
                (None, None) => "no filesystem".to_string(),
            },
            p.items.len(),
            crate::util::human(copy::total_bytes(&p.items))
        )?;
    }
    for r in &plan.raw {
        crate::outln!("raw {}: bytes {}+{}", r.file.display(), r.offset, r.len)?;
    }
    Ok(())
}

fn as_json(plan: &Plan, output: &Path) -> serde_json::Value {
    let parts: Vec<serde_json::Value> = plan
        .parts
        .iter()
        .map(|p| {
            serde_json::json!({
                "number": p.number,
                "start": p.start_sector,
                "size": p.bytes / 512,
                "type": plan.table.get(p.number).map(|t| t.ptype.sfdisk_string()),
                "fs": p.fs.map(|f| format!("{f:?}").to_lowercase()),
                "label": p.req.label,
                "files": p.items.len(),
                "image": p.image.as_ref().map(|i| i.display().to_string()),
                "uuid": plan.table.get(p.number).and_then(|t| t.uuid).map(|u| u.to_string()),
                "bytes": copy::total_bytes(&p.items),
            })
        })
        .collect();
    serde_json::json!({
        "output": output.display().to_string(),
        "size": plan.size,
        "table": if plan.gpt { "gpt" } else { "dos" },
        "reproducible": plan.epoch.is_some(),
        "fill": plan.fill,
        "partitions": parts,
        "raw": plan.raw.iter().map(|r| serde_json::json!({
            "file": r.file.display().to_string(),
            "offset": r.offset,
            "bytes": r.len,
        })).collect::<Vec<_>>(),
    })
}
