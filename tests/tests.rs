//! Integration tests: one binary, one shared control plane per run.

mod control_plane;
mod support;
