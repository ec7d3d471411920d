//! Edges that read repositories into [`crate::repo::SourceTree`]s.

pub mod folder;
pub mod git;
