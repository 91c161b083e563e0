//! `vuimg build SPEC`: a whole image from one TOML file.
//!
//! Everything is planned and checked before the first write (sizes, types,
//! that the partitions fit, filesystem parameters, that every source exists
//! and the contents fit by an estimate); the image is then built in a
//! temporary file next to the output and renamed over it at the end, so a
//! failure leaves the old image untouched.

mod plan;
mod raw;
mod report;
mod spec;
mod write;

use crate::util::Outcome;
use std::path::Path;

/// `vuimg build`: load and check the SPEC, plan every partition, then either show the plan
/// (`--dry-run`) or write the image.
pub fn build(spec_path: &Path, output: Option<&Path>, dry_run: bool, json: bool) -> Outcome {
    let spec = spec::Spec::load(spec_path)?;
    let output = spec.output_path(spec_path, output);
    let epoch = spec.epoch()?;
    let plan = plan::plan(&spec, spec_path, epoch)?;
    if dry_run {
        return report::show(&plan, &output, json);
    }
    write::write(&plan, &output)
}
