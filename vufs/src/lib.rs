//! Tree mangling over host directories (bind, merge, cow, mincow), as VUOS's
//! vufs module does. The implementation arrives with issue 4.

pub use vudev;
