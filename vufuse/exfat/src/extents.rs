//! The clusters of one file or directory as runs, so a read at any offset is a binary search
//! rather than a walk along the FAT, and a contiguous (NoFatChain) file is a single run.

/// Cluster runs: (first file cluster, first disk cluster, length).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extents {
    runs: Vec<(u32, u32, u32)>,
    clusters: u32,
}

impl Extents {
    /// Extents of the runs `(disk start, length)` in file order.
    pub fn from_runs(runs: &[(u32, u32)]) -> Extents {
        let mut e = Extents::default();
        for &(start, len) in runs {
            e.push(start, len);
        }
        e
    }

    /// Clusters owned.
    pub fn clusters(&self) -> u32 {
        self.clusters
    }

    /// The runs `(disk start, length)` in file order.
    pub fn runs(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.runs.iter().map(|&(_, d, l)| (d, l))
    }

    /// Appends `len` clusters from `disk`.
    pub fn push(&mut self, disk: u32, len: u32) {
        if len == 0 {
            return;
        }
        match self.runs.last_mut() {
            Some((_, d, l)) if d.checked_add(*l) == Some(disk) => *l += len,
            _ => self.runs.push((self.clusters, disk, len)),
        }
        self.clusters += len;
    }

    /// Disk cluster of file cluster `index` and how many follow it contiguously.
    pub fn locate(&self, index: u32) -> Option<(u32, u32)> {
        let i = self
            .runs
            .partition_point(|&(f, _, _)| f <= index)
            .checked_sub(1)?;
        let (f, d, l) = self.runs[i];
        (index < f + l).then(|| (d + (index - f), f + l - index))
    }

    /// The last disk cluster.
    pub fn last(&self) -> Option<u32> {
        self.runs.last().map(|&(_, d, l)| d + l - 1)
    }

    /// True if the clusters are one run.
    pub fn is_one_run(&self) -> bool {
        self.runs.len() <= 1
    }

    /// Keeps the first `keep` clusters; returns the runs dropped.
    pub fn truncate(&mut self, keep: u32) -> Vec<(u32, u32)> {
        let mut freed = Vec::new();
        while let Some(&(f, d, l)) = self.runs.last() {
            if f >= keep {
                freed.push((d, l));
                self.runs.pop();
            } else if f + l > keep {
                let kept = keep - f;
                freed.push((d + kept, l - kept));
                self.runs.last_mut().expect("non-empty").2 = kept;
                break;
            } else {
                break;
            }
        }
        self.clusters = self.clusters.min(keep);
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_and_truncate() {
        let mut e = Extents::from_runs(&[(10, 3), (20, 2)]);
        e.push(22, 1);
        assert_eq!(e.clusters(), 6);
        assert_eq!(e.locate(2), Some((12, 1)));
        assert_eq!(e.locate(3), Some((20, 3)));
        assert_eq!(e.locate(6), None);
        assert_eq!(e.truncate(2), vec![(20, 3), (12, 1)]);
        assert_eq!(e.last(), Some(11));
        assert!(e.is_one_run());
    }
}
