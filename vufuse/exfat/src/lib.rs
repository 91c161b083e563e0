//! exFAT driver behind the [`vufuse_api::FileSystem`] trait (in progress: issue 13).
#![warn(missing_docs)]
